"""The GPU check: every trainer for a few steps in bf16 on a Qwen2.5-0.5B-shaped model, with one
process and, on a machine with several GPUs, with all of them under ddp and under fsdp; one table
of CUDA peak memory, memory by role and step time. Run it whenever a GPU is available:

    bash scripts/benchmarks/gpu_check.sh                 # or: python scripts/benchmarks/gpu_check.py [--steps 4] [--out gpu_check]

No network: the model is a random Qwen2 with Qwen2.5-0.5B's shapes (24 layers, hidden 896,
vocabulary 151,936, tied embeddings; 494 M parameters) saved once under OUT/model with the
built-in tokenizer, so the token ids are those of the built-in arithmetic task (accuracy means
nothing on random weights: evaluation is off; this checks that the CUDA path runs and what it
costs). Each (trainer, processes, strategy) is one `align train` (or `accelerate launch` with
`--num_processes` = the GPUs) of the LoRA recipe with `dtype=bfloat16`, `train.steps=--steps`
and small batches, in its own process; the table reads each run's summary.json:
    peak GiB   torch.cuda.max_memory_allocated of process 0 over the run
    s/step     wall time of the run's steps (the run's wall time minus its setup, over the steps)
    base, policy, reference, value, reward, grads, optim: memory by role (MiB, process 0; under
               fsdp, process 0's shard of the base)
Runs that fail are listed with the last lines of their error; the script exits 1 if any did.
Takes about 3-5 minutes on one H100/H200 (one process; ddp and fsdp rows need 2+ GPUs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
QWEN_05B_SHAPE = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                      num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=2048,
                      tie_word_embeddings=True, rope_theta=1000000.0)
# method -> (recipe, overrides that keep each step a few seconds on a GPU)
TRAINERS = {
    "sft": ("sft_lora.yaml", ["train.batch_size=16", "data.num_train=256", "data.num_eval=16"]),
    "reward": ("rm_lora.yaml", ["train.batch_size=16", "data.num_train=256", "data.num_eval=16"]),
    "dpo": ("dpo_lora.yaml", ["train.batch_size=16", "data.num_train=256", "data.num_eval=16"]),
    "ppo": ("ppo_lora.yaml", ["ppo.rollout_batch_size=64", "ppo.minibatch_size=16", "rollout.max_new_tokens=16",
                              "data.num_train=256"]),
    "grpo": ("grpo_lora.yaml", ["grpo.prompts_per_iteration=8", "grpo.group_size=8", "grpo.minibatch_size=32",
                                "rollout.max_new_tokens=16", "data.num_train=256"]),
}
ROLES = ["base", "policy", "reference", "value", "reward", "gradients", "optimizer_state"]


TINY_SHAPE = dict(QWEN_05B_SHAPE, vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2)


def build_model(out: Path, shape: dict) -> Path:
    """A random bf16 Qwen2 of `shape` with the built-in tokenizer, saved once."""
    path = out / ("model" if shape is QWEN_05B_SHAPE else "model-tiny")
    if (path / "config.json").exists():
        return path
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from align.tasks.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**ids, **shape)).to(torch.bfloat16)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def run(method: str, processes: int, strategy: str, model: Path, steps: int, out: Path) -> dict:
    recipe, overrides = TRAINERS[method]
    run_dir = out / f"{method}-{processes}-{strategy}"
    args = [f"model={model}", "dtype=bfloat16", f"train.steps={steps}", "train.log_every=1", "train.eval_every=0",
            "train.threads=0", "eval.enabled=false", "tracking.wandb=false", f"distributed.strategy={strategy}",
            *overrides, f"output_dir={run_dir}"]
    launch = [sys.executable, "-m", "align.cli"] if processes == 1 else [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
        "--mixed_precision", "no", "-m", "align.cli"]
    t0 = time.time()
    proc = subprocess.run([*launch, "train", str(REPO / "recipes" / recipe), *args], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)})
    result = {"method": method, "processes": processes, "strategy": strategy, "seconds": time.time() - t0}
    if proc.returncode != 0:
        return {**result, "error": (proc.stderr or proc.stdout)[-1500:]}
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    step_times = [r["time/iteration"] for r in rows if "time/iteration" in r]
    # RL trainers log each iteration's time; the others: wall time over steps (setup included, an upper bound)
    per_step = sum(step_times[1:]) / max(len(step_times) - 1, 1) if len(step_times) > 1 else summary["wall_time_s"] / steps
    by_role = summary.get("memory_by_role") or {}
    if not by_role and "memory_bytes" in summary:  # reward: the categories of memory_report
        m = summary["memory_bytes"]
        by_role = {"base": m.get("base_weights", 0), "reward": m.get("adapter_weights", 0) + m.get("heads", 0),
                   "gradients": m.get("gradients", 0), "optimizer_state": m.get("optimizer_state", 0)}
    return {**result, "peak": summary["peak_memory_bytes"], "peak_kind": summary["peak_memory_kind"],
            "s_per_step": per_step, "by_role": by_role}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", default="gpu_check")
    parser.add_argument("--methods", nargs="+", default=list(TRAINERS))
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model, CPU allowed: checks this script itself")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available() and not args.tiny:
        print("no CUDA GPU here: the GPU check needs one (CPU runs are what the test suite covers)")
        return 2
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 1
    out = (REPO / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))
    model = build_model(out, TINY_SHAPE if args.tiny else QWEN_05B_SHAPE)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    print(f"{device} x {gpus}; torch {torch.__version__}; model {model} (bf16)", flush=True)
    layouts = [(1, "ddp")] + ([(gpus, "ddp"), (gpus, "fsdp")] if gpus > 1 else [])
    if gpus == 1:
        print("one GPU: the ddp and fsdp rows need 2 or more (NCCL puts one process on each GPU)", flush=True)
    results = []
    for method in args.methods:
        for processes, strategy in layouts:
            results.append(run(method, processes, strategy, model, args.steps, out))
            r = results[-1]
            print(f"  {method} {processes}x{strategy}: {'FAILED' if 'error' in r else 'ok'} in {r['seconds']:.0f} s", flush=True)
    mib = lambda n: f"{n / 2**20:,.1f}"  # noqa: E731
    print("\n| trainer | processes | peak GiB | s/step | " + " | ".join(ROLES) + " |")
    print("|---|---|---|---|" + "---|" * len(ROLES))
    for r in results:
        if "error" in r:
            print(f"| {r['method']} | {r['processes']} {r['strategy']} | FAILED | | " + " | " * (len(ROLES) - 1) + " |")
            continue
        roles = " | ".join(mib(r["by_role"][k]) if k in r["by_role"] else "-" for k in ROLES)
        print(f"| {r['method']} | {r['processes']} {r['strategy']} | {r['peak'] / 2**30:.2f} | {r['s_per_step']:.2f} | {roles} |")
    (out / "gpu_check.json").write_text(json.dumps(results, indent=1))
    failed = [r for r in results if "error" in r]
    for r in failed:
        print(f"\n{r['method']} {r['processes']}x{r['strategy']} failed:\n{r['error']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
