"""PPO (with a critic) against GRPO (critic-free) on the built-in task: sampled accuracy at equal
numbers of completions and at equal training time, and what each holds in memory.

    OMP_NUM_THREADS=1 python scripts/studies/ppo_vs_grpo.py                 # 3 seeds x 2 methods, ~12 min
    OMP_NUM_THREADS=1 python scripts/studies/ppo_vs_grpo.py --seeds 0 --steps 10 --model scratch:test --out /tmp/x  # smoke

Both recipes as they were before issue 11's tuning (`recipes/ppo_lora.yaml` with a constant LR of
3e-4, `recipes/grpo_lora.yaml` with 16 x 8, no KL, constant LR: `scripts/studies/as_measured.py`; 128
completions per iteration each), run for the same number of iterations with an evaluation every 5 iterations on
the 256 held-out prompts, one process and one thread per run, one run at a time. Training time is
the sum of `time/iteration` (evaluation excluded). Writes `results/ppo_vs_grpo/table.md` and
`table.json`; run folders go to `runs/ppo_vs_grpo/` (a finished run is not run again).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RECIPES = {"ppo": "recipes/ppo_lora.yaml", "grpo": "recipes/grpo_lora.yaml"}
sys.path.insert(0, str(Path(__file__).resolve().parent))
from as_measured import GRPO_BEFORE_ISSUE11_TUNING, PPO_BEFORE_ISSUE11_TUNING  # noqa: E402  (this folder)

# each recipe as results/ppo_vs_grpo was measured with (both have been tuned since)
AS_MEASURED = {"ppo": PPO_BEFORE_ISSUE11_TUNING, "grpo": GRPO_BEFORE_ISSUE11_TUNING}


def launch(method: str, seed: int, steps: int, runs_dir: Path, extra: list[str]) -> Path:
    out = runs_dir / f"{method}-s{seed}"
    if (out / "summary.json").exists():
        return out
    cmd = [sys.executable, "-m", "align.cli", "train", RECIPES[method], f"train.steps={steps}", f"train.seed={seed}",
           "train.eval_every=5", "train.threads=1", "tracking.wandb=false", f"output_dir={out}", *AS_MEASURED[method], *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{out.name} failed:\n{proc.stderr[-3000:]}")
    print(f"  {out.name}: done", flush=True)
    return out


def curve(run_dir: Path) -> dict:
    """Eval points (iteration, completions, training seconds, sampled accuracy) and the run's memory."""
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    seconds, per_iteration, points = 0.0, {}, []
    for row in rows:
        if "time/iteration" in row:
            per_iteration[row["step"]] = row["time/iteration"]
    summary = json.loads((run_dir / "summary.json").read_text())
    completions_per_iteration = summary.get("rollout_batch_size") or summary["prompts_per_iteration"] * summary["group_size"]
    for row in rows:
        if "eval/accuracy_sampled" in row:
            step = row["step"]
            seconds = sum(t for s, t in per_iteration.items() if s <= step)
            points.append({"iteration": step, "completions": step * completions_per_iteration, "train_seconds": seconds,
                           "accuracy_sampled": row["eval/accuracy_sampled"], "accuracy_greedy": row["eval/accuracy_greedy"]})
    memory = summary.get("memory_bytes", {})
    return {"points": points, "state_bytes": memory.get("total"), "peak_bytes": summary.get("peak_memory_bytes")}


def at_or_before(points: list[dict], key: str, limit: float) -> dict:
    """The last evaluation with `key` <= limit (the state a user stopping there would have)."""
    return [p for p in points if p[key] <= limit + 1e-9][-1]


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=60, help="iterations of each run (128 completions each)")
    parser.add_argument("--model", default=None, help="override the recipes' model (e.g. scratch:test for a smoke run)")
    parser.add_argument("--runs-dir", default=str(REPO / "runs" / "ppo_vs_grpo"))
    parser.add_argument("--out", default=str(REPO / "results" / "ppo_vs_grpo"))
    args = parser.parse_args(argv)
    extra = [f"model={args.model}", "data.num_train=256", "eval.num_prompts=16"] if args.model else []
    runs_dir, out = Path(args.runs_dir), Path(args.out)
    curves = {m: [curve(launch(m, s, args.steps, runs_dir, extra)) for s in args.seeds] for m in RECIPES}

    half, full = args.steps // 2, args.steps
    # equal wall time: the training time PPO needed for `half` iterations (its slowest seed), given to both
    budget = max(at_or_before(c["points"], "iteration", half)["train_seconds"] for c in curves["ppo"])
    rows, table = [], {"budget_seconds": budget, "methods": {}}
    for method, runs in curves.items():
        entry = {
            f"sampled_at_{half}_iterations": [at_or_before(c["points"], "iteration", half)["accuracy_sampled"] for c in runs],
            f"sampled_at_{full}_iterations": [at_or_before(c["points"], "iteration", full)["accuracy_sampled"] for c in runs],
            f"greedy_at_{full}_iterations": [at_or_before(c["points"], "iteration", full)["accuracy_greedy"] for c in runs],
            "sampled_at_equal_time": [at_or_before(c["points"], "train_seconds", budget)["accuracy_sampled"] for c in runs],
            "iterations_in_equal_time": [at_or_before(c["points"], "train_seconds", budget)["iteration"] for c in runs],
            f"train_seconds_{full}_iterations": [at_or_before(c["points"], "iteration", full)["train_seconds"] for c in runs],
            "state_bytes": [c["state_bytes"] for c in runs],
            "peak_bytes": [c["peak_bytes"] for c in runs],
        }
        table["methods"][method] = entry
        rows.append(f"| {method} | {mean_std(entry[f'sampled_at_{half}_iterations'])} | {mean_std(entry[f'sampled_at_{full}_iterations'])} "
                    f"| {mean_std(entry[f'greedy_at_{full}_iterations'])} | {mean_std(entry['sampled_at_equal_time'])} "
                    f"({statistics.mean(entry['iterations_in_equal_time']):.0f} it.) | {statistics.mean(entry[f'train_seconds_{full}_iterations']):.0f} s "
                    f"| {statistics.mean(entry['state_bytes']) / 2**20:.2f} MiB | {statistics.mean(entry['peak_bytes']) / 2**20:.0f} MiB |")
    out.mkdir(parents=True, exist_ok=True)
    header = [
        "# PPO vs GRPO on the built-in task",
        "",
        f"`OMP_NUM_THREADS=1 python scripts/studies/ppo_vs_grpo.py{' --seeds ' + ' '.join(map(str, args.seeds)) if args.seeds != [0, 1, 2] else ''}`: "
        f"recipes/ppo_lora.yaml and recipes/grpo_lora.yaml as shipped, {args.steps} iterations of 128 completions, "
        f"seeds {args.seeds}, mean ± std over seeds. Equal time = the training seconds PPO needed for {half} iterations "
        f"({budget:.0f} s), given to both. State = weights, adapters, heads, gradients and optimizer state (`memory_bytes.total`); "
        "peak = the process's peak RSS.",
        "",
        f"| method | sampled acc. at {half} it. ({half * 128} completions) | at {full} it. ({full * 128}) | greedy at {full} it. "
        f"| sampled acc. at equal time | train time, {full} it. | state | peak |",
        "|---|---|---|---|---|---|---|---|",
    ]
    (out / "table.md").write_text("\n".join(header + rows) + "\n")
    (out / "table.json").write_text(json.dumps(table, indent=2) + "\n")
    print("\n".join(header + rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
