"""Finding 2 of the replication atlas (issue 13), capacity: beyond its capacity LoRA learns more slowly.

    OMP_NUM_THREADS=1 python scripts/studies/atlas_capacity.py                # the study (40 runs, ~32-40 min), then its outputs
    OMP_NUM_THREADS=1 python scripts/studies/atlas_capacity.py --report-only  # only redraw the outputs from the run folders
    OMP_NUM_THREADS=1 python scripts/studies/atlas_capacity.py --smoke        # the smallest configurations, a few steps

SFT (recipes/sft_lora.yaml with CAPACITY_OVERRIDES) on the built-in memorisation task `facts`
(`align.tasks.facts`): N random key -> value facts, each value 12 random digits, so a fact holds
exactly 39.86 bits. The training set is all N facts and the metric is the final TRAINING loss on
them in bits per fact (`bits_per_fact`: 39.86 = knows the format but no fact, 0 = all memorised),
beside greedy exact recall. N = 16, 64, 256, 1024 (x4 each): 638 bits to 40.8k bits, i.e. 0.11
to 6.9 bits per trainable parameter of a rank-1 adapter (5,888 parameters on all layers of the
built-in base), against a LoRA capacity often quoted near 2 bits per parameter; 1024 facts are
0.07 bits per parameter of FullFT (550k). Configurations: FullFT and LoRA on all layers at ranks
1, 4, 8, 32 (alpha 32), each at 2 LRs around its probed best, seed 0.

Budget: a fixed compute budget per N, not convergence (which would cost hours at N = 1024):
batch 32, cosine decay after 10 warmup steps, steps = max(500, 40 epochs) = 500, 500, 500, 1280.
From probes (one thread, both cores busy; 12-digit values, batch 32, cosine over the run):
- FullFT (LR 1e-3) memorises 64 facts in ~150 steps (0.22 bits/fact at 150, 0.05 at 300), so
  500 steps give every configuration at N <= 64 over 3x what FullFT needs; it learns ~10-15
  bits per step, so at N = 256 (10.2k bits) and 1024 (40.8k) nobody converges in the budget
  (FullFT: 15.5 bits/fact after 400 steps at 256; 27.1 after 1280 at 1024): the largest sizes
  measure how much each configuration learns in the same compute, which is the finding's
  "learns more slowly";
- LoRA learned far more slowly than FullFT already at N = 64 in 300 steps (bits/fact: rank 8
  8.2 at LR 1.5e-3, 11.3 at 1e-3, 16.3 at 3e-3, 39.5 at 6e-3; rank 1 30.3 at 1e-3, 34.2 at 3e-3,
  40.0 at 6e-3, 44.2 at 1e-2 with 50 warmup steps); at N = 256 (4-digit values, 400 steps) LoRA
  at 1e-2 diverged (16.9 bits/fact, above the 13.3 content) while 3e-3 learned. So LoRA's best LR
  here is about FullFT's (1e-3 to 2e-3), not 10x: the grids are FULL_LRS and LORA_LRS below.
Runtime: ~55-70 ms a step and ~10 s a run outside training on one thread: 40 runs, 27,800 steps,
about 32-40 minutes (printed before the study starts).

Outputs (results/atlas/capacity/; run folders in runs/atlas_capacity/, gitignored), beside the
generic table.md / study.json that `scripts/studies/parity.py capacity` writes there:
    capacity.md     bits/fact (and recall) per configuration and N at the best LR of each, and where
                    each LoRA rank departs from FullFT, in facts and in bits per trainable parameter
    capacity.png    bits/fact against N (log x) and against bits per trainable parameter, and the
                    training curves at the largest N
    capacity.csv, capacity.json   the same numbers

Departure: the first N at which a rank's bits/fact exceed FullFT's (each at its best LR) by more
than DEPARTURE_BITS = 1 bit per fact (with several seeds: or by 2x the larger seed std, whichever
is larger). One bit per fact means LoRA gives each fact's whole 12-digit value at most half the
probability FullFT gives it; it is 2.5% of a fact's content and 20x FullFT's own residual on the
sizes it memorises (0.05 bits/fact), so it is not rounding or LR-grid noise.

The study joins the table of scripts/studies/parity.py, so `python scripts/studies/parity.py capacity`
runs it too (this script's `main` is that command, one run at a time, through the same sweep,
`scripts/studies/sweep.py`): its generic table picks each configuration's best LR by the lowest
bits/fact, and `report` (the study's `report` hook, built on `sweep.collect`) draws this file's plot
and table.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # this folder, also when imported from elsewhere (tests)
sys.path.insert(0, str(REPO))

import sweep  # noqa: E402  (this folder)
from sweep import Configuration, Study  # noqa: E402

from align.tasks.facts import WORLD as FACTS_WORLD  # noqa: E402  (after the path setup)

SIZES = (16, 64, 256, 1024)
RANKS = (1, 4, 8, 32)
BATCH = 32
MIN_STEPS = 500
EPOCHS = 40
FULL_LRS = [1e-3, 2e-3]  # probes: 1e-3 beat 3e-3 (N = 256); 2e-3 for the budget-limited sizes
LORA_LRS = {1: [5e-4, 1e-3], 4: [1e-3, 2e-3], 8: [1e-3, 2e-3], 32: [1e-3, 2e-3]}  # rank 1: 1e-3 beat 3e-3 and 6e-3; rank 8: 1.5e-3 best of 1e-3..6e-3
DEPARTURE_BITS = 1.0
SECONDS_PER_STEP = (0.055, 0.070)  # measured range, one thread (batch 32, 27-token sequences)
SECONDS_PER_RUN = 10.0  # process start, base load, evaluation before and after

CAPACITY_OVERRIDES = [
    "data.task=facts", "optimizer.lr_rule=false",  # every LR here is the LR actually used
    "optimizer.schedule=cosine", "optimizer.warmup_steps=10", f"train.batch_size={BATCH}", "train.eval_every=0",
    "eval.num_prompts=64", f"eval.max_new_tokens={FACTS_WORLD.value_digits + 2}", "tracking.wandb=false", "train.threads=1",
]
SMOKE_OVERRIDES = ["model=scratch:test", "train.steps=3", "train.batch_size=8", "train.log_every=1",
                   "eval.num_prompts=4", "eval.max_new_tokens=4"]


def steps_for(n: int) -> int:
    """The compute budget at N facts: 40 epochs, at least MIN_STEPS optimizer steps."""
    return max(MIN_STEPS, round(EPOCHS * n / BATCH))


def _series(rank: int | None) -> str:
    return "full" if rank is None else f"lora_r{rank}"


def _configuration(rank: int | None, n: int) -> Configuration:
    mode = ["mode=full"] if rank is None else ["mode=lora", f"lora.rank={rank}", "lora.alpha=32", "lora.targets=all"]
    steps = steps_for(n)
    lrs = FULL_LRS if rank is None else LORA_LRS[rank]
    return Configuration(f"{_series(rank)}_n{n}", [*mode, f"data.num_facts={n}", f"train.steps={steps}",
                                                   f"train.log_every={max(1, steps // 20)}"], list(lrs))


# name -> (series, N): which line of the plot and which point of it a configuration is.
POINTS = {f"{_series(rank)}_n{n}": (_series(rank), n) for rank in (None, *RANKS) for n in SIZES}

STUDIES = {
    "capacity": Study(
        recipe="recipes/sft_lora.yaml",
        overrides=list(CAPACITY_OVERRIDES),
        configurations=[_configuration(rank, n) for rank in (None, *RANKS) for n in SIZES],
        metric="bits_per_fact",
        metric_label="final training loss on the N facts, bits per fact (39.86 = no fact known; lower is better)",
        higher_is_better=False,
        digits=2,
        secondary=["recall", "loss"],
        seeds=[0],
        smoke_overrides=list(SMOKE_OVERRIDES),
        smoke_configurations=[f"full_n{SIZES[0]}", f"lora_r1_n{SIZES[0]}"],
        smoke_lr_indices=(0,),
        runs_dir="runs/atlas_capacity",
        out_dir="results/atlas/capacity",
        axis=("facts N", dict(POINTS)),
    ),
}


def estimate(study: Study, seeds: list[int], tail: list[str] = ()) -> tuple[int, int, float, float]:
    """(runs, optimizer steps, minutes low, minutes high) of a study on one thread, one run at a time
    (`tail`: overrides after each configuration's own, e.g. --smoke's steps)."""

    def steps_of(config: Configuration) -> int:
        return int([o for o in [*config.overrides, *tail] if o.startswith("train.steps=")][-1].split("=")[1])

    runs = sum(len(c.lrs) for c in study.configurations) * len(seeds)
    steps = sum(len(c.lrs) * steps_of(c) for c in study.configurations) * len(seeds)
    low, high = ((steps * s + runs * SECONDS_PER_RUN) / 60 for s in SECONDS_PER_STEP)
    return runs, steps, low, high


# ---- collecting ---------------------------------------------------------------------------------

def _bits_curve(run_dir: Path) -> dict[int, float]:
    """Training loss against step, in bits per fact: the logged loss is nats per target token and
    every fact has value_digits + 1 target tokens (the value and EOS)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return {}
    per_fact = (FACTS_WORLD.value_digits + 1) / math.log(2)
    rows = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return {r["step"]: r["loss"] * per_fact for r in rows if "loss" in r}


def collect(study: Study, runs_dir: Path, seeds: list[int]) -> list[dict]:
    """sweep.collect's rows (best LR by the lowest seed-mean bits/fact, never a diverged one; EDGE;
    every LR's seed mean), with what the capacity table and plot add: series and N, recall, content
    bits per trainable parameter, the run's steps and its training-loss curves in bits per fact. A
    configuration whose runs are all missing is left out."""
    configs = {c.name: c for c in study.configurations}
    rows = []
    for r in sweep.collect(study, study.configurations, seeds, runs_dir):
        config, (series, n) = configs[r["configuration"]], POINTS[r["configuration"]]
        runs = [runs_dir / sweep.run_name(config, r["best_lr"], seed) for seed in seeds]
        steps = next(json.loads((d / "summary.json").read_text())["steps"] for d in runs if (d / "summary.json").exists())
        rows.append({
            "configuration": r["configuration"], "series": series, "facts": n, "best_lr": r["best_lr"],
            "edge": bool(r["edge"]), "bits_per_fact": r["metric_mean"], "bits_std": r["metric_std"],
            "recall": r["recall_mean"], "seeds": r["seeds"], "trainable_parameters": r["trainable_parameters"],
            "content_bits_per_parameter": n * FACTS_WORLD.content_bits / r["trainable_parameters"],
            "steps": steps, "by_lr": {lr: mean for lr, (mean, _) in r["by_lr"].items()},
            "curves": [_bits_curve(d) for d in runs],
        })
    return rows


def departures(rows: list[dict], margin_bits: float = DEPARTURE_BITS) -> list[dict]:
    """Per LoRA series: the last N where it is within the margin of FullFT (each at its best LR)
    and the first N where it is not, in facts and in content bits per trainable parameter."""
    full = {r["facts"]: r for r in rows if r["series"] == "full"}
    out = []
    for series in dict.fromkeys(r["series"] for r in rows if r["series"] != "full"):
        points = sorted((r for r in rows if r["series"] == series and r["facts"] in full), key=lambda r: r["facts"])
        if not points:
            continue
        held, departed = None, None
        for r in points:
            base = full[r["facts"]]
            margin = max(margin_bits, 2 * max(r["bits_std"], base["bits_std"]))
            gap = r["bits_per_fact"] - base["bits_per_fact"]
            if gap > margin:
                departed = {**r, "gap": gap, "margin": margin}
                break
            held = r
        out.append({
            "series": series, "trainable_parameters": points[0]["trainable_parameters"],
            "holds_to_facts": held["facts"] if held else None,
            "holds_to_bits_per_parameter": held["content_bits_per_parameter"] if held else None,
            "departs_at_facts": departed["facts"] if departed else None,
            "departs_at_bits_per_parameter": departed["content_bits_per_parameter"] if departed else None,
            "gap_bits_per_fact": departed["gap"] if departed else None,
            "margin_bits_per_fact": departed["margin"] if departed else margin_bits,
            "largest_facts": points[-1]["facts"],
        })
    return out


# ---- reporting ----------------------------------------------------------------------------------

def _cell(r: dict | None) -> str:
    if r is None:
        return ""
    std = f" ± {r['bits_std']:.2f}" if r["seeds"] > 1 else ""
    return f"{r['bits_per_fact']:.2f}{std} ({100 * r['recall']:.0f}%; LR {r['best_lr']:g}{' EDGE' if r['edge'] else ''})"


def write_table(rows: list[dict], deps: list[dict], out_dir: Path, title: str, notes: list[str]) -> str:
    sizes = sorted({r["facts"] for r in rows})
    series = list(dict.fromkeys(r["series"] for r in rows))
    at = {(r["series"], r["facts"]): r for r in rows}
    lines = [f"# {title}", "",
             f"Final training loss on all N facts, in bits per fact (content {FACTS_WORLD.content_bits:.2f} bits: "
             f"{FACTS_WORLD.value_digits} random digits; 0 = every fact memorised), at each configuration's best LR; "
             "in brackets greedy exact recall and the LR.", *[f"{n}  " for n in notes], "",
             "| configuration | trainable params | " + " | ".join(f"N = {n:,} ({n * FACTS_WORLD.content_bits:,.0f} bits)" for n in sizes) + " |",
             "|---|---|" + "---|" * len(sizes)]
    for s in series:
        trainable = next(r["trainable_parameters"] for r in rows if r["series"] == s)
        lines.append(f"| {s} | {trainable:,} | " + " | ".join(_cell(at.get((s, n))) for n in sizes) + " |")
    lines += ["", f"## Where each rank departs from FullFT (bits/fact above FullFT's by more than "
              f"{DEPARTURE_BITS:g} bit, or 2x the seed std when larger)", "",
              "| configuration | trainable params | matches FullFT up to N | (bits per trainable param) | departs at N "
              "| (bits per trainable param) | gap there (bits/fact) |", "|---|---|---|---|---|---|---|"]
    for d in deps:
        held = f"{d['holds_to_facts']:,}" if d["holds_to_facts"] else "none (departs at the smallest N)"
        held_bpp = f"{d['holds_to_bits_per_parameter']:.2f}" if d["holds_to_facts"] else ""
        if d["departs_at_facts"]:
            dep, dep_bpp, gap = f"{d['departs_at_facts']:,}", f"{d['departs_at_bits_per_parameter']:.2f}", f"+{d['gap_bits_per_fact']:.2f}"
        else:
            dep, dep_bpp, gap = f"not up to {d['largest_facts']:,}", "", ""
        lines.append(f"| {d['series']} | {d['trainable_parameters']:,} | {held} | {held_bpp} | {dep} | {dep_bpp} | {gap} |")
    edges = [r["configuration"] for r in rows if r["edge"]]
    if edges:
        lines += ["", f"**Best LR at the edge of its grid: {', '.join(edges)}** (the optimum may lie outside it)."]
    text = "\n".join(lines) + "\n"
    (out_dir / "capacity.md").write_text(text)
    with open(out_dir / "capacity.csv", "w", newline="") as f:
        writer = csv.writer(f)
        keys = ["configuration", "series", "facts", "best_lr", "edge", "bits_per_fact", "bits_std", "recall", "seeds",
                "trainable_parameters", "content_bits_per_parameter", "steps"]
        writer.writerow(keys + ["bits_by_lr"])
        for r in rows:
            writer.writerow([r[k] for k in keys] + ["; ".join(f"{lr:g}:{b:.3f}" for lr, b in r["by_lr"].items())])
    return text


def write_plot(rows: list[dict], deps: list[dict], out_dir: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = list(dict.fromkeys(r["series"] for r in rows))
    fig, (ax_n, ax_bpp, ax_curve) = plt.subplots(1, 3, figsize=(15, 4.4))
    departed = {d["series"]: d["departs_at_facts"] for d in deps}
    for s in series:
        pts = sorted((r for r in rows if r["series"] == s), key=lambda r: r["facts"])
        style = dict(color="black", lw=2.2) if s == "full" else {}
        line = ax_n.errorbar([r["facts"] for r in pts], [r["bits_per_fact"] for r in pts], yerr=[r["bits_std"] for r in pts],
                             marker="o", capsize=3, label=s, **style)
        if departed.get(s):
            r = next(r for r in pts if r["facts"] == departed[s])
            ax_n.scatter([r["facts"]], [r["bits_per_fact"]], s=140, facecolors="none", edgecolors=line[0].get_color(), lw=1.5)
        if s != "full":
            ax_bpp.plot([r["content_bits_per_parameter"] for r in pts], [r["bits_per_fact"] for r in pts], marker="o", label=s)
    content = FACTS_WORLD.content_bits
    for ax in (ax_n, ax_bpp):
        ax.axhline(content, color="grey", ls=":", lw=1, label=f"content ({content:.1f} bits: no fact known)")
        ax.set_ylabel("final training loss (bits per fact)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    sizes = sorted({r["facts"] for r in rows})
    ax_n.set_xscale("log", base=2)
    ax_n.set_xticks(sizes, [f"{n:,}" for n in sizes])
    ax_n.set_xlabel("facts N (log scale)")
    ax_n.set_title("bits/fact vs N, best LR each (circle: departs from FullFT)", fontsize=9)
    ax_n.legend(fontsize=8)
    ax_bpp.axvline(2.0, color="grey", ls="--", lw=1, label="2 bits / parameter")
    ax_bpp.set_xscale("log")
    ax_bpp.set_xlabel("content bits per trainable parameter (N x content / params)")
    ax_bpp.set_title("LoRA: bits/fact vs load per parameter", fontsize=9)
    ax_bpp.legend(fontsize=8)
    largest = max(sizes)
    for s in series:
        r = next((r for r in rows if r["series"] == s and r["facts"] == largest), None)
        if r is None or not any(r["curves"]):
            continue
        curve = next(c for c in r["curves"] if c)
        steps = sorted(curve)
        ax_curve.plot(steps, [curve[k] for k in steps], label=f"{s} (lr {r['best_lr']:g})",
                      **(dict(color="black", lw=2) if s == "full" else {}))
    ax_curve.axhline(content, color="grey", ls=":", lw=1)
    ax_curve.set_ylim(bottom=0)
    ax_curve.set_xlabel("step")
    ax_curve.set_ylabel("training batch loss (bits per fact)")
    ax_curve.set_title(f"training curves at N = {largest:,} (best LR, first seed)", fontsize=9)
    ax_curve.grid(alpha=0.3)
    ax_curve.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out_dir / "capacity.png", dpi=110)
    plt.close(fig)


def report(runs_dir: Path | str, out_dir: Path | str, study: Study | None = None, seeds: list[int] | None = None,
           title: str = "capacity: memorising N random facts, FullFT vs LoRA", notes: list[str] = ()) -> str:
    """capacity.md / .csv / .json / .png in `out_dir` from the run folders in `runs_dir`; returns the table."""
    study = study or STUDIES["capacity"]
    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = collect(study, runs_dir, seeds or study.seeds)
    if not rows:
        raise SystemExit(f"no finished capacity runs in {runs_dir}")
    deps = departures(rows)
    notes = [*notes, f"Per configuration `data.num_facts=N` and `train.steps=max({MIN_STEPS}, {EPOCHS} epochs)` at batch {BATCH}."]
    text = write_table(rows, deps, out_dir, title, notes)
    write_plot(rows, deps, out_dir, title)
    clean = [{**{k: v for k, v in r.items() if k not in ("by_lr", "curves")}, "by_lr": {f"{lr:g}": b for lr, b in r["by_lr"].items()}}
             for r in rows]
    (out_dir / "capacity.json").write_text(json.dumps(
        {"title": title, "runs_dir": str(runs_dir), "content_bits_per_fact": FACTS_WORLD.content_bits,
         "departure_bits_per_fact": DEPARTURE_BITS, "notes": notes, "rows": clean, "departures": deps}, indent=1) + "\n")
    return text


STUDIES["capacity"].report = report  # `python scripts/studies/parity.py capacity` draws these outputs too


def main(argv: list[str] | None = None) -> int:
    """`python scripts/studies/parity.py capacity` with this script's default of one run at a time, after
    printing the full study's estimated run time."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="the smallest FullFT and rank-1 configurations, 1 LR, a few steps")
    parser.add_argument("--report-only", action="store_true", help="only redraw the outputs from finished runs")
    parser.add_argument("--runs-dir", default=None, help="default: runs/atlas_capacity[_smoke]")
    parser.add_argument("--out", default=None, help="default: results/atlas/capacity[_smoke]")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (one thread each)")
    args = parser.parse_args(argv)
    study = STUDIES["capacity"]
    if not (args.smoke or args.report_only):
        runs, steps, low, high = estimate(study, study.seeds)
        print(f"capacity: {runs} runs, {steps:,} optimizer steps, about {low:.0f}-{high:.0f} min one run at a time", flush=True)
    flags = [flag for flag, on in (("--smoke", args.smoke), ("--report-only", args.report_only)) if on]
    flags += [item for key, value in (("--runs-dir", args.runs_dir), ("--out", args.out)) if value for item in (key, value)]
    return sweep.main(STUDIES, ["capacity", *flags, "--jobs", str(args.jobs)], description=__doc__.split("\n\n")[0])


if __name__ == "__main__":
    sys.exit(main())
