"""Memory per process when several processes train on one base: under `distributed.strategy:
fsdp` each process holds a shard of the frozen base, under `ddp` a whole copy.

    OMP_NUM_THREADS=1 python scripts/benchmarks/bench_memory.py --world 2 --strategy fsdp      # the same (dispatches here)
    OMP_NUM_THREADS=1 python scripts/benchmarks/bench_memory_sharded.py --world 2 --strategy fsdp [--model llama-100m]

`--world` processes (torch.distributed.run, gloo on CPU, NCCL on GPUs) each build the same random
model (default: bench_memory.py's Qwen2.5-0.5B-shaped headline, 315 M parameters), give one
SharedBase the PPO roles (policy, reference, frozen reward, value; LoRA rank 8 on every linear
layer), shard the base as the trainers do (`align.distributed.shard_frozen_base`, adapters and
heads whole) under fsdp, and run two PPO-shaped steps (`bench_memory.ppo_step`, gradients averaged
over processes as the trainers do) on a batch of their own (2 x 64 tokens: the batch does not
change what the weights take). Then ONE process does the same unsharded: the single-process
baseline. Per process it prints what `align.memory.memory_report` counts (base weights: this
process's shard of a sharded tensor; adapters; heads; gradients; optimizer state), the peak (RSS
on CPU, `torch.cuda.max_memory_allocated` on a GPU) and the second step's seconds.

The LAST line is `base bytes per process <strategy>/single: X`: the largest process's base bytes
over the single process's. Two processes under fsdp give about 0.5 (tensors whose first dimension
is odd are padded to split evenly); ddp gives 1.0.

Adapters and heads stay whole on every process (the table shows what they cost: under 1% of the
base at rank 8); sharding them would save that much per process at the price of gathering them in
every forward and of sharded checkpoints, so the toolkit keeps them whole.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_memory import HEADLINE, LORA, build_model, mb, ppo_step, random_batch  # noqa: E402

BATCH = (2, 64, 16)  # sequences, tokens, response tokens per process


def worker(out: Path, model_name: str, strategy: str) -> None:
    """One process of a run (under torch.distributed.run): build, shard, two steps, report."""
    import torch
    import torch.distributed as dist

    from align.distributed import shard_frozen_base
    from align.memory import memory_report, peak_bytes, reset_peak
    from align.shared_base import SharedBase

    torch.set_num_threads(1)
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    base = SharedBase(build_model(model_name).to(device), mode="lora", lora=LORA)
    base.add_policy()
    base.add_reference()
    base.add_reward(trainable=False)
    base.add_value()
    if strategy == "fsdp" and world > 1:
        shard_frozen_base(base.model, base.all_adapter_parameters())
    params = base.trainable_parameters("policy") + base.trainable_parameters("value")
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    vocab = base.model.config.vocab_size
    batch = tuple(t.to(device) for t in random_batch(vocab, *BATCH, seed=rank))
    reset_peak(device)
    seconds = 0.0
    for _ in range(2):
        t0 = time.process_time() if not cuda else time.time()
        original_step = optimizer.step

        def averaged_step():  # the trainers' all_reduce_gradients, then the step
            for p in params:
                if world > 1:
                    dist.all_reduce(p.grad)
                    p.grad.div_(world)
            original_step()

        optimizer.step = averaged_step
        ppo_step(base, optimizer, batch)
        optimizer.step = original_step
        if cuda:
            torch.cuda.synchronize()
        seconds = (time.process_time() if not cuda else time.time()) - t0
    report = memory_report(base, optimizer)
    report.update(peak=peak_bytes(device), now=current_bytes(device), step_s=seconds, rank=rank)
    (out / f"rank{rank}.json").write_text(json.dumps(report))
    dist.destroy_process_group()


def current_bytes(device) -> int:
    """What the process holds now, after the steps: CUDA's allocated bytes, or on CPU the resident
    set size (VmRSS; Linux), which unlike the peak does not include the whole model every process
    builds before sharding it."""
    import torch

    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world: int, model_name: str, strategy: str, out: Path) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world), "--master_port", str(free_port()),
           str(Path(__file__).resolve()), "--worker", str(out), "--model", model_name, "--strategy", strategy]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"{world}-process {strategy} run failed:\n{proc.stderr[-3000:]}")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--strategy", choices=["ddp", "fsdp"], default="fsdp")
    parser.add_argument("--model", default=HEADLINE, help="a bench_memory.py model name")
    parser.add_argument("--out", default=None, help="folder for the per-process JSON (default: a temporary one)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(Path(args.worker), args.model, args.strategy)

    import tempfile

    out = Path(args.out or tempfile.mkdtemp(prefix="bench_memory_sharded-"))
    print(f"{args.model}: PPO roles on one base, LoRA r{LORA['rank']}, {BATCH[0]} x {BATCH[1]} tokens per process (MiB); "
          f"{args.world} processes under {args.strategy}, then 1 process", flush=True)
    runs = {"single": launch(1, args.model, args.strategy, out / "single"),
            args.strategy: launch(args.world, args.model, args.strategy, out / args.strategy)}
    print("| run | process | base weights | adapters | heads | gradients | optimizer | accounted | held after steps | peak | step s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, reports in runs.items():
        for r in reports:
            print(f"| {name} | {r['rank']} | {mb(r['base_weights'])} | {mb(r['adapter_weights'])} | {mb(r['heads'])} | "
                  f"{mb(r['gradients'])} | {mb(r['optimizer_state'])} | {mb(r['total'])} | {mb(r['now'])} | {mb(r['peak'])} | "
                  f"{r['step_s']:.2f} |")
    single, sharded = runs["single"][0], runs[args.strategy]
    held_ratio = max(r["now"] for r in sharded) / max(single["now"], 1)
    peak_ratio = max(r["peak"] for r in sharded) / single["peak"]
    print(f"held after the steps per process {args.strategy}/single: {held_ratio:.2f} (libraries, buffers and the "
          f"gathered embeddings included); peak: {peak_ratio:.2f} (every process builds the whole model before sharding it)")
    ratio = max(r["base_weights"] for r in sharded) / single["base_weights"]
    print(f"base bytes per process {args.strategy}/single: {ratio:.2f}")


if __name__ == "__main__":
    main()
