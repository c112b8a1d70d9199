"""Does FullFT's DPO lead over LoRA come from the embeddings and LM head? An ablation.

    OMP_NUM_THREADS=1 python scripts/studies/dpo_frozen_embeddings.py [--lr 1e-3] [--seeds 0 1 2]

In `scripts/studies/parity.py dpo` (results/parity_dpo/), FullFT beat LoRA (r4/r8) by ~11 points of gold
score. LoRA with `lora.targets: all` adapts every linear layer of the blocks but leaves the token
embeddings and the LM head frozen, which FullFT trains. This runs the FullFT configuration of that
study (same recipe, overrides, LR and seeds) once more with those two modules frozen
(`embed_tokens`/`wte`/`wpe` and `lm_head`); everything else trains as before. If the frozen runs
fall to LoRA's level, the embeddings and head explain the gap; if they stay at FullFT's, they
do not.

Each run is an in-process `train_dpo` on the built-in base; run folders go to
`runs/dpo_frozen_embeddings/` (a finished one is read back, not rerun). Prints one line per seed and the seed mean ± std beside the
study's FullFT and LoRA rows.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FROZEN = ("embed_tokens", "lm_head", "wte", "wpe")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lr", type=float, default=1e-3, help="FullFT's best LR in results/parity_dpo")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs-dir", default=str(REPO / "runs" / "dpo_frozen_embeddings"))
    parser.add_argument("--override", nargs="*", default=[], help="more recipe overrides (e.g. for a smoke run)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # this folder
    from parity import STUDIES

    from align.config import load_recipe
    from align.shared_base import SharedBase
    from align.trainers.dpo import train_dpo

    original_add_policy = SharedBase.add_policy

    def add_policy_with_frozen_embeddings(self, *a, **k):
        original_add_policy(self, *a, **k)
        if self.mode != "full":
            raise SystemExit("this ablation is for full mode (in LoRA mode the embeddings are the shared base's)")
        for name, param in self.role_model("policy").named_parameters():
            if any(part in name for part in FROZEN):
                param.requires_grad_(False)

    SharedBase.add_policy = add_policy_with_frozen_embeddings
    study = STUDIES["dpo"]
    scores = []
    for seed in args.seeds:
        out = Path(args.runs_dir) / f"full-frozen-emb-lr{args.lr:.0e}-s{seed}"
        cfg = load_recipe(str(REPO / study.recipe), [*study.overrides, "mode=full", f"optimizer.lr={args.lr}",
                                                     f"train.seed={seed}", f"output_dir={out}", *args.override])
        done = out / "summary.json"  # a finished run is read back, not run again
        summary = json.loads(done.read_text()) if done.exists() else train_dpo(cfg).summary
        scores.append(summary["eval_after"][study.metric])
        print(f"seed {seed}: {study.metric} {scores[-1]:.3f} ({summary['trainable_parameters']:,} trainable)", flush=True)

    spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
    print(f"full, embeddings + LM head frozen, lr {args.lr:g}: {statistics.mean(scores):.3f} ± {spread:.3f}")
    table = REPO / "results" / "parity_dpo" / "table.csv"
    if table.exists():
        for row in csv.DictReader(open(table)):
            print(f"  study: {row['configuration']}: {float(row['metric_mean']):.3f} ± {float(row['metric_std']):.3f} at lr {row['best_lr']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
