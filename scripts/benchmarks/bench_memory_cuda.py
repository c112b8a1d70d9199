"""bench_memory.py's steps on a CUDA GPU: peak allocated memory of LoRA on one shared base against
full copies, with and without activation checkpointing, with and without log-prob chunking.

    python scripts/benchmarks/bench_memory_cuda.py                      # the Qwen2.5-0.5B-shaped headline, float32 and bf16
    python scripts/benchmarks/bench_memory_cuda.py --device cpu --model llama-6m --dtypes float32   # checks this script without a GPU

Same model, batch (4 x 256 tokens, 128 response), LoRA settings and PPO / DPO steps as
scripts/benchmarks/bench_memory.py (imported from it). Each case runs in its own process; the figure is
`torch.cuda.max_memory_allocated` over two steps, reset once the roles are built, so it counts the
weights and adapters already allocated plus gradients, Adam state and activations (no library
baseline, unlike a CPU RSS); and the second step's wall time. bf16 rows put the frozen base (and full mode's copies) in bfloat16; adapters,
heads and Adam state stay float32, as `dtype: bfloat16` does in the trainers.
The last line is `cuda peak memory ratio lora/full: X` for the PPO step, float32, recipe defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_memory import DEFAULT_CHUNK_MIB, HEADLINE, LORA, SHAPES, build_model, mb, roles_and_step  # noqa: E402


def case(spec: dict) -> dict:
    import torch

    from align.memory import peak_bytes, reset_peak

    device = torch.device(spec["device"])
    model = build_model(spec["model"]).to(getattr(torch, spec["dtype"])).to(device)
    base, optimizer, step, batch = roles_and_step(model, spec)
    reset_peak(device)
    seconds = 0.0
    for _ in range(2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step(base, optimizer, batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    return {**spec, "peak_bytes": peak_bytes(device), "step_s": seconds}


def spawn(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--case", json.dumps(spec)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parents[1]), os.environ.get("PYTHONPATH", "")])})
    if proc.returncode != 0:
        raise SystemExit(f"case {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default=HEADLINE)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(case(json.loads(args.case))), flush=True)
        return
    rows = []
    for dtype in args.dtypes:
        for step in ("ppo", "dpo"):
            for checkpointing in (False, True):
                for chunk in ((DEFAULT_CHUNK_MIB, 0.0) if (step == "ppo" and not checkpointing) else (DEFAULT_CHUNK_MIB,)):
                    pair = [spawn({"mode": mode, "model": args.model, "step": step, "checkpointing": checkpointing,
                                   "chunk_mib": chunk, "dtype": dtype, "device": args.device}) for mode in ("lora", "full")]
                    rows.append(pair)
                    print(f"  {dtype} {step} ckpt={checkpointing} chunk={chunk:g}: lora {mb(pair[0]['peak_bytes'])} MiB, "
                          f"full {mb(pair[1]['peak_bytes'])} MiB", file=sys.stderr, flush=True)
    shape = SHAPES[args.model]
    print(f"{args.model} on {args.device}: batch {shape[0]} x {shape[1]} tokens ({shape[2]} response), LoRA r{LORA['rank']}; "
          "peak allocated over two steps, weights included (MiB); step: the second, wall seconds")
    print("| dtype | step | checkpointing | log-prob chunks | LoRA peak | LoRA step s | full peak | full step s | ratio lora/full |")
    print("|---|---|---|---|---|---|---|---|---|")
    for lora, full in rows:
        chunks = "off" if lora["chunk_mib"] == 0 else f"{lora['chunk_mib']:g} MiB"
        print(f"| {lora['dtype']} | {lora['step']} | {'on' if lora['checkpointing'] else 'off'} | "
              f"{chunks} | {mb(lora['peak_bytes'])} | "
              f"{lora['step_s']:.3f} | {mb(full['peak_bytes'])} | {full['step_s']:.3f} | {lora['peak_bytes'] / full['peak_bytes']:.3f} |")
    headline = rows[0]
    print(f"cuda peak memory ratio lora/full: {headline[0]['peak_bytes'] / headline[1]['peak_bytes']:.2f}")


if __name__ == "__main__":
    main()
