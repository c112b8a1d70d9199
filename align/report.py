"""`align report`: one self-contained HTML page of one or more runs, or of a parity study.

    align report RUN_DIR [RUN_DIR ...] -o report.html    # runs overlay on the same axes
    align report results/parity_ppo -o parity_ppo.html   # a study folder (scripts/studies/parity.py)

A run (a run directory: config.yaml, metrics.jsonl, samples.jsonl, summary.json; see
align.tracking) gives: its settings side by side, the evaluation before and after, learning
curves (loss; reward and gold; KL; accuracy; each chart drawn only where some run logged its
keys), the memory per role (summary.json's memory_by_role, else memory_bytes), the time split
(summary.json's time_split_s, and the RL trainers' time/ keys), and sampled completions from the
first and last evaluation and the last RL iteration.

A study folder (table.csv, and study.json where parity.py wrote one) gives: the final metric
against LR per configuration with std error bars, the curves at each configuration's best LR
(seed mean with a std band), the parity table and the verdict (`verdict`, below).

The page needs no network: its data sits in the page as JSON and a ~200-line plotting script
(`report_assets/plot.js`, inlined as PLOT_JS) draws every chart as inline SVG when the page opens. Open the file in any
browser (`xdg-open report.html`, or copy it off a headless machine). Every chart container has
class `plot` and gets `data-drawn` = the number of marks drawn (the browser test reads it).

What it leaves out: wandb (the report reads only the run directory), histograms (wandb has them),
interactive zoom.
"""

from __future__ import annotations

import csv
import datetime as _dt
import html
import json
import math
import statistics
from importlib.resources import files
from pathlib import Path
from typing import Any

# The page's style sheet and its plotting script (line charts with optional log x, error bars and
# std bands, stacked horizontal bars, as inline SVG; written for this page, no library) ship as
# package data and are inlined, so a report is one file that opens offline.
CSS = (files("align") / "report_assets" / "report.css").read_text()
PLOT_JS = (files("align") / "report_assets" / "plot.js").read_text()

# ---- reading ------------------------------------------------------------------------------------


def _rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def is_study(path: Path) -> bool:
    return (path / "table.csv").exists() and not (path / "metrics.jsonl").exists()


def load_run(path: Path) -> dict[str, Any]:
    """What the report needs from a run directory; a folder without metrics.jsonl or summary.json
    is refused with the reason."""
    path = Path(path)
    if not (path / "metrics.jsonl").exists() and not (path / "summary.json").exists():
        raise FileNotFoundError(f"{path}: not a run directory (no metrics.jsonl or summary.json) nor a study folder (no table.csv)")
    summary = json.loads((path / "summary.json").read_text()) if (path / "summary.json").exists() else {}
    config = (path / "config.yaml").read_text() if (path / "config.yaml").exists() else ""
    return {"name": path.name, "path": str(path), "summary": summary, "config_text": config,
            "config": _yaml(config), "metrics": _rows(path / "metrics.jsonl"), "samples": _rows(path / "samples.jsonl")}


def _yaml(text: str) -> dict[str, Any]:
    if not text:
        return {}
    import yaml

    return yaml.safe_load(text) or {}


# ---- charts (specs the page's script draws) -----------------------------------------------------

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"]
DASHES = ["", "6,3", "2,3", "8,3,2,3"]

# (title, y label, candidate metrics.jsonl keys): a chart appears when some run logged one of them.
CURVES = [
    ("loss", "loss", ["loss", "loss/policy", "loss/value"]),
    ("reward and gold", "score", ["reward/score", "reward/gold", "eval/gold_score_sampled", "eval/reward_sampled"]),
    ("KL to the reference", "KL (per sequence)", ["kl", "approx_kl"]),
    ("accuracy", "accuracy", ["eval/accuracy_sampled", "eval/accuracy_greedy", "eval/pairs/rewards/accuracies",
                              "eval/pairs/accuracy", "rewards/accuracies", "accuracy"]),
    ("implicit reward margin (DPO)", "margin", ["rewards/margins", "eval/pairs/rewards/margins"]),
    ("response length", "tokens", ["response_length", "eval/mean_response_length"]),
]


def _points(metrics: list[dict[str, Any]], key: str) -> list[list[float]]:
    out = []
    for row in metrics:
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out.append([row["step"], float(value)])
    return out


def curve_charts(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    charts = []
    for title, ylabel, keys in CURVES:
        series = []
        several = len(runs) > 1  # several runs: a color per run, a dash per key; one run: a color per key
        for r, run in enumerate(runs):
            present = [k for k in keys if _points(run["metrics"], k)]
            for d, key in enumerate(present):
                series.append({"name": f"{run['name']}: {key}" if several else key,
                               "color": COLORS[(r if several else d) % len(COLORS)],
                               "dash": DASHES[d % len(DASHES)] if several else "",
                               "points": _points(run["metrics"], key)})
        if series:
            charts.append({"kind": "line", "title": title, "xlabel": "step", "xint": True, "ylabel": ylabel, "series": series})
    return charts


def memory_chart(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Stacked horizontal bars, one per run: MiB per role (else per category)."""
    parts_by_run = []
    for run in runs:
        s = run["summary"]
        parts = numeric_entries(s.get("memory_by_role")) or numeric_entries(s.get("memory_bytes"))
        parts.pop("total", None)
        parts_by_run.append(parts)
    return _stacked_bars(runs, parts_by_run, "memory by role (MiB; gradients are freed after each step)", "MiB", 2**20)


def time_chart(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Stacked bars of seconds: the run's phases (time_split_s), with training split into the RL
    trainers' logged time/rollout, time/scoring, time/forward, time/update where they exist."""
    parts_by_run = []
    for run in runs:
        split = numeric_entries(run["summary"].get("time_split_s"))
        logged = {}
        for key in ("time/rollout", "time/scoring", "time/forward", "time/update"):
            total = sum(v for _, v in _points(run["metrics"], key))
            if total > 0:
                logged[key.split("/", 1)[1]] = total
        parts: dict[str, float] = {}
        for phase, seconds in split.items():
            if phase == "training" and logged:  # the RL timers subdivide the training steps
                parts.update(logged)
                parts["training (other)"] = max(seconds - sum(logged.values()), 0.0)
            else:
                parts[phase] = seconds
        if not split:
            parts = dict(logged)
        if not parts and run["summary"].get("wall_time_s"):
            parts = {"wall time (not split)": float(run["summary"]["wall_time_s"])}
        parts_by_run.append(parts)
    return _stacked_bars(runs, parts_by_run, "where the time went (seconds)", "seconds")


def _stacked_bars(runs: list[dict[str, Any]], parts_by_run: list[dict[str, float]], title: str, xlabel: str,
                  unit: float = 1.0) -> dict[str, Any] | None:
    """A bar chart spec: one bar per run, stacked by every part name any run has (values / unit)."""
    names = list(dict.fromkeys(k for parts in parts_by_run for k in parts))
    if not names:
        return None
    return {"kind": "bar", "title": title, "xlabel": xlabel, "categories": [run["name"] for run in runs],
            "stacks": [{"name": n, "color": COLORS[i % len(COLORS)], "values": [p.get(n, 0.0) / unit for p in parts_by_run]}
                       for i, n in enumerate(names)]}


def finite_json(value: Any) -> Any:
    """JSON for the page's script: NaN and infinities (a metric a run lacks) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def numeric_entries(d: dict[str, Any] | None) -> dict[str, float]:
    """The numeric entries of a summary's dict (memory_bytes, memory_by_role, time_split_s), as
    floats: a reward run's memory dict also names its peak's kind, a string."""
    return {k: float(v) for k, v in (d or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


# ---- HTML pieces --------------------------------------------------------------------------------

def _e(value: Any) -> str:
    return html.escape(str(value))


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


class _Page:
    """Sections of HTML and the chart specs the page's script draws."""

    def __init__(self, title: str) -> None:
        self.title, self.parts, self.charts = title, [], []

    def section(self, heading: str, body: str, note: str = "") -> None:
        note_html = f'<p class="note">{note}</p>' if note else ""
        self.parts.append(f"<section><h2>{_e(heading)}</h2>{note_html}{body}</section>")

    def chart(self, spec: dict[str, Any] | None) -> str:
        if spec is None:
            return ""
        self.charts.append(spec)
        return f'<div class="plot" id="plot-{len(self.charts) - 1}" data-chart="{len(self.charts) - 1}"></div>'

    def render(self) -> str:
        data = json.dumps(finite_json(self.charts)).replace("</", "<\\/")
        stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
        return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(self.title)}</title>"
                f"<style>{CSS}</style></head><body><header><h1>{_e(self.title)}</h1>"
                f"<p class=\"note\">align report, {stamp}. Self-contained: no network needed.</p></header>"
                + "".join(self.parts)
                + f"<script type=\"application/json\" id=\"chart-data\">{data}</script><script>{PLOT_JS}</script></body></html>")


# ---- a report of runs ---------------------------------------------------------------------------

# (recipe key, label, the methods it belongs to: None = every method)
RL = ("ppo", "grpo")
SETTINGS = [("method", "method", None), ("mode", "mode", None), ("model", "model", None), ("lora.rank", "lora rank", None),
            ("lora.targets", "lora targets", None), ("optimizer.lr", "optimizer.lr", None),
            ("optimizer.lr_rule", "lr rule (LoRA LR = ratio x)", None), ("optimizer.lr_rule_ratios", "lr rule ratios", None), ("optimizer.schedule", "schedule", None),
            ("train.steps", "steps", None), ("train.batch_size", "batch size", ("sft", "reward", "dpo")),
            ("train.seed", "seed", None), ("data.task", "task", None), ("data.train_file", "train file", None),
            ("rollout.reward", "reward", RL), ("rollout.gold_reward", "gold reward", RL), ("rollout.kl_coef", "kl coef", RL),
            ("rollout.max_new_tokens", "max new tokens", RL), ("ppo.rollout_batch_size", "rollouts per iteration", ("ppo",)),
            ("ppo.minibatch_size", "minibatch", ("ppo",)), ("ppo.ppo_epochs", "ppo epochs", ("ppo",)),
            ("grpo.prompts_per_iteration", "prompts per iteration", ("grpo",)), ("grpo.group_size", "group size", ("grpo",)),
            ("grpo.advantage", "advantage", ("grpo",)), ("grpo.loss_aggregation", "loss aggregation", ("grpo",)),
            ("dpo.loss_type", "dpo loss", ("dpo",)), ("dpo.beta", "dpo beta", ("dpo",)),
            ("reward.readout", "reward readout", ("reward",))]


def _get(d: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def _samples_table(rows: list[dict[str, Any]]) -> str:
    def score(v):
        if v is None:
            return "—"
        cls = "good" if v > 0.5 else "bad" if v <= 0 else ""
        return f'<span class="{cls}">{v:.3g}</span>'

    return _table(["prompt", "response", "reward", "gold", "length", "stopped"], [
        [f"<code>{_e(r['prompt'])}</code>", f"<code>{_e(r['response'])}</code>", score(r.get("reward")), score(r.get("gold")),
         _e(r.get("length")), "yes" if r.get("stopped") else '<span class="bad">no</span>'] for r in rows], "samples")


def run_report(runs: list[dict[str, Any]], page: _Page) -> None:
    # ---- what ran
    rows = []
    for run in runs:
        s = run["summary"]
        rows.append([f"<b>{_e(run['name'])}</b><br><span class=\"note\">{_e(run['path'])}</span>",
                     _e(s.get("method", _get(run["config"], "method"))), _e(s.get("mode", _get(run["config"], "mode"))),
                     _fmt(s.get("learning_rate")), _fmt(s.get("steps")), _fmt(s.get("trainable_parameters")),
                     _fmt(s.get("total_parameters")), _fmt(s.get("wall_time_s")),
                     _fmt(round(s["peak_memory_bytes"] / 2**20, 1)) if s.get("peak_memory_bytes") else "—"])
    page.section("runs", _table(["run", "method", "mode", "learning rate", "steps", "trainable params", "total params",
                                 "wall time (s)", "peak memory (MiB)"], rows))

    # ---- settings, side by side (rows that differ between runs are marked), and each config.yaml
    rows = []
    methods = {_get(run["config"], "method") for run in runs}
    for key, label, wanted in SETTINGS:
        if wanted is not None and not methods & set(wanted):
            continue
        values = [_get(run["config"], key) if wanted is None or _get(run["config"], "method") in wanted else None for run in runs]
        if all(v is None for v in values):
            continue
        differs = len({json.dumps(v, default=str) for v in values}) > 1
        rows.append([f"<b>{_e(label)}</b>" if differs else _e(label), *[_e(_fmt(v)) for v in values]])
    configs = "".join(f"<details><summary>{_e(run['name'])}/config.yaml</summary><pre>{_e(run['config_text'])}</pre></details>"
                      for run in runs if run["config_text"])
    page.section("config", _table(["setting", *[run["name"] for run in runs]], rows) + configs,
                 "Settings in bold differ between runs.")

    # ---- evaluation before and after
    keys = list(dict.fromkeys(k for run in runs for part in ("eval_before", "eval_after")
                              for k in (run["summary"].get(part) or {})))
    rows = []
    for key in keys:
        cells = []
        for run in runs:
            before, after = (run["summary"].get(p, {}).get(key) for p in ("eval_before", "eval_after"))
            delta = f" ({after - before:+.3f})" if isinstance(before, (int, float)) and isinstance(after, (int, float)) else ""
            cells.append(f"{_fmt(before)} → <b>{_fmt(after)}</b>{delta}")
        rows.append([_e(key), *cells])
    if rows:
        page.section("evaluation before → after", _table(["metric", *[run["name"] for run in runs]], rows))

    # ---- learning curves, memory, time
    curves = "".join(page.chart(spec) for spec in curve_charts(runs))
    page.section("learning curves", f'<div class="grid">{curves}</div>' if curves else "<p>No metrics logged.</p>",
                 "Steps: optimizer steps (SFT, reward, DPO) or iterations (PPO, GRPO). eval/ keys are held-out evaluations.")
    memory = memory_chart(runs)
    if memory is not None:
        table_rows = [[_e(stack["name"]), *[f"{v:.3f}" for v in stack["values"]]] for stack in memory["stacks"]]
        page.section("memory by role", page.chart(memory) + _table(["part (MiB)", *memory["categories"]], table_rows),
                     "Bytes held by each role's own weights (one frozen base shared by the LoRA roles), "
                     "gradients and optimizer state at the end of the run (align.memory.memory_by_role).")
    timing = time_chart(runs)
    if timing is not None:
        page.section("time split", page.chart(timing),
                     "setup: model loading and the first evaluation; evaluation: later evaluations (the last also "
                     "covers the final save); rollout, scoring, forward, update: the RL trainers' own timers.")

    # ---- sampled completions
    blocks = []
    for run in runs:
        samples = run["samples"]
        evals = sorted({r["step"] for r in samples if r["kind"] == "eval"})
        rollouts = sorted({r["step"] for r in samples if r["kind"] == "rollout"})
        picks = []
        if evals:
            picks.append(("eval", evals[0], "evaluation before training" if evals[0] == 0 else f"evaluation at step {evals[0]}"))
        if len(evals) > 1:
            picks.append(("eval", evals[-1], f"evaluation at step {evals[-1]}"))
        if rollouts:
            picks.append(("rollout", rollouts[-1], f"rollouts of iteration {rollouts[-1]}"))
        inner = "".join(f"<h3>{_e(label)}</h3>" + _samples_table([r for r in samples if r["kind"] == kind and r["step"] == step])
                        for kind, step, label in picks)
        blocks.append(f"<details open><summary>{_e(run['name'])}</summary>"
                      f"{inner or '<p>No samples.jsonl in this run (tracking.samples: 0, or an older run).</p>'}</details>")
    page.section("sampled completions", "".join(blocks),
                 "Temperature 1 (evaluation) or the rollout temperature; reward: the training reward (evaluation on "
                 "a built-in task: exact correctness); gold: the task's gold score; stopped: ended with EOS.")


# ---- a report of a study ------------------------------------------------------------------------

def load_study(path: Path) -> dict[str, Any]:
    """A parity study folder: study.json where parity.py wrote it (every number the report
    draws), else table.csv alone (no curves)."""
    path = Path(path)
    if (path / "study.json").exists():
        return json.loads((path / "study.json").read_text())
    rows = []
    with open(path / "table.csv") as f:
        for row in csv.DictReader(f):
            by_lr = {}
            for part in filter(None, (p.strip() for p in row.get("metric_by_lr", "").split(";"))):
                lr, rest = part.split(":", 1)
                mean, std = rest.split("+-")
                by_lr[lr] = [float(mean), float(std)]
            rows.append({"configuration": row["configuration"], "best_lr": float(row["best_lr"]), "edge": row.get("edge", ""),
                         "metric_mean": float(row["metric_mean"]), "metric_std": float(row["metric_std"]),
                         "metric_before": float(row["metric_before"]), "seeds": int(row["seeds"]),
                         "peak_memory_mb": float(row["peak_memory_mb"]), "trainable_parameters": int(row["trainable_parameters"]),
                         "by_lr": by_lr, "curves": []})
    metric = "metric"
    if (path / "table.md").exists():
        for line in (path / "table.md").read_text().splitlines():
            if line.startswith("| configuration |"):
                metric = line.split("|")[3].strip().removesuffix(" (mean ± std)")
    return {"name": path.name, "metric": metric, "metric_label": metric, "rows": rows, "notes": []}


def _seed_differences(row: dict[str, Any], base: dict[str, Any]) -> list[float]:
    """row - base for each seed both ran at their best LRs (a study row's `by_seed`: seed -> metric)."""
    theirs = base.get("by_seed", {})
    return [value - theirs[seed] for seed, value in row.get("by_seed", {}).items() if seed in theirs]


def paired_difference(row: dict[str, Any], base: dict[str, Any]) -> tuple[float, float, int]:
    """(mean, standard error, n) of the per-seed difference row - base (`_seed_differences`); the
    error is NaN below 2 shared seeds. A run's seed draws its held-out prompts, so runs of one seed
    share them and the pairing takes the prompt draw out of the comparison."""
    diffs = _seed_differences(row, base)
    if not diffs:
        return math.nan, math.nan, 0
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.nan
    return statistics.fmean(diffs), se, len(diffs)


def _paired_clause(row: dict[str, Any], base: dict[str, Any]) -> str:
    """'; paired by seed -0.042 ± 0.011 s.e. over 3 seeds, the same sign in every seed' ('' below 2)."""
    mean, se, n = paired_difference(row, base)
    if n < 2:
        return ""
    diffs = _seed_differences(row, base)
    signs = "the same sign in every seed" if all(d > 0 for d in diffs) or all(d < 0 for d in diffs) else "signs differ by seed"
    return f"; paired by seed {mean:+.3f} ± {se:.3f} s.e. over {n} seeds, {signs}"


def verdict(rows: list[dict[str, Any]], baseline: str = "full", higher_is_better: bool = True,
            paired: bool = False) -> list[str]:
    """One sentence per configuration against the baseline (FullFT): the difference of seed means
    in units of the combined seed spread sqrt(std_a^2 + std_b^2): within 1 = matches; otherwise
    trails or beats by that many (`higher_is_better=False`, e.g. a loss: a lower mean beats).
    `paired`: each sentence also gives the difference paired by seed (`paired_difference`)."""
    base = next((r for r in rows if r["configuration"] == baseline), None)
    if base is None:
        return [f"No '{baseline}' configuration: nothing to compare against."]
    out = []
    for row in rows:
        if row is base:
            continue
        diff = row["metric_mean"] - base["metric_mean"]
        spread = math.hypot(row["metric_std"], base["metric_std"])
        z = diff / spread if spread > 0 else (0.0 if diff == 0 else math.copysign(math.inf, diff))
        if abs(z) <= 1:
            word = "matches"
        else:
            word = "trails" if (diff < 0) == higher_is_better else "beats"
        out.append(f"{row['configuration']} {word} {baseline}: {row['metric_mean']:.3f} ± {row['metric_std']:.3f} vs "
                   f"{base['metric_mean']:.3f} ± {base['metric_std']:.3f} ({diff:+.3f}, {z:+.1f} combined seed std)"
                   + (_paired_clause(row, base) if paired else "")
                   + (f"; its best LR {row['best_lr']:g} is at the EDGE of its grid" if row.get("edge") else ""))
    return out


def _finite_lrs(row: dict[str, Any]) -> list[tuple[str, tuple[float, float]]]:
    return [(lr, (m, sd)) for lr, (m, sd) in row["by_lr"].items() if m is not None and math.isfinite(m)]


def study_report(study: dict[str, Any], page: _Page) -> None:
    rows = study["rows"]
    metric = study["metric"]
    paired = bool(study.get("paired_by_seed"))
    lines = verdict(rows, higher_is_better=study.get("higher_is_better", True), paired=paired)
    page.section("verdict", "<ul>" + "".join(f"<li>{_e(l)}</li>" for l in lines) + "</ul>",
                 "Matches: within one combined seed standard deviation of FullFT's mean at each configuration's best LR.")
    lr_chart = page.chart({
        "kind": "line", "title": f"final {metric} vs LR (seed mean ± std)", "xlabel": "learning rate", "ylabel": metric,
        "xlog": True, "series": [{"name": r["configuration"], "color": COLORS[i % len(COLORS)],
                                  "points": [[float(lr), m] for lr, (m, _) in _finite_lrs(r)],
                                  "err": [s or 0.0 for _, (_, s) in _finite_lrs(r)]} for i, r in enumerate(rows)]})
    series = []
    for i, r in enumerate(rows):
        curves = [{int(k): v for k, v in c.items()} for c in r.get("curves") or []]
        steps = sorted(set().union(*[c.keys() for c in curves])) if curves else []
        if not steps:
            continue
        values = [[c[s] for c in curves if s in c] for s in steps]
        means = [statistics.fmean(v) for v in values]
        stds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
        series.append({"name": f"{r['configuration']} (lr {r['best_lr']:g})", "color": COLORS[i % len(COLORS)],
                       "points": [[s, m] for s, m in zip(steps, means)],
                       "band": [[s, m - d, m + d] for s, m, d in zip(steps, means, stds)]})
    curves = (page.chart({"kind": "line", "title": f"{metric} during training at each best LR (seed mean, ± std band)",
                          "xlabel": "step", "xint": True, "ylabel": metric, "series": series}) if series else
              "<p>This study folder has no study.json (rerun <code>python scripts/studies/parity.py METHOD --report-only</code> "
              "to write it): no curves.</p>")
    page.section(f"{metric} vs learning rate, and curves at each best LR", f'<div class="grid">{lr_chart}{curves}</div>',
                 _e(study.get("metric_label", "")))
    base = next((r for r in rows if r["configuration"] == "full"), None)
    table_rows = []
    for r in rows:
        diff = r["metric_mean"] - base["metric_mean"] if base else math.nan
        cells = [_e(r["configuration"]), f"{r['best_lr']:g}" + (" <b>EDGE</b>" if r.get("edge") else ""),
                 f"{r['metric_mean']:.3f} ± {r['metric_std']:.3f}", f"{diff:+.3f}"]
        if paired and base:
            mean, se, n = paired_difference(r, base)
            cells.append("" if r is base or n < 2 else f"{mean:+.3f} ± {se:.3f} ({n} seeds)")
        table_rows.append(cells + [f"{r['metric_before']:.3f}", _e(r["seeds"]), f"{r['peak_memory_mb']:.0f}",
                                   f"{r['trainable_parameters']:,}",
                                   ", ".join(f"{float(lr):g}: {m:.3f}" for lr, (m, _) in _finite_lrs(r))])
    notes = "".join(f"<p class=\"note\">{_e(n)}</p>" for n in study.get("notes", []))
    header = ["configuration", "best LR", f"{metric} (mean ± std)", "vs full",
              *(["vs full, paired by seed (± s.e.)"] if paired and base else []), "before", "seeds",
              "peak memory (MB)", "trainable params", "all LRs (seed mean)"]
    page.section("parity table", _table(header, table_rows) + notes)


# ---- the entry point ----------------------------------------------------------------------------

def build_report(paths: list[str | Path]) -> str:
    """The HTML page for run directories and/or study folders."""
    paths = [Path(p) for p in paths]
    studies = [p for p in paths if is_study(p)]
    runs = [load_run(p) for p in paths if not is_study(p)]
    title = "align report: " + ", ".join(p.name for p in paths)
    page = _Page(title)
    for path in studies:
        study = load_study(path)
        page.parts.append(f"<h1 class=\"study\">study {_e(study.get('name', path.name))}</h1>")
        study_report(study, page)
    if runs:
        run_report(runs, page)
    return page.render()


def write_report(paths: list[str | Path], out: str | Path | None = None) -> Path:
    """Write the report; the default name is report.html inside the single run or study folder
    given, else ./report.html."""
    if out is None:
        out = Path(paths[0]) / "report.html" if len(paths) == 1 else Path("report.html")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(build_report(paths))
    return out


def report_command(run_dir: str | Path) -> str:
    """What a trainer prints at the end of a run."""
    return f"align report {run_dir} -o {Path(run_dir) / 'report.html'}"
