"""Held-out pairwise accuracy of a trained reward model on the built-in preference task, per kind.

    OMP_NUM_THREADS=1 python scripts/studies/rm_per_kind.py RUN_DIR [RUN_DIR ...]

For each reward-model run directory (`align train recipes/rm_lora.yaml` or `rm_full.yaml`, or a
`scripts/studies/parity.py rm` run), the saved reward role is loaded onto a fresh shared base of the run's
model and mode, the run's held-out pairs (the built-in task's eval split, same seed and count as
the run's own evaluation) are scored, and the accuracy is printed overall and per kind of pair:

    concise_vs_padded   both correct; the concise one is chosen (style)
    concise_vs_wrong    a concise correct answer against a wrong one (correctness)
    padded_vs_wrong     a padded correct answer against a wrong one, concise or padded
                        (correctness must beat the "shorter is better" shortcut)

One JSON line per run. Only for runs on the built-in task (`data.task: preference`, no files).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

KINDS = ("concise_vs_padded", "concise_vs_wrong", "padded_vs_wrong")


def pair_kind(prompt: str, chosen: str, rejected: str) -> str:
    from align.tasks.arithmetic import answer_of, is_correct
    from align.tasks.preference import is_concise

    answer = answer_of(prompt)
    if is_correct(rejected, answer):
        return "concise_vs_padded"
    return "concise_vs_wrong" if is_concise(chosen, answer) else "padded_vs_wrong"


@torch.no_grad()
def per_kind_accuracy(run_dir: Path, batch_size: int = 64) -> dict:
    from align.config import load_recipe
    from align.data.batching import collate_pairs
    from align.data.loading import SkipCounter, load_examples
    from align.models import load_model_and_tokenizer
    from align.shared_base import SharedBase
    from align.tasks.preference import preference_pairs

    cfg = load_recipe(str(run_dir / "config.yaml"), [])
    if cfg.data.task != "preference" or cfg.data.eval_file is not None:
        raise SystemExit(f"{run_dir}: not a run on the built-in preference task")
    model, tokenizer = load_model_and_tokenizer(cfg.model, cfg.dtype)
    base = SharedBase(model, tokenizer, mode=cfg.mode, lora=cfg.lora)
    base.add_reward(run_dir / "reward")
    examples = load_examples(cfg.data, tokenizer, "pairs", "eval", cfg.train.seed, SkipCounter())
    rows = preference_pairs("eval", cfg.data.num_eval, cfg.train.seed)
    if len(rows) != len(examples):  # a skipped row would shift the kinds
        raise SystemExit(f"{run_dir}: {len(examples)} eval pairs were kept of {len(rows)}; kinds cannot be matched")
    kinds = [pair_kind(r["prompt"], r["chosen"], r["rejected"]) for r in rows]
    right: list[bool] = []
    for i in range(0, len(examples), batch_size):
        batch = collate_pairs(examples[i : i + batch_size], tokenizer.pad_token_id)
        scores = base.scores("reward", batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        chosen, rejected = scores.chunk(2)
        right.extend((chosen > rejected).tolist())
    out = {"run": str(run_dir), "mode": cfg.mode, "readout": cfg.reward.readout, "pairs": len(right),
           "accuracy": round(sum(right) / len(right), 4)}
    for kind in KINDS:
        hits = [ok for ok, k in zip(right, kinds) if k == kind]
        out[kind] = round(sum(hits) / len(hits), 4) if hits else None
        out[f"{kind}_pairs"] = len(hits)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="reward-model run directories")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    for run in args.runs:
        print(json.dumps(per_kind_accuracy(Path(run))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
