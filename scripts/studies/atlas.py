"""The LR rule, measured (issue 13, finding 6): LoRA's best LR over FullFT's in every parity study,
and the regret of picking LoRA's LR by a rule instead of by a grid.

    OMP_NUM_THREADS=1 python scripts/studies/atlas.py       # after the studies (reads their study.json)

For each study that has a FullFT row and LoRA rows on an LR grid (`scripts/studies/parity.py ppo | grpo |
dpo | rm | sft | sft_rslora`), from the per-LR seed means its study.json holds:
    ratio       LoRA's best LR / FullFT's best LR, per rank
    rule 10x    `optimizer.lr_rule: true` ("LoRA Without Regret"): LoRA LR = 10 x FullFT's best LR;
                regret = metric at LoRA's best LR - metric at the rule's LR (the loss way round for
                a lower-is-better metric), so 0 means the rule found the grid's best and a positive
                regret is what following the rule costs
    rule measured  LoRA LR = (the method's measured ratio) x FullFT's best LR, the ratio being the
                geometric mean over that method's ranks (`measured_ratio`, what
                align.lora.MEASURED_LR_RATIOS holds), snapped to the grid. Its regret is measured
                out of sample: for each rank, with the ratio of the method's OTHER ranks only
A rule LR that is not a point of the grid is marked "off grid" and has no regret. Writes
results/atlas/lr_rule.md and lr_rule.csv and prints the table. A study not run yet is left out.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "results" / "atlas"
# method -> (study folder, the configuration-name prefix of its LoRA rows); the studies whose rows
# give the ratio. sft_rslora also holds the sft study's 1/r rows (lora_r*): only its lora_rs_r* rows
# are the 1/sqrt(r) ones (rank 1, the same run under both scalings, is the sft study's row)
STUDIES = {
    "sft": ("results/atlas/sft", "lora_r"),
    "sft (1/sqrt r)": ("results/atlas/sft_rslora", "lora_rs_r"),
    "reward model": ("results/parity_rm", "lora_r"),
    "dpo": ("results/parity_dpo", "lora_r"),
    "ppo": ("results/parity_ppo", "lora_r"),
    "grpo": ("results/parity_grpo", "lora_r"),
}
LWR_RATIO = 10.0


def load(folder: str) -> dict | None:
    path = REPO / folder / "study.json"
    return json.loads(path.read_text()) if path.exists() else None


def by_lr(row: dict) -> dict[float, float]:
    return {float(lr): mean_std[0] for lr, mean_std in row["by_lr"].items()}


def at(grid: dict[float, float], lr: float) -> float | None:
    """The seed-mean metric at `lr` if it is a grid point (to 1%), else None."""
    for point, value in grid.items():
        if abs(point / lr - 1) < 0.01:
            return value
    return None


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in values) / len(values)) if values else float("nan")


def snap(grid: dict[float, float], lr: float) -> float:
    return min(grid, key=lambda point: abs(math.log(point / lr)))


def rows_of(method: str, study: dict, full_study: dict | None, prefix: str = "lora_r") -> list[dict]:
    sign = 1.0 if study.get("higher_is_better", True) else -1.0
    full = next((r for r in (full_study or study)["rows"] if r["configuration"] == "full"), None)
    if full is None:
        return []
    full_best = full["best_lr"]
    lora = [r for r in study["rows"] if r["configuration"].startswith(prefix) and r.get("by_lr")]
    ratios = [r["best_lr"] / full_best for r in lora]
    measured = geomean(ratios)
    out = []
    for i, r in enumerate(lora):
        grid = by_lr(r)
        held_out = geomean(ratios[:i] + ratios[i + 1:])  # leave this rank out: the rule must not see its own runs
        best = r["metric_mean"]  # the seed mean at the best LR (parity.best_lr picked it)
        row = {"method": method, "configuration": r["configuration"], "metric": study["metric"],
               "full_best_lr": full_best, "lora_best_lr": r["best_lr"], "ratio": r["best_lr"] / full_best,
               "best": best, "edge": r.get("edge", ""), "measured_ratio": measured, "held_out_ratio": held_out}
        for name, ratio in (("lwr", LWR_RATIO), ("measured", held_out)):
            lr = full_best * ratio if name == "lwr" else snap(grid, full_best * ratio)
            value = at(grid, lr)
            row[f"{name}_lr"] = lr
            row[f"{name}_value"] = value
            row[f"{name}_regret"] = None if value is None else sign * (best - value) + 0.0  # + 0.0: no "-0.000"
        out.append(row)
    return out


def fmt(x: float | None, spec: str = ".3f") -> str:
    return "off grid" if x is None else format(x, spec)


def main() -> int:
    rows: list[dict] = []
    sft_full = load(STUDIES["sft"][0])
    for method, (folder, prefix) in STUDIES.items():
        study = load(folder)
        if study is None:
            print(f"{method}: {folder}/study.json not found (study not run yet), left out", file=sys.stderr)
            continue
        # the 1/sqrt(r) study has no FullFT row of its own: FullFT's best LR is the sft study's
        rows += rows_of(method, study, sft_full if method == "sft (1/sqrt r)" else None, prefix)
    if not rows:
        print("no study found", file=sys.stderr)
        return 1
    OUT.mkdir(parents=True, exist_ok=True)
    keys = list(rows[0])
    with open(OUT / "lr_rule.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "# The LR rule, measured",
        "",
        "Regenerate: `OMP_NUM_THREADS=1 python scripts/studies/atlas.py` (reads each study's study.json). Regret: the",
        "seed-mean metric at LoRA's best grid LR minus at the rule's LR (for a loss: the other way round);",
        "0 = the rule picked the grid's best. The measured rule's ratio is the method's geometric mean over ranks",
        "(align.lora.MEASURED_LR_RATIOS); its regret is out of sample: each rank is scored with the ratio of the",
        "method's other ranks (in brackets), snapped to the grid.",
        "",
        "| method | LoRA | metric | FullFT best LR | LoRA best LR | ratio | method's ratio | 10x rule: LR, metric, regret | measured rule (other ranks' ratio): LR, metric, regret |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['configuration']} | {r['metric']} | {r['full_best_lr']:.0e} | {r['lora_best_lr']:.1e}{' EDGE' if r['edge'] else ''} "
            f"| {r['ratio']:.2g}x | {r['measured_ratio']:.2g}x | {r['lwr_lr']:.0e}, {fmt(r['lwr_value'])}, {fmt(r['lwr_regret'])} "
            f"| ({r['held_out_ratio']:.2g}x) {r['measured_lr']:.0e}, {fmt(r['measured_value'])}, {fmt(r['measured_regret'])} |")
    text = "\n".join(lines) + "\n"
    (OUT / "lr_rule.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
