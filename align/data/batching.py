"""Deterministic batch order, sharding across processes, and collation into padded tensors.

The order of training rows is a pure function of (seed, step): an endless stream of
per-epoch permutations. A resumed run therefore needs only the step number to continue from the
exact data position, and N processes with accumulation A see exactly the rows one process sees
with the same global batch (each takes a contiguous shard of every global batch).
"""

from __future__ import annotations

import torch

from align.data.loading import DataError, PairExample, SFTExample

IGNORE_INDEX = -100  # label value that the causal-LM loss skips (prompt and padding tokens)


class BatchStream:
    """Global batches of row indices, reproducible from (seed, step) alone."""

    def __init__(self, num_rows: int, global_batch: int, seed: int) -> None:
        if num_rows < 1:
            # A DataError (a ValueError), so that the command line reports it in one line.
            raise DataError("no training rows left (all rows were skipped or the data is empty)", "all_skipped")
        self.num_rows, self.global_batch, self.seed = num_rows, global_batch, seed
        self._cache: dict[int, list[int]] = {}

    def _epoch(self, epoch: int) -> list[int]:
        if epoch not in self._cache:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._cache = {epoch: torch.randperm(self.num_rows, generator=g).tolist()}
        return self._cache[epoch]

    def batch(self, step: int) -> list[int]:
        """Row indices of the global batch used by optimizer step `step` (0-based)."""
        start = step * self.global_batch
        out = []
        for k in range(start, start + self.global_batch):
            out.append(self._epoch(k // self.num_rows)[k % self.num_rows])
        return out


def shard(indices: list[int], rank: int, world: int) -> list[int]:
    per = len(indices) // world
    return indices[rank * per : (rank + 1) * per]


def chunks(items: list, n_chunks: int) -> list[list]:
    per = len(items) // n_chunks
    return [items[i * per : (i + 1) * per] for i in range(n_chunks)]


def _pad(seqs: list[list[int]], value: int, left: bool = False) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    rows = [([value] * (width - len(s)) + s) if left else (s + [value] * (width - len(s))) for s in seqs]
    return torch.tensor(rows, dtype=torch.long)


def collate_sft(examples: list[SFTExample], pad_id: int, completion_only: bool = True) -> dict[str, torch.Tensor]:
    """Right-padded causal-LM batch; labels are IGNORE_INDEX on padding (and prompt, if masked)."""
    ids = [e.prompt_ids + e.completion_ids for e in examples]
    labels = [
        ([IGNORE_INDEX] * len(e.prompt_ids) if completion_only else list(e.prompt_ids)) + e.completion_ids
        for e in examples
    ]
    input_ids_BT = _pad(ids, pad_id)
    return {
        "input_ids": input_ids_BT,
        "attention_mask": _pad([[1] * len(s) for s in ids], 0),
        "labels": _pad(labels, IGNORE_INDEX),
    }


def collate_pairs(examples: list[PairExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Chosen rows then rejected rows in one right-padded batch of 2B sequences.

    `completion_mask` is 1 on completion tokens (EOS included); one forward scores both halves.
    """
    seqs, masks = [], []
    for completions in ([e.chosen_ids for e in examples], [e.rejected_ids for e in examples]):
        for e, c in zip(examples, completions):
            seqs.append(e.prompt_ids + c)
            masks.append([0] * len(e.prompt_ids) + [1] * len(c))
    return {
        "input_ids": _pad(seqs, pad_id),
        "attention_mask": _pad([[1] * len(s) for s in seqs], 0),
        "completion_mask": _pad(masks, 0),
    }
