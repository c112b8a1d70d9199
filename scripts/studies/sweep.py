"""The engine of the parity studies: one study's rank x learning-rate x seed sweep, its table,
plots and study.json. Not a script of its own: `scripts/studies/parity.py` (the table of studies)
and `scripts/studies/atlas_capacity.py` (the capacity study) run `main(STUDIES, argv)`.

A study is a `Study`: the recipe, shared overrides, the configurations with their LR
grids, seeds, the metric read from `summary.json` (`eval_after`) and from `metrics.jsonl` (the
learning curve), and its smoke variant. Adding a method (e.g. `ppo`) means adding an entry to a
table of studies; this file has no per-method code.

For every configuration of the study (FullFT, and LoRA on all layers at ranks 1, 4, 8), every
learning rate of that configuration's grid and every seed, ONE training run is a separate process
(`python -m align.cli train RECIPE overrides... output_dir=...`), one torch thread each, at most
`--jobs` (default 2) at a time. A run whose summary.json exists is not run again, so an
interrupted study continues where it stopped. Run folders go under `runs/parity_<method>/`
(gitignored); the outputs go to `results/parity_<method>/` (`--smoke`: `..._smoke`), or to the
study's own `runs_dir` / `out_dir`:

    table.md, table.csv   per configuration, at its best LR (the LR with the best seed-mean final
                          metric, highest or lowest as the study says): the final metric as
                          mean +- std over seeds, the secondary metrics, the best LR, peak memory (max over those runs; CPU: process
                          peak RSS) and trainable parameters. A best LR at the edge of its grid
                          is flagged "EDGE" in the table and printed as a warning: the grid must
                          then be extended, the optimum may lie outside it.
    metric_vs_lr.png      final metric against LR (log scale), one curve per configuration,
                          seed mean with std error bars
    curves.png            the metric against training step at each configuration's best LR
                          (seed mean, shaded std)
    study.json            all of the above as numbers, and the verdict (align.report.verdict):
                          what `align report results/parity_<method>` draws as one HTML page
    metric_vs_axis.png,   studies with an `axis` (rank, steps, batch size): each configuration's
    table_axis.md/.csv    best-LR metric against it, one curve per series;
    best_lr_vs_axis.png   and, with `axis_best_lr`, each configuration's best LR against it

With `--wandb` every run logs to wandb (offline unless you are logged in), grouped so the wandb UI
compares them side by side: group = the study folder's name, job_type = the configuration,
run name = configuration-lr-seed. Without it (the default, as the studies were measured) wandb
is off.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from align.report import finite_json, paired_difference, verdict

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Configuration:
    """One line of the table: a mode (and LoRA rank) with its learning-rate grid."""

    name: str
    overrides: list[str]
    lrs: list[float]


@dataclass
class Study:
    recipe: str
    overrides: list[str]
    configurations: list[Configuration]
    metric: str  # key of summary.json's eval_after, and of metrics.jsonl as eval/<metric>
    metric_label: str
    higher_is_better: bool = True  # False for a loss: the best LR is the one with the lowest seed mean
    digits: int = 3  # decimals of the primary metric in table.md and table_axis.md
    secondary: list[str] = field(default_factory=list)  # more eval_after keys reported beside it
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    smoke_overrides: list[str] = field(default_factory=list)
    smoke_configurations: list[str] = field(default_factory=lambda: ["full", "lora_r4"])  # names kept in --smoke
    smoke_lr_indices: tuple[int, ...] = (0, -1)
    # Defaults of --runs-dir / --out (None: runs/parity_<method>, results/parity_<method>). Studies
    # that share the dpo study's run folder reuse its finished runs (same recipe and overrides).
    runs_dir: str | None = None
    out_dir: str | None = None
    # Optional extra plot and table: the best-LR metric of each configuration against a numeric
    # axis, one curve per series: (axis label, {configuration name: (series, x)}).
    axis: tuple[str, dict[str, tuple[str, float]]] | None = None
    # With an axis: also plot each configuration's best LR against it (best_lr_vs_axis.png).
    axis_best_lr: bool = False
    # A study's own outputs beside the generic ones: report(runs_dir, out_dir, study, seeds) -> text
    report: Callable[..., str] | None = None
    # Seeds after the first only where they can change the answer (a machine-sized study): a grid
    # point gets them when its first seed's metric is within this of its configuration's best
    # first-seed metric. The others keep one seed, are not counted missing, and are listed under
    # the table. None: every seed at every point.
    later_seeds_within: float | None = None
    # Seeds run only at each configuration's best LR, once every other run is done: more seeds where
    # the table's comparison stands, not at every grid point. The best is read again after they
    # land; where it moved, the new best gets them too, so every best LR ends with every seed.
    best_seeds: list[int] = field(default_factory=list)
    # A "vs full, paired" column: the mean over seeds of (this configuration - FullFT) for the runs
    # of one seed, ± its standard error. A run's seed draws its held-out prompts, so runs of one seed
    # are scored on the same prompts and the pairing takes the prompt draw out of the comparison
    # (the unpaired 'vs full' keeps it). Off by default: the tables of studies whose run folders
    # are gone could not be re-made with it.
    paired_by_seed: bool = False


# ---- running ------------------------------------------------------------------------------------

def lr_tag(lr: float) -> str:
    """1e-03, 3e-04, ...; an LR between those keeps its second digit (1.5e-03), so no two LRs of a
    grid share a run folder."""
    tag = f"{lr:.0e}"
    return tag if float(tag) == lr else f"{lr:.1e}"


def run_name(config: Configuration, lr: float, seed: int) -> str:
    return f"{config.name}-lr{lr_tag(lr)}-s{seed}"


def launch(study: Study, config: Configuration, lr: float, seed: int, runs_dir: Path, extra: list[str],
           group: str = "parity", wandb: bool = False, tail: list[str] = ()) -> Path:
    """One run in its own process. wandb (with --wandb; offline unless logged in) groups a study's
    runs: group = the study, job_type = the configuration, name = configuration-lr-seed. `tail`:
    overrides after the configuration's own (--smoke: its few steps win over a configuration's
    steps and batch size)."""
    out = runs_dir / run_name(config, lr, seed)
    if (out / "summary.json").exists():
        return out
    if out.exists():  # an interrupted run: start it again from scratch
        import shutil

        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "align.cli", "train", study.recipe, *study.overrides, *extra, *config.overrides, *tail,
           f"optimizer.lr={lr}", f"train.seed={seed}", f"output_dir={out}",
           f"tracking.group={group}", f"tracking.job_type={config.name}", f"tracking.run_name={out.name}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    if wandb:
        cmd.append("tracking.wandb=true")
    else:
        env["WANDB_MODE"] = "disabled"
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    runs_dir.mkdir(parents=True, exist_ok=True)
    (runs_dir / f"{out.name}.log").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr[-20000:])
    status = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}, see {runs_dir / (out.name + '.log')})"
    print(f"  {out.name}: {status} in {time.time() - t0:.0f}s", flush=True)
    return out


# ---- collecting ---------------------------------------------------------------------------------

def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _curve(run_dir: Path, key: str) -> dict[int, float]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if key in row:
            out[row["step"]] = float(row[key])
    return out


def best_lr(scored: dict[float, tuple[float, float]], higher_is_better: bool = True) -> float:
    """The LR whose seed-mean metric is best (`scored`: LR -> (mean, std)): the highest mean, or the
    lowest with `higher_is_better=False`. A NaN mean (a run that diverged) is never the best, unless
    every mean is NaN (then the first LR)."""
    finite = {lr: ms for lr, ms in scored.items() if not math.isnan(ms[0])}
    if not finite:
        return next(iter(scored))
    pick = max if higher_is_better else min
    return pick(finite, key=lambda lr: finite[lr][0])


def later_seed_jobs(study: Study, configs: list[Configuration], seeds: list[int], runs_dir: Path) -> tuple[list, list[str]]:
    """The runs of seeds after the first, and a note per grid point left at one seed
    (`Study.later_seeds_within`; a configuration whose first seed is not complete gets none yet)."""
    if study.later_seeds_within is None or len(seeds) < 2:
        return [(c, lr, s) for s in seeds[1:] for c in configs for lr in c.lrs], []
    jobs, notes, sign = [], [], 1 if study.higher_is_better else -1
    for c in configs:
        paths = {lr: runs_dir / run_name(c, lr, seeds[0]) / "summary.json" for lr in c.lrs}
        if not all(p.exists() for p in paths.values()):
            continue
        first = {lr: json.loads(p.read_text())["eval_after"][study.metric] for lr, p in paths.items()}
        best = max(sign * v for v in first.values())
        for lr, v in first.items():
            if best - sign * v <= study.later_seeds_within + 1e-12:
                jobs += [(c, lr, s) for s in seeds[1:]]
            else:
                notes.append(f"{c.name} at LR {lr:g}: seed {seeds[0]} only ({v:.3f}, {best - sign * v:.3f} from its "
                             f"configuration's best; later seeds run within {study.later_seeds_within:g}).")
    order = {s: i for i, s in enumerate(seeds)}
    return sorted(jobs, key=lambda j: order[j[2]]), notes


def best_seed_jobs(study: Study, configs: list[Configuration], seeds: list[int], runs_dir: Path) -> list:
    """The runs of `Study.best_seeds` not yet finished at each configuration's best LR, read from the
    runs of `seeds` and of the best seeds that finished."""
    by_name = {c.name: c for c in configs}
    rows = collect(study, configs, seeds + study.best_seeds, runs_dir)
    return [(by_name[r["configuration"]], r["best_lr"], s) for r in rows for s in study.best_seeds
            if not (runs_dir / run_name(by_name[r["configuration"]], r["best_lr"], s) / "summary.json").exists()]


def _tensors_by_role(summary: dict) -> str:
    """summary.json's memory_by_role in MB, the roles that hold something: 'base 513; policy 1.2; ...'
    ('' for runs from before it was recorded)."""
    from align.profile_memory import is_role_bytes

    names = {"optimizer_state": "optimizer", "gradients": "grads"}
    by_role = summary.get("memory_by_role") or {}
    return "; ".join(f"{names.get(k, k)} {v / 2**20:.{1 if v < 10 * 2**20 else 0}f}"
                     for k, v in by_role.items() if is_role_bytes(k, v))


def collect(study: Study, configs: list[Configuration], seeds: list[int], runs_dir: Path) -> list[dict]:
    rows = []
    for config in configs:
        per_lr = {}
        for lr in config.lrs:
            summaries = []
            for seed in seeds:
                path = runs_dir / run_name(config, lr, seed) / "summary.json"
                if path.exists():
                    summaries.append((seed, json.loads(path.read_text())))
            per_lr[lr] = summaries
        scored = {lr: _mean_std([s["eval_after"][study.metric] for _, s in ss]) for lr, ss in per_lr.items() if ss}
        if not scored:
            continue
        best_at = best_lr(scored, study.higher_is_better)
        best = per_lr[best_at]
        edge = len(config.lrs) > 1 and best_at in (config.lrs[0], config.lrs[-1])
        row = {
            "configuration": config.name,
            "best_lr": best_at,
            "edge": "EDGE" if edge else "",
            "metric_mean": scored[best_at][0],
            "metric_std": scored[best_at][1],
            "metric_before": statistics.fmean(s["eval_before"].get(study.metric, math.nan) for _, s in best),
            "seeds": len(best),
            "peak_memory_mb": max(s["peak_memory_bytes"] for _, s in best) / 2**20,
            # the C allocator of those runs (train.cpu_allocator; runs from before it was recorded: glibc)
            "allocator": "+".join(sorted({s.get("cpu_allocator", "glibc") for _, s in best})),
            "trainable_parameters": best[0][1]["trainable_parameters"],
            "wall_time_s": statistics.fmean(s["wall_time_s"] for _, s in best),
            # the tensors each role holds (weights, gradients, optimizer state: summary.json's
            # memory_by_role), equal for every seed of a configuration: the first seed's
            "tensors_by_role_mb": _tensors_by_role(best[0][1]),
            "by_lr": {lr: scored[lr] for lr in config.lrs if lr in scored},
            "by_seed": {seed: s["eval_after"][study.metric] for seed, s in best},
            "curves": [_curve(runs_dir / run_name(config, best_at, seed), f"eval/{study.metric}") for seed, _ in best],
        }
        for key in study.secondary:
            row[f"{key}_mean"], row[f"{key}_std"] = _mean_std([s["eval_after"].get(key, math.nan) for _, s in best])
        rows.append(row)
    return rows


# ---- reporting ----------------------------------------------------------------------------------

def write_tables(study: Study, rows: list[dict], out_dir: Path, title: str, notes: list[str] = ()) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = ["configuration", "best_lr", "edge", "metric_mean", "metric_std", "metric_before"]
    for key in study.secondary:
        columns += [f"{key}_mean", f"{key}_std"]
    columns += ["seeds", "peak_memory_mb", "tensors_by_role_mb", "trainable_parameters", "wall_time_s"]
    full = next((r for r in rows if r["configuration"] == "full"), None)
    paired = study.paired_by_seed and full is not None
    with open(out_dir / "table.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns + ["metric_by_lr"] + (["vs_full_paired_mean", "vs_full_paired_se", "paired_seeds"] if paired else []))
        for row in rows:
            by_lr = "; ".join(f"{lr:g}:{m:.4f}+-{s:.4f}" for lr, (m, s) in row["by_lr"].items())
            writer.writerow([row[c] for c in columns] + [by_lr] + (list(paired_difference(row, full)) if paired else []))
    header = ["configuration", "best LR", f"{study.metric} (mean ± std)", "vs full", *(["vs full, paired by seed (± s.e.)"] if paired else []), "before"]
    header += [f"{k} (mean ± std)" for k in study.secondary]
    header += ["seeds", "peak memory (MB)", "tensors by role (MB)", "trainable params", "all LRs (seed mean)"]
    better, d = ("the highest" if study.higher_is_better else "the lowest"), study.digits
    mixed = len({r.get("allocator", "glibc") for r in rows}) > 1  # runs under different C allocators: say so by their peaks
    lines = [f"# {title}", "", f"Metric: {study.metric_label}, after training, at each configuration's best LR "
             f"({better} seed mean of its grid).",
             *[f"{n}  " for n in notes], "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        diff = row["metric_mean"] - full["metric_mean"] if full else math.nan
        cells = [row["configuration"], f"{row['best_lr']:g}" + (" **EDGE**" if row["edge"] else ""),
                 f"{row['metric_mean']:.{d}f} ± {row['metric_std']:.{d}f}", f"{diff:+.{d}f}" if full else ""]
        if paired:
            mean, se, n = paired_difference(row, full)
            cells.append("" if row is full else f"{mean:+.{d}f} ± {se:.{d}f} ({n} seeds)" if n > 1 else f"{mean:+.{d}f} ({n} seed)")
        cells.append(f"{row['metric_before']:.{d}f}")
        cells += [f"{row[k + '_mean']:.3f} ± {row[k + '_std']:.3f}" for k in study.secondary]
        cells += [str(row["seeds"]), f"{row['peak_memory_mb']:.0f}" + (f" ({row['allocator']})" if mixed else ""),
                  row["tensors_by_role_mb"], f"{row['trainable_parameters']:,}",
                  ", ".join(f"{lr:g}: {m:.{d}f}" for lr, (m, _) in row["by_lr"].items())]
        lines.append("| " + " | ".join(cells) + " |")
    if mixed:
        lines += ["", "Peak memory: these runs had different C allocators (`train.cpu_allocator`, in brackets); "
                  "peaks compare only under one allocator, the metrics under any (the allocator moves memory, not numbers)."]
    edges = [r["configuration"] for r in rows if r["edge"]]
    if edges:
        lines += ["", f"**WARNING: the best LR of {', '.join(edges)} is at the edge of its grid; extend the grid.**"]
    text = "\n".join(lines) + "\n"
    (out_dir / "table.md").write_text(text)
    return text


def write_study_json(study: Study, rows: list[dict], out_dir: Path, title: str, notes: list[str], runs_dir: Path) -> None:
    """study.json: every number `align report STUDY_DIR` draws (per configuration: the metric by LR,
    the curves of each seed at the best LR, the table's columns) and the verdict."""
    def clean(row: dict) -> dict:
        out = {k: v for k, v in row.items() if k not in ("by_lr", "curves")}
        out["by_lr"] = {f"{lr:g}": list(ms) for lr, ms in row["by_lr"].items()}
        out["curves"] = [{str(step): value for step, value in curve.items()} for curve in row["curves"]]
        return out

    data = {"name": out_dir.name, "title": title, "metric": study.metric, "metric_label": study.metric_label,
            "higher_is_better": study.higher_is_better, "secondary": study.secondary, "recipe": study.recipe, "runs_dir": str(runs_dir), "notes": list(notes),
            "paired_by_seed": study.paired_by_seed, "rows": [clean(r) for r in rows]}
    data["verdict"] = verdict(data["rows"], higher_is_better=study.higher_is_better, paired=study.paired_by_seed)
    (out_dir / "study.json").write_text(json.dumps(finite_json(data), indent=1) + "\n")


def _metric_axis_label(study: Study) -> str:
    return study.metric + ("" if study.higher_is_better else " (lower is better)")


def write_plots(study: Study, rows: list[dict], out_dir: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for row in rows:
        lrs = list(row["by_lr"])
        means = [row["by_lr"][lr][0] for lr in lrs]
        stds = [row["by_lr"][lr][1] for lr in lrs]
        ax.errorbar(lrs, means, yerr=stds, marker="o", capsize=3, label=row["configuration"])
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel(_metric_axis_label(study))
    ax.set_title(f"{title}: final {study.metric} vs LR", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "metric_vs_lr.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for row in rows:
        steps = sorted(set().union(*[c.keys() for c in row["curves"]]))
        if not steps:
            continue
        values = [[c[s] for c in row["curves"] if s in c] for s in steps]
        means = [statistics.fmean(v) for v in values]
        stds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
        ax.plot(steps, means, marker="o", label=f"{row['configuration']} (lr {row['best_lr']:g})")
        ax.fill_between(steps, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)], alpha=0.15)
    ax.set_xlabel("step")
    ax.set_ylabel(_metric_axis_label(study))
    ax.set_title(f"{title}: learning curves at each best LR", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "curves.png", dpi=110)
    plt.close(fig)


def write_axis(study: Study, rows: list[dict], out_dir: Path, title: str) -> str:
    """The study's `axis`: each configuration's best-LR metric (seed mean ± std) against a number
    (rank, steps, batch size), one curve per series: metric_vs_axis.png and table_axis.md/.csv."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label, points = study.axis
    by_name = {r["configuration"]: r for r in rows}
    series: dict[str, list[tuple[float, dict]]] = {}
    for name, (line, x) in points.items():
        if name in by_name:
            series.setdefault(line, []).append((x, by_name[name]))
    xs = sorted({x for pts in series.values() for x, _ in pts})
    lines = [f"# {title}: {study.metric} at each configuration's best LR, by {label}", "",
             "Seed mean ± std (best LR).", "", "| series | " + " | ".join(f"{x:g}" for x in xs) + " |",
             "|---|" + "---|" * len(xs)]
    with open(out_dir / "table_axis.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["series", "x", "configuration", "best_lr", "metric_mean", "metric_std", "seeds"])
        for line, pts in series.items():
            d = study.digits
            cells = {x: f"{r['metric_mean']:.{d}f} ± {r['metric_std']:.{d}f} (LR {r['best_lr']:g}{', EDGE' if r['edge'] else ''})" for x, r in pts}
            lines.append(f"| {line} | " + " | ".join(cells.get(x, "") for x in xs) + " |")
            for x, r in sorted(pts, key=lambda p: p[0]):
                writer.writerow([line, x, r["configuration"], r["best_lr"], r["metric_mean"], r["metric_std"], r["seeds"]])
    text = "\n".join(lines) + "\n"
    (out_dir / "table_axis.md").write_text(text)

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for line, pts in series.items():
        pts = sorted(pts, key=lambda p: p[0])
        ax.errorbar([x for x, _ in pts], [r["metric_mean"] for _, r in pts], yerr=[r["metric_std"] for _, r in pts],
                    marker="o", capsize=3, label=line)
    full = by_name.get("full")
    if full is not None and "full" not in points:  # FullFT (batch 32, 60 steps) as the line to reach
        ax.axhline(full["metric_mean"], color="black", ls="--", lw=1, label=f"full (lr {full['best_lr']:g}), ± std")
        ax.axhspan(full["metric_mean"] - full["metric_std"], full["metric_mean"] + full["metric_std"], color="black", alpha=0.07)
    if len(xs) > 1 and xs[-1] / xs[0] >= 4:
        ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [f"{x:g}" for x in xs])
    ax.set_xlabel(label)
    ax.set_ylabel(f"{_metric_axis_label(study)}, best LR each")
    ax.set_title(f"{title}: {study.metric} vs {label}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(out_dir / "metric_vs_axis.png", dpi=110)
    plt.close(fig)

    if study.axis_best_lr:  # where each configuration's best LR lies along the axis (EDGE: hollow marker)
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for line, pts in series.items():
            pts = sorted(pts, key=lambda p: p[0])
            drawn = ax.plot([x for x, _ in pts], [r["best_lr"] for _, r in pts], marker="o", label=line)[0]
            edge = [(x, r["best_lr"]) for x, r in pts if r["edge"]]
            if edge:
                ax.plot(*zip(*edge), ls="none", marker="o", ms=11, mfc="none", color=drawn.get_color())
        if len(xs) > 1 and xs[-1] / xs[0] >= 4:
            ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.set_xlabel(label)
        ax.set_ylabel("best learning rate of the grid")
        ax.set_title(f"{title}: best LR vs {label} (ringed: at the grid's edge)", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        fig.savefig(out_dir / "best_lr_vs_axis.png", dpi=110)
        plt.close(fig)
    return text


def main(studies: dict[str, Study], argv: list[str] | None = None, description: str | None = None) -> int:
    """The command line of a table of studies (`studies`: name -> Study): run one, then report it."""
    parser = argparse.ArgumentParser(description=description or __doc__.split("\n\n")[0])
    parser.add_argument("method", choices=sorted(studies))
    parser.add_argument("--smoke", action="store_true", help="1 seed, 2 LRs, 2 configurations, a few steps")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--runs-dir", default=None, help="default: runs/parity_<method>[_smoke]")
    parser.add_argument("--out", default=None, help="default: results/parity_<method>[_smoke]")
    parser.add_argument("--model", default=None, help="override the recipe's model (e.g. a pinned copy of a built-in base)")
    parser.add_argument("--report-only", action="store_true", help="only rebuild the table and plots from finished runs")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="extra recipe override for every run, e.g. train.steps=60 (a longer budget)")
    parser.add_argument("--wandb", action="store_true",
                        help="log every run to wandb (offline unless logged in), grouped by study and configuration")
    parser.add_argument("--best-from", default=None, metavar="TABLE.csv",
                        help="run each configuration only at its best LR from an earlier study's table.csv")
    args = parser.parse_args(argv)

    study = studies[args.method]
    suffix = "_smoke" if args.smoke else ""
    runs_dir = Path(args.runs_dir or REPO / ((study.runs_dir + suffix) if study.runs_dir else f"runs/parity_{args.method}{suffix}")).resolve()
    out_dir = Path(args.out or REPO / ((study.out_dir + suffix) if study.out_dir else f"results/parity_{args.method}{suffix}")).resolve()
    configs, seeds, extra, tail = study.configurations, study.seeds, [], []
    if args.smoke:
        keep = set(study.smoke_configurations)
        configs = [Configuration(c.name, c.overrides, [c.lrs[i] for i in study.smoke_lr_indices]) for c in configs if c.name in keep]
        seeds, extra, tail = seeds[:1], list(study.smoke_overrides), list(study.smoke_overrides)
    if args.model:
        extra.append(f"model={args.model}")
    extra += args.override
    if args.best_from:
        with open(args.best_from) as f:
            best = {row["configuration"]: float(row["best_lr"]) for row in csv.DictReader(f)}
        configs = [Configuration(c.name, c.overrides, [best[c.name]]) for c in configs if c.name in best]

    def run_all(batch: list) -> None:
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            list(pool.map(lambda job: launch(study, *job, runs_dir, extra, out_dir.name, args.wandb, tail), batch))

    # Seed by seed: a study stopped part way has one seed of every grid point before a second of any.
    first = [(c, lr, seeds[0]) for c in configs for lr in c.lrs]
    if not args.report_only:
        print(f"parity {args.method}: {len(first)} runs of seed {seeds[0]}, {args.jobs} at a time -> {runs_dir}", flush=True)
        t0 = time.time()
        run_all(first)
    later, cut = later_seed_jobs(study, configs, seeds, runs_dir)
    jobs = first + later
    if not args.report_only:
        print(f"parity {args.method}: {len(later)} runs of later seeds" + (f" ({len(cut)} points cut)" if cut else ""), flush=True)
        run_all(later)
    best_seeds = [] if args.smoke else study.best_seeds
    if best_seeds and not args.report_only:
        # A run that fails is not tried twice in one call (it stays missing below); each round
        # moves the best at most to another grid point, so this ends.
        tried = set()
        while todo := [j for j in best_seed_jobs(study, configs, seeds, runs_dir) if (j[0].name, j[1], j[2]) not in tried]:
            tried |= {(c.name, lr, s) for c, lr, s in todo}
            print(f"parity {args.method}: {len(todo)} runs of seeds {best_seeds} at the best LRs", flush=True)
            run_all(todo)
    if not args.report_only:
        print(f"all runs done in {(time.time() - t0) / 60:.1f} min", flush=True)

    missing = len(jobs) - sum(1 for c, lr, s in jobs if (runs_dir / run_name(c, lr, s) / "summary.json").exists())
    if best_seeds:
        missing += len(best_seed_jobs(study, configs, seeds, runs_dir))
    rows = collect(study, configs, seeds + best_seeds, runs_dir)
    title = f"parity {args.method}" + (" (smoke)" if args.smoke else "")
    notes = [f"Recipe: `{study.recipe}` with `{' '.join(study.overrides + extra)}`; seeds {seeds}"
             + (f", and {best_seeds} at each configuration's best LR only." if best_seeds else ".")
             + (f" Each configuration at its best LR from `{args.best_from}`." if args.best_from else ""),
             "Std is over seeds; 'vs full' is the difference of seed means; 'before' is the metric before training."
             + (" 'vs full, paired by seed' is the mean of the per-seed differences (runs of one seed share their"
                " held-out prompts) ± its standard error." if study.paired_by_seed else "")]
    notes += cut
    text = write_tables(study, rows, out_dir, title, notes)
    write_study_json(study, rows, out_dir, title, notes, runs_dir)
    write_plots(study, rows, out_dir, title)
    if study.axis:
        text += "\n" + write_axis(study, rows, out_dir, title)
    if study.report:
        text += "\n" + study.report(runs_dir, out_dir, Study(**{**vars(study), "configurations": configs}), seeds + best_seeds, notes=notes)
    print(text)
    for row in rows:
        if row["edge"]:
            print(f"WARNING: {row['configuration']}: best LR {row['best_lr']:g} is at the EDGE of its grid "
                  f"{row['by_lr'] and list(row['by_lr'])}; extend the grid", file=sys.stderr)
    if missing:
        print(f"WARNING: {missing} of {len(jobs)} runs failed or are missing", file=sys.stderr)
    print(f"wrote {out_dir / 'table.md'}, table.csv, study.json, metric_vs_lr.png, curves.png")
    print(f"report: align report {out_dir} -o {out_dir / 'report.html'}")
    return 1 if missing else 0

