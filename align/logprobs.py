"""Token and sequence log-probabilities of causal language models.

What it does:
- `gather_logprobs(logits_..V, labels_...)`: log p(label) under softmax(logits), computed as
  `logit[label] - logsumexp(logits)` one batch row at a time, so no full (B, T, V) log-softmax
  copy is ever materialised (the peak extra memory is one row's (T, V) temporary);
- `sequence_logprobs(logits_BTV, labels_BT, mask_BT)`: the same for a causal LM, with the shift
  done inside (logits at position t-1 predict the token at t), result aligned with `labels_BT`;
- `position_ids_from_mask`: position ids that make left-padded and right-padded batches equal;
- `token_logprobs` / `completion_logprobs(model, ...)`: run a model and reduce to per-token or
  per-sequence log-probs of the completion tokens.

Alignment convention (used across the toolkit): every (B, T) tensor is aligned with `input_ids_BT`.
`completion_mask_BT[b, t] = 1` means token t of row b is a completion token whose log-prob counts;
`token_logps_BT[b, t] = log p(input_ids[b, t] | input_ids[b, :t])`; position 0 has no prediction
and is always 0, as is every masked position.

What it leaves out: which tokens are completion tokens (data collation builds the masks), and
running a model as a particular role (`align.shared_base`).

Run its tests: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_logprobs.py`.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def gather_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[..., label] for each label, without a full log-softmax copy.

    `logits` has shape (*S, V), `labels` shape (*S). Returns float32 (or float64 for float64
    logits) of shape (*S). Equal to `torch.log_softmax(logits.float(), -1).gather(-1, labels[..., None])[..., 0]`.
    Low-precision logits (bf16/fp16) are upcast to float32 one row at a time.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not match")
    out_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    labels = labels.long()

    def _one(logits_row: torch.Tensor, labels_row: torch.Tensor) -> torch.Tensor:
        # log p(y) = z_y - logsumexp(z)
        logits_row = logits_row.to(out_dtype)
        picked = logits_row.gather(-1, labels_row.unsqueeze(-1)).squeeze(-1)
        return picked - torch.logsumexp(logits_row, dim=-1)

    if logits.dim() <= 2:
        return _one(logits, labels)
    # One batch row at a time: the (T, V) exp temporary is freed after each row.
    return torch.stack([_one(logits_row, labels_row) for logits_row, labels_row in zip(logits, labels)])


def sequence_logprobs(
    logits_BTV: torch.Tensor, labels_BT: torch.Tensor, mask_BT: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-token log-probs of `labels_BT` under a causal LM's `logits_BTV` (same sequence).

    `logits_BTV[:, t]` is the model output at position t, so it predicts `labels_BT[:, t + 1]`.
    The result is aligned with `labels_BT`: entry t is log p(labels[t] | labels[:t]), entry 0 is
    0 (nothing predicts the first token), and positions where `mask_BT` is 0 are 0.
    """
    if logits_BTV.shape[:2] != labels_BT.shape:
        raise ValueError(f"logits {tuple(logits_BTV.shape)} and labels {tuple(labels_BT.shape)} do not match")
    # Shift: logits at t-1 score the token at t. Both slices are views, not copies.
    shifted_logps_BT1 = gather_logprobs(logits_BTV[:, :-1], labels_BT[:, 1:])  # (B, T-1)
    token_logps_BT = torch.nn.functional.pad(shifted_logps_BT1, (1, 0), value=0.0)  # (B, T)
    if mask_BT is not None:
        if mask_BT.shape != labels_BT.shape:
            raise ValueError(f"mask {tuple(mask_BT.shape)} and labels {tuple(labels_BT.shape)} do not match")
        mask_BT = mask_BT.clone()
        mask_BT[:, 0] = 0
        token_logps_BT = token_logps_BT * mask_BT.to(token_logps_BT.dtype)
    return token_logps_BT


def position_ids_from_mask(attention_mask_BT: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so a left-padded row sees the same positions as a
    right-padded one (the formula of transformers' generation: cumsum - 1, padding set to 1)."""
    position_ids_BT = attention_mask_BT.long().cumsum(-1) - 1
    return position_ids_BT.masked_fill(attention_mask_BT == 0, 1)


def last_token_index(attention_mask_BT: torch.Tensor) -> torch.Tensor:
    """Index of the last real (mask = 1) token of each row; right and left padding both work."""
    T = attention_mask_BT.shape[1]
    positions_BT = torch.arange(T, device=attention_mask_BT.device).expand_as(attention_mask_BT)
    index_B = torch.where(attention_mask_BT.bool(), positions_BT, -1).max(dim=1).values
    if (index_B < 0).any():
        raise ValueError("a row of attention_mask has no real token")
    return index_B


def causal_lm_logits(model: nn.Module, input_ids_BT: torch.Tensor, attention_mask_BT: torch.Tensor) -> torch.Tensor:
    """Run a transformers causal LM with padding-aware position ids; returns logits (B, T, V)."""
    outputs = model(
        input_ids=input_ids_BT,
        attention_mask=attention_mask_BT,
        position_ids=position_ids_from_mask(attention_mask_BT),
        use_cache=False,
    )
    return outputs.logits


def token_logprobs(
    model: nn.Module,
    input_ids_BT: torch.Tensor,
    attention_mask_BT: torch.Tensor,
    completion_mask_BT: torch.Tensor,
) -> torch.Tensor:
    """Per-token log-probs (B, T) of the completion tokens under `model`, zeros elsewhere."""
    logits_BTV = causal_lm_logits(model, input_ids_BT, attention_mask_BT)
    return sequence_logprobs(logits_BTV, input_ids_BT, completion_mask_BT * attention_mask_BT)


def reduce_logprobs(token_logps_BT: torch.Tensor, completion_mask_BT: torch.Tensor, average: bool = False) -> torch.Tensor:
    """Sum (or mean over completion tokens) of per-token log-probs: (B, T) -> (B,)."""
    mask_BT = completion_mask_BT.to(token_logps_BT.dtype).clone()
    mask_BT[:, 0] = 0  # the first token is never scored
    logps_B = (token_logps_BT * mask_BT).sum(-1)
    if average:
        logps_B = logps_B / mask_BT.sum(-1).clamp(min=1.0)
    return logps_B


def sum_and_mean_logprobs(token_logps_BT: torch.Tensor, completion_mask_BT: torch.Tensor) -> torch.Tensor:
    """(B, 2): the completion's summed and mean token log-prob, what a `last_token+logprob`
    reward head reads (`align.role_helpers.ScalarHead`; `scripts/rm_probe.py` probes the same)."""
    return torch.stack([reduce_logprobs(token_logps_BT, completion_mask_BT),
                        reduce_logprobs(token_logps_BT, completion_mask_BT, average=True)], dim=-1)


def completion_logprobs(
    model: nn.Module,
    input_ids_BT: torch.Tensor,
    attention_mask_BT: torch.Tensor,
    completion_mask_BT: torch.Tensor,
    average: bool = False,
) -> torch.Tensor:
    """log p(completion | prompt) per sequence (B,): the sum over completion tokens, or the mean
    per completion token when `average` (length-normalised, as SimPO/IPO-style losses use)."""
    token_logps_BT = token_logprobs(model, input_ids_BT, attention_mask_BT, completion_mask_BT)
    return reduce_logprobs(token_logps_BT, completion_mask_BT * attention_mask_BT, average=average)
