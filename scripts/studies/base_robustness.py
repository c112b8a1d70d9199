"""How robust is the built-in base's recipe? Build it over seeds x CPU kernel sets and compare.

Float rounding differs between CPUs, so a recipe that lands well on one machine can land badly on
another. torch's `ATEN_CPU_CAPABILITY` (`default`, `avx2`, `avx512`, as far as this CPU has them)
makes torch dispatch other kernels: a cheap stand-in for another machine. Each build runs in its
own process (1 torch thread, `--jobs` at a time) with `align.build_base.build_into`, the exact
code path of `align build-base`, with `train.seed` (batch order) set per build; then it is
evaluated by `align.build_base.evaluate_base` (greedy and sampled accuracy on 256 held-out
prompts, and the sampled accuracy over 4 x 256 samples that the band is checked on).

    OMP_NUM_THREADS=1 python scripts/studies/base_robustness.py                       # the shipped recipe
    OMP_NUM_THREADS=1 python scripts/studies/base_robustness.py --override optimizer.lr=0.003 --label lr3e-3

Writes `OUT/LABEL/builds.jsonl` (one line per build) and `OUT/LABEL/table.md` (small: they
may be committed), and prints the table; the built models and logs go to
`runs/base_robustness/LABEL/` (`--runs-dir`), where a finished build is not built again.
The last line is `band: PASS` or `band: FAIL (...)`: every build must have greedy accuracy
>= --min-greedy and a 4x256 sampled accuracy within +-`--sampled-band` of the median.

What it leaves out: other thread counts (1 and 2 threads give identical builds on this CPU) and
other model inits (the init is fixed by the recipe: `scratch:tiny-arith` is seeded with 0).
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

CAPABILITY_ORDER = ("default", "avx2", "avx512")


def available_capabilities() -> list[str]:
    """The kernel sets this CPU can run: every level up to the one torch picks by itself."""
    import torch

    best = torch.backends.cpu.get_cpu_capability().lower()
    levels = list(CAPABILITY_ORDER)
    return levels[: levels.index(best) + 1] if best in levels else ["default"]


def _worker(args: argparse.Namespace) -> None:
    import torch

    from align.build_base import build_into

    torch.set_num_threads(1)
    info = build_into(args.name, Path(args.dest), [*args.override, f"train.seed={args.seed}", "train.threads=1"])
    info["capability"] = torch.backends.cpu.get_cpu_capability().lower()
    info["seed"] = args.seed
    Path(args.dest, "STUDY.json").write_text(json.dumps(info, indent=2))


def _build_one(args: argparse.Namespace, runs: Path, seed: int, capability: str) -> dict:
    dest = runs / "models" / f"seed{seed}-{capability}"
    if (dest / "STUDY.json").exists() and not args.force:
        return json.loads((dest / "STUDY.json").read_text())
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    cmd = [sys.executable, __file__, "--worker", "--name", args.name, "--seed", str(seed), "--dest", str(dest)]
    cmd += [f"--override={o}" for o in args.override]
    log = runs / "logs" / f"seed{seed}-{capability}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        done = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"build seed {seed} / {capability} failed (exit {done.returncode}); see {log}")
    return json.loads((dest / "STUDY.json").read_text())


def band_verdict(rows: list[dict], min_greedy: float, sampled_band: float) -> tuple[bool, str, float]:
    sampled = [r["eval_arithmetic"]["accuracy_sampled_4x256"] for r in rows]
    median = statistics.median(sampled)
    problems = []
    for r in rows:
        q, tag = r["eval_arithmetic"], f"seed {r['seed']}/{r['capability']}"
        if q["accuracy_greedy"] < min_greedy:
            problems.append(f"{tag}: greedy {q['accuracy_greedy']:.3f} < {min_greedy}")
        if abs(q["accuracy_sampled_4x256"] - median) > sampled_band:
            problems.append(f"{tag}: sampled {q['accuracy_sampled_4x256']:.3f} outside {median:.3f} +- {sampled_band}")
    return not problems, "; ".join(problems), median


def table(rows: list[dict]) -> str:
    lines = [
        "| seed | kernels (ATEN_CPU_CAPABILITY) | greedy (256) | sampled (256) | sampled (4x256) | build s |",
        "|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["seed"], CAPABILITY_ORDER.index(r["capability"].lower()))):
        q = r["eval_arithmetic"]
        lines.append(
            f"| {r['seed']} | {r['capability']} | {q['accuracy_greedy']:.3f} | {q['accuracy_sampled']:.3f} "
            f"| {q['accuracy_sampled_4x256']:.3f} | {r['build_seconds']:.0f} |"
        )

    def stat(key):
        values = [r["eval_arithmetic"][key] for r in rows]
        return f"{statistics.mean(values):.3f} ± {statistics.pstdev(values):.3f} ({min(values):.3f}-{max(values):.3f})"

    lines.append(f"| all | mean ± std (min-max) | {stat('accuracy_greedy')} | {stat('accuracy_sampled')} | {stat('accuracy_sampled_4x256')} | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", default="builtin:tiny-arith")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--caps", nargs="+", default=None, help="kernel sets (default: all this CPU has)")
    parser.add_argument("--override", action="append", default=[], help="dotted override of the base recipe")
    parser.add_argument("--label", default="shipped", help="subfolder of --out for this recipe variant")
    parser.add_argument("--out", default="results/base_robustness")
    parser.add_argument("--runs-dir", default=None, help="models and logs (default runs/base_robustness/LABEL)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--min-greedy", type=float, default=0.85)
    parser.add_argument("--sampled-band", type=float, default=0.05)
    parser.add_argument("--force", action="store_true", help="rebuild builds already in OUT")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dest", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args)
        return 0

    caps = args.caps or available_capabilities()
    unknown = [c for c in caps if c not in CAPABILITY_ORDER]
    if unknown:
        parser.error(f"unknown --caps {unknown}; choose from {CAPABILITY_ORDER}")
    out = Path(args.out) / args.label
    out.mkdir(parents=True, exist_ok=True)
    runs = Path(args.runs_dir or f"runs/base_robustness/{args.label}")
    jobs = [(seed, cap) for seed in args.seeds for cap in caps]
    print(f"{len(jobs)} builds ({len(args.seeds)} seeds x {caps}), {args.jobs} at a time, overrides {args.override}", flush=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda job: _build_one(args, runs, *job), jobs))
    for r in rows:
        print(f"seed {r['seed']} {r['capability']}: {r['eval_arithmetic']}", flush=True)
    (out / "builds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ok, why, median = band_verdict(rows, args.min_greedy, args.sampled_band)
    text = table(rows)
    cmd = "OMP_NUM_THREADS=1 python scripts/studies/base_robustness.py" + "".join(f" --override {o}" for o in args.override)
    if args.label != "shipped":
        cmd += f" --label {args.label}"
    if args.seeds != [0, 1, 2]:
        cmd += " --seeds " + " ".join(map(str, args.seeds))
    if args.caps:
        cmd += " --caps " + " ".join(args.caps)
    (out / "table.md").write_text(
        f"Command: `{cmd}` ({len(jobs)} builds, {sum(r['build_seconds'] for r in rows):.0f} s of build time in all, "
        f"1 thread each, {args.jobs} at a time; build times vary with the machine's load)\n\n{text}\n\n"
        f"Band: greedy >= {args.min_greedy}, 4x256 sampled within ±{args.sampled_band} of the median "
        f"{median:.3f}: {'PASS' if ok else 'FAIL: ' + why}\n"
    )
    print(text)
    print("band: PASS" if ok else f"band: FAIL ({why})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
