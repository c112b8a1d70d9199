"""What a user on another machine should expect from a recipe: its results over seeds x CPU kernels.

    OMP_NUM_THREADS=1 python scripts/studies/spread.py recipes/ppo_lora.yaml              # 3 seeds x every kernel set
    OMP_NUM_THREADS=1 python scripts/studies/spread.py recipes/sft_lora.yaml --caps avx512 # 3 seeds, one kernel set

Each run is `align train RECIPE train.seed=S output_dir=...` in its own process, exactly as a user
runs it, with one torch thread and `ATEN_CPU_CAPABILITY` set (`default`, `avx2`, `avx512`, as far
as this CPU has them): other kernels round differently, a cheap stand-in for another machine. At
most `--jobs` runs at a time; a run whose summary.json exists is not run again. Prints, and writes
to `OUT/<recipe>.md` and `.json`, each run's eval before/after and wall time, then the mean ±
std (population) over all runs of every `eval_after` metric: the README's figures.

What it leaves out: LR or other sweeps (scripts/parity.py does those).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from base_robustness import CAPABILITY_ORDER, available_capabilities  # noqa: E402


def run_one(recipe: str, overrides: list[str], seed: int, cap: str, runs_dir: Path) -> dict:
    out = runs_dir / f"s{seed}-{cap}"
    if not (out / "summary.json").exists():
        if out.exists():
            import shutil

            shutil.rmtree(out)
        env = {**os.environ, "ATEN_CPU_CAPABILITY": cap, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled",
               "TOKENIZERS_PARALLELISM": "false"}
        cmd = [sys.executable, "-m", "align.cli", "train", recipe, *overrides, "train.threads=1",
               f"train.seed={seed}", f"output_dir={out}"]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        runs_dir.mkdir(parents=True, exist_ok=True)
        (runs_dir / f"{out.name}.log").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr[-20000:])
        if proc.returncode != 0:
            raise SystemExit(f"run {out.name} failed (exit {proc.returncode}); see {runs_dir / (out.name + '.log')}")
    summary = json.loads((out / "summary.json").read_text())
    return {"seed": seed, "capability": cap, "eval_before": summary.get("eval_before", {}),
            "eval_after": summary.get("eval_after", {}), "wall_seconds": summary.get("wall_time_s"),
            "trainable_parameters": summary.get("trainable_parameters"),
            "peak_memory_gib": (summary.get("peak_memory_bytes") or 0) / 2**30}


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.pstdev(values):.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*", help="dotted overrides for every run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--caps", nargs="+", default=None, help="kernel sets (default: all this CPU has)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--runs-dir", default=None, help="default: runs/spread/<recipe>")
    parser.add_argument("--out", default="results/spread")
    parser.add_argument("--metrics", nargs="+", default=None,
                        help="eval_after keys to report (default: all but duplicates, log-probs and no_stop_fraction)")
    args = parser.parse_args(argv)

    caps = args.caps or available_capabilities()
    if any(c not in CAPABILITY_ORDER for c in caps):
        parser.error(f"--caps must be among {CAPABILITY_ORDER}")
    stem = Path(args.recipe).stem + "".join(f"_{o.replace('=', '-').replace('/', '_')}" for o in args.overrides)
    runs_dir = Path(args.runs_dir or f"runs/spread/{stem}")
    jobs = [(s, c) for s in args.seeds for c in caps]
    print(f"{args.recipe}: {len(jobs)} runs ({len(args.seeds)} seeds x {caps}), {args.jobs} at a time", flush=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda job: run_one(args.recipe, args.overrides, *job, runs_dir), jobs))

    # gold_score_* equal accuracy_* on the arithmetic task; keep them where they differ (preference).
    # Log-prob and per-side reward columns are in summary.json; the table keeps what is judged.
    metrics = args.metrics or [m for m in sorted(rows[0]["eval_after"]) if m != "no_stop_fraction"
                               and "logps" not in m and not m.endswith(("/chosen", "/rejected")) and not (
        m.startswith("gold_score") and all(r["eval_after"][m] == r["eval_after"][m.replace("gold_score", "accuracy")] for r in rows))]
    lines = [f"| seed | kernels | {' | '.join(f'{m} before -> after' for m in metrics)} | wall s | peak GiB |",
             "|---|---|" + "---|" * len(metrics) + "---|---|"]
    for r in rows:
        cells = [(f"{r['eval_before'][m]:.3f}" if m in r["eval_before"] else "—") + f" -> {r['eval_after'][m]:.3f}"
                 for m in metrics]
        lines.append(f"| {r['seed']} | {r['capability']} | {' | '.join(cells)} | {r['wall_seconds'] or 0:.0f} | {r.get('peak_memory_gib', 0):.2f} |")
    summary = {m: mean_std([r["eval_after"][m] for r in rows]) for m in metrics}
    before = {m: mean_std([r["eval_before"][m] for r in rows if m in r["eval_before"]]) for m in metrics
              if all(m in r["eval_before"] for r in rows)}
    lines.append(f"| mean ± std | all | {' | '.join(f'{before.get(m, chr(8212))} -> {summary[m]}' for m in metrics)} | "
                 f"{statistics.mean(r['wall_seconds'] or 0 for r in rows):.0f} | "
                 f"{statistics.mean(r.get('peak_memory_gib', 0) for r in rows):.2f} |")
    cmd = f"OMP_NUM_THREADS=1 python scripts/studies/spread.py {args.recipe}" + "".join(f" {o}" for o in args.overrides)
    if args.caps:
        cmd += " --caps " + " ".join(args.caps)
    text = (f"Command: `{cmd}` ({len(jobs)} runs, 1 thread each, {args.jobs} at a time; "
            f"wall s: the run's own wall time; peak GiB: the run's peak_memory_bytes, CPU max RSS)\n\n" + "\n".join(lines) + "\n")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(text)
    (out / f"{stem}.json").write_text(json.dumps({"command": cmd, "runs": rows, "mean_std": summary}, indent=2))
    print(text)
    # Another process (or an earlier call) may have finished seeds this call was not given: the
    # table above leaves them out, so say which, and how to have one table of them all.
    others = sorted(d.name for d in runs_dir.glob("s*-*") if (d / "summary.json").exists() and d.name not in
                    {f"s{s}-{c}" for s, c in jobs})
    if others:
        print(f"note: {runs_dir} also holds finished runs this table leaves out: {' '.join(others)} "
              f"(rerun with every seed in --seeds to table them all; finished runs are reused)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
