"""One table of the DPO-gap studies (issue 13): what each one does to LoRA's gap to FullFT.

    OMP_NUM_THREADS=1 python scripts/studies/dpo_gap_summary.py     # after the studies below

Reads the tables the four studies wrote (`scripts/studies/parity.py dpo_gap_embed | dpo_gap_lr |
dpo_gap_steps | dpo_gap_batch`, each under results/atlas/dpo_gap/<name>/table.csv) and writes
results/atlas/dpo_gap/summary.md, summary.csv and gap.png: for each LoRA rank, its gap to FullFT
(seed means at each configuration's best LR) in the dpo study and under each intervention, and how
much of the baseline gap that closes. The uncertainty of a gap is the standard error of a
difference of two 3-seed means, sqrt(s1^2/n1 + s2^2/n2). A study not run yet is left out.
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "results" / "atlas" / "dpo_gap"


def read(name: str) -> dict[str, dict]:
    path = OUT / name / "table.csv"
    if not path.exists():
        return {}
    rows = {}
    for row in csv.DictReader(open(path)):
        rows[row["configuration"]] = {"mean": float(row["metric_mean"]), "std": float(row["metric_std"]),
                                      "n": int(row["seeds"]), "lr": float(row["best_lr"]), "edge": row["edge"]}
    return rows


def gap(lora: dict, full: dict) -> tuple[float, float]:
    return lora["mean"] - full["mean"], math.sqrt(lora["std"] ** 2 / lora["n"] + full["std"] ** 2 / full["n"])


def main() -> int:
    embed, fine, steps, batch = read("embed"), read("lr_fine"), read("steps"), read("batch")
    base = embed or steps or batch  # every study carries the dpo study's rows
    if "full" not in base:
        print("no study table yet under", OUT, file=sys.stderr)
        return 1
    full = base["full"]
    lines: list[tuple] = []  # (rank, intervention, lora row, full row, the full row's name)

    for rank in (1, 4, 8):
        name = f"lora_r{rank}"
        if name in base:
            lines.append((rank, "baseline (dpo study: targets all, 60 steps, batch 32)", base[name], full, "full"))
        if f"lora_emb_r{rank}" in embed:
            lines.append((rank, "a. targets all+embeddings", embed[f"lora_emb_r{rank}"], full, "full"))
        if f"lora_emb_a1_r{rank}" in embed:
            lines.append((rank, "a. all+embeddings, embedding_alpha 1", embed[f"lora_emb_a1_r{rank}"], full, "full"))
        if name in fine and "full" in fine:
            lines.append((rank, "b. finer LR grid (both)", fine[name], fine["full"], "full, finer grid"))
        if f"{name}_steps120" in steps:
            lines.append((rank, "b. 120 steps vs FullFT 60", steps[f"{name}_steps120"], full, "full"))
            if "full_steps120" in steps:
                lines.append((rank, "b. 120 steps vs FullFT 120", steps[f"{name}_steps120"], steps["full_steps120"], "full_steps120"))
        for b in (8, 128):
            if f"{name}_bs{b}" in batch and f"full_bs{b}" in batch:
                lines.append((rank, f"c. batch {b} (1920 examples) vs FullFT batch {b}", batch[f"{name}_bs{b}"], batch[f"full_bs{b}"], f"full_bs{b}"))

    # A share of the baseline gap only where that gap is outside the noise (more than 2 s.e.).
    baseline_gap = {rank: gap(lora, f)[0] for rank, what, lora, f, _ in lines
                    if what.startswith("baseline") and abs(gap(lora, f)[0]) > 2 * gap(lora, f)[1]}
    table = ["# The DPO gap: what each study does to LoRA's gap to FullFT", "",
             "Gold score of sampled completions (held-out prompts), seed mean ± std at each configuration's best LR "
             "(3 seeds); gap = LoRA − FullFT ± the standard error of that difference; 'closes' = the share of the "
             "baseline gap (dpo study) that the intervention removes (negative: it widens; n/a where the baseline gap "
             "is within 2 s.e., rank 8). Written by "
             "`python scripts/studies/dpo_gap_summary.py` from the studies' tables.", "",
             "| rank | study | LoRA (best LR) | FullFT it is compared with (best LR) | gap ± s.e. | closes |",
             "|---|---|---|---|---|---|"]
    with open(OUT / "summary.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["rank", "study", "lora_mean", "lora_std", "lora_lr", "full", "full_mean", "full_std", "full_lr",
                         "gap", "gap_se", "closes"])
        for rank, what, lora, ref, ref_name in lines:
            g, se = gap(lora, ref)
            closes = 1 - g / baseline_gap[rank] if rank in baseline_gap and baseline_gap[rank] else math.nan
            edge = lambda row: ", EDGE" if row["edge"] else ""  # noqa: E731
            table.append(f"| r{rank} | {what} | {lora['mean']:.3f} ± {lora['std']:.3f} ({lora['lr']:g}{edge(lora)}) | "
                         f"{ref['mean']:.3f} ± {ref['std']:.3f} ({ref_name}, {ref['lr']:g}{edge(ref)}) | {g:+.3f} ± {se:.3f} | "
                         + ("—" if what.startswith("baseline") else "n/a" if math.isnan(closes) else f"{closes:+.0%}") + " |")
            writer.writerow([rank, what, lora["mean"], lora["std"], lora["lr"], ref_name, ref["mean"], ref["std"], ref["lr"],
                             g, se, closes])
    (OUT / "summary.md").write_text("\n".join(table) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    studies = list(dict.fromkeys(what for _, what, *_ in lines))
    fig, ax = plt.subplots(figsize=(8.5, 5.6))
    width = 0.8 / max(1, len(studies))
    for i, what in enumerate(studies):
        pts = [(rank, *gap(lora, ref)) for rank, w, lora, ref, _ in lines if w == what]
        xs = [[1, 4, 8].index(r) + (i - (len(studies) - 1) / 2) * width for r, *_ in pts]
        ax.bar(xs, [g for _, g, _ in pts], width, yerr=[se for *_, se in pts], capsize=2, label=what)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks([0, 1, 2], ["LoRA r1", "LoRA r4", "LoRA r8"])
    ax.set_ylabel("gold score: LoRA − FullFT (± s.e.)")
    ax.set_title("DPO gap to FullFT under each study (tiny-arith, 3 seeds, best LR each)", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.07), ncol=2)
    fig.tight_layout()
    fig.savefig(OUT / "gap.png", dpi=110)
    plt.close(fig)
    print((OUT / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
