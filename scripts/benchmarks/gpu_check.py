"""The GPU check: every trainer for a few steps in bf16 on a Qwen2.5-0.5B-shaped model, with one
process and, on a machine with several GPUs, with all of them under ddp and under fsdp; PPO and
GRPO once more with `rollout.engine=vllm` and once with the hf engine's per-row multinomial sampler
(`rollout.sampler=multinomial`, the "hf-multinomial" rows; the hf rows sample with inverse_cdf,
`auto`'s choice on CUDA); one table of CUDA peak memory, memory by role and step time; the
samplers alone (`bench_sampler.py --device cuda`); and, with `--7b`, PPO with all four roles on a
random Qwen2.5-7B-shaped base. Run it whenever a GPU is available:

    bash scripts/benchmarks/gpu_check.sh                 # or: python scripts/benchmarks/gpu_check.py [--steps 4] [--out gpu_check]
    bash scripts/benchmarks/gpu_check.sh --7b            # adds the 7B case (about 15 GiB of GPU memory for its base)
    python scripts/benchmarks/gpu_check.py --tiny --7b   # CPU allowed: 2-layer shapes, checks this script itself

No network: the model is a random Qwen2 with Qwen2.5-0.5B's shapes (24 layers, hidden 896,
vocabulary 151,936, tied embeddings; 494 M parameters) saved once under OUT/model with the
built-in tokenizer, so the token ids are those of the built-in arithmetic task (accuracy means
nothing on random weights: evaluation is off; this checks that the CUDA path runs and what it
costs). Each (trainer, engine, processes, strategy) is one `align train` (or `accelerate launch`
with `--num_processes` = the GPUs) of the LoRA recipe with `dtype=bfloat16`, `train.steps=--steps`
and small batches, in its own process; the table reads each run's summary.json:
    peak GiB   torch.cuda.max_memory_allocated of process 0 over the run (with the vllm engine it
               includes the engine's own copy of the base and the KV cache it reserves up front,
               both allocated through torch in the training process)
    s/step     wall time of the run's steps (RL: the mean logged iteration time after the first;
               the others: the run's wall time over the steps, setup included, an upper bound)
    base, policy, reference, value, reward, grads, optim: memory by role (MiB, process 0; under
               fsdp, process 0's shard of the base)
The vllm rows (PPO and GRPO, one process: the engine lives in the training process, on its GPU)
need the `vllm` extra (docs/vllm.md); where `import vllm` fails they are skipped with one line.

`--7b`: PPO with all four roles (policy adapter; reference = the base with the adapter off, so
`rollout.kl_coef` 0.05 is paid; a learned reward role, the adapter + head of a 1-step reward-model
run on the same base; a critic adapter started from it) on a random base with Qwen2.5-7B's config
(28 layers, hidden 3584, intermediate 18944, 28 heads, 4 KV heads, vocabulary 152,064, untied
embeddings), bf16, one GPU, short sequences, activation checkpointing on. Its base is never
written to disk: OUT/model-7b holds config.json, the tokenizer and a RANDOM_INIT.json marker, and
each run goes through this script's `--random-init-child` entry, which makes transformers'
`AutoModelForCausalLM.from_pretrained` build a folder with that marker from its config, directly on
the GPU, in the recipe's dtype (the trainers' own loading path otherwise). It prints the measured
peak against 24 GiB and, beside it, what full mode (`mode: full`, every role its own copy) would
hold, computed from the parameter count, not run.

Runs that fail are listed with the last lines of their error; the script exits 1 if any did.
Takes about 3-5 minutes on one H100/H200 without `--7b` (one process; ddp and fsdp rows need 2+ GPUs).
"""

from __future__ import annotations

import argparse
import importlib.util
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
# Qwen2.5-7B's config.json (max_position_embeddings cut to 2048: only the rotary cache depends on it)
QWEN_7B_SHAPE = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                     num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=2048,
                     tie_word_embeddings=False, rope_theta=1000000.0, rms_norm_eps=1e-6)
# head_dim 32: the smallest vLLM's CPU attention takes (its get_supported_head_sizes), for the --tiny vllm rows
TINY_SHAPE = dict(QWEN_05B_SHAPE, vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1)
TINY_7B_SHAPE = dict(TINY_SHAPE, tie_word_embeddings=False)  # --tiny --7b: the 7B case's plumbing, 2 layers
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
# The methods that sample, timed with both engines. vLLM may take this fraction of the GPU for its
# copy of the base (0.94 GiB here) and its KV cache (64 sequences of ~40 tokens need a few MiB):
# about 12 GB of an 80 GB card, 3.6 GB of a 24 GB one, leaving the trainer the rest.
ENGINE_METHODS = ("ppo", "grpo")
VLLM_GPU_MEMORY_UTILIZATION = 0.15
# (--tiny on vLLM's CPU build takes rollout.vllm_kv_cache_gib's default, 1 GiB: that build reads
# VLLM_CPU_KVCACHE_SPACE as a whole number of GiB, so a fraction fails at engine start.)
VLLM_OVERRIDES = ["rollout.engine=vllm", f"rollout.vllm_gpu_memory_utilization={VLLM_GPU_MEMORY_UTILIZATION}"]
# The hf engine samples with rollout.sampler=auto, inverse_cdf on CUDA; the "hf-multinomial" rows
# (one process) time the per-row multinomial sampler the hf engine had before, beside it.
ENGINE_OVERRIDES = {"hf-multinomial": ["rollout.sampler=multinomial"], "vllm": VLLM_OVERRIDES}
# The 7B case: a 1-step reward model on the base (its adapter + head become the learned reward),
# then PPO with all four roles; short sequences, small batches, checkpointing on.
SEVEN_B_REWARD = ("rm_lora.yaml", ["train.batch_size=8", "data.num_train=64", "data.num_eval=16", "data.max_length=48",
                                   "train.activation_checkpointing=true"])
SEVEN_B_PPO = ("ppo_lora_rm.yaml", ["ppo.rollout_batch_size=16", "ppo.minibatch_size=4", "ppo.ppo_epochs=1",
                                    "rollout.max_new_tokens=16", "rollout.kl_coef=0.05", "ppo.value_init_from_reward=true",
                                    "data.num_train=64", "train.activation_checkpointing=true"])
ROLES = ["base", "policy", "reference", "value", "reward", "gradients", "optimizer_state"]
RANDOM_INIT = "RANDOM_INIT.json"  # a model folder with this file holds no weights: built from its config on load
CHILD_FLAG = "--random-init-child"
GIB = 2**30


def build_model(out: Path, shape: dict, name: str) -> Path:
    """A random bf16 Qwen2 of `shape` with the built-in tokenizer, saved once as OUT/name."""
    path = out / name
    if (path / "config.json").exists():
        return path
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer, ids = builtin_tokenizer()
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**ids, **shape)).to(torch.bfloat16)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def builtin_tokenizer():
    from align.tasks.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    return tokenizer, dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                           pad_token_id=tokenizer.pad_token_id)


def write_random_init_model(out: Path, shape: dict, name: str) -> Path:
    """OUT/name with config.json, the built-in tokenizer and the RANDOM_INIT marker: no weights."""
    from transformers import Qwen2Config

    path = out / name
    tokenizer, ids = builtin_tokenizer()
    Qwen2Config(**ids, **shape, dtype="bfloat16").save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / RANDOM_INIT).write_text(json.dumps({"seed": 0, "why": "gpu_check.py --7b: built from config.json on load"}))
    return path


def random_init_child(argv: list[str]) -> int:
    """`align` with one change: a model folder holding RANDOM_INIT.json is built from its config
    (random weights, seed 0) on the GPU (CPU without one) in the requested dtype, not read."""
    import torch
    import transformers

    original = transformers.AutoModelForCausalLM.from_pretrained.__func__

    def from_pretrained(cls, path, *args, **kwargs):
        marker = Path(str(path)) / RANDOM_INIT
        if not marker.is_file():
            return original(cls, path, *args, **kwargs)
        config = transformers.AutoConfig.from_pretrained(path)
        torch.manual_seed(json.loads(marker.read_text())["seed"])
        dtype = kwargs.get("dtype", kwargs.get("torch_dtype", torch.float32))
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            try:
                return cls.from_config(config, dtype=dtype)
            except TypeError:  # transformers before 4.56 names it torch_dtype
                return cls.from_config(config, torch_dtype=dtype)

    transformers.AutoModelForCausalLM.from_pretrained = classmethod(from_pretrained)
    sys.path.insert(0, str(REPO))
    from align.cli import main as align_main

    return align_main(argv)


def run(name: str, recipe: str, overrides: list[str], processes: int, strategy: str, model: Path, steps: int,
        out: Path, engine: str = "hf", random_init: bool = False) -> dict:
    run_dir = out / f"{name}-{engine}-{processes}-{strategy}"
    args = [f"model={model}", "dtype=bfloat16", f"train.steps={steps}", "train.log_every=1", "train.eval_every=0",
            "train.threads=0", "eval.enabled=false", "tracking.wandb=false", f"distributed.strategy={strategy}",
            *overrides, f"output_dir={run_dir}"]
    if random_init:
        launch = [sys.executable, str(Path(__file__).resolve()), CHILD_FLAG]
    elif processes == 1:
        launch = [sys.executable, "-m", "align.cli"]
    else:
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                  "--mixed_precision", "no", "-m", "align.cli"]
    t0 = time.time()
    proc = subprocess.run([*launch, "train", str(REPO / "recipes" / recipe), *args], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)})
    result = {"method": name, "engine": engine, "processes": processes, "strategy": strategy,
              "seconds": time.time() - t0, "run_dir": str(run_dir)}
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


def vllm_importable() -> bool:
    return importlib.util.find_spec("vllm") is not None


def print_table(results: list[dict]) -> None:
    mib = lambda n: f"{n / 2**20:,.1f}"  # noqa: E731
    print("\n| trainer | engine | processes | peak GiB | s/step | " + " | ".join(ROLES) + " |")
    print("|---|---|---|---|---|" + "---|" * len(ROLES))
    for r in results:
        head = f"| {r['method']} | {r['engine']} | {r['processes']} {r['strategy']} |"
        if "error" in r:
            print(f"{head} FAILED | | " + " | " * (len(ROLES) - 1) + " |")
            continue
        roles = " | ".join(mib(r["by_role"][k]) if k in r["by_role"] else "-" for k in ROLES)
        print(f"{head} {r['peak'] / GIB:.2f} | {r['s_per_step']:.2f} | {roles} |")


def parameter_counts(shape: dict) -> tuple[int, int]:
    """(all parameters, LM-head parameters) of a Qwen2 of `shape`, counted on the meta device."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    with torch.device("meta"):
        model = Qwen2ForCausalLM(Qwen2Config(**shape))
    lm_head = 0 if shape["tie_word_embeddings"] else model.lm_head.weight.numel()
    return sum(p.numel() for p in model.parameters()), lm_head


def full_mode_arithmetic(total: int, lm_head: int, bytes_per: int = 2) -> tuple[list[tuple[str, str, int]], int]:
    """What `mode: full` PPO with a learned reward and kl_coef > 0 holds before activations, from
    align/shared_base.py: the loaded base is the frozen reference; the policy is a trained deep copy
    (weights, gradients and AdamW's two moments, all in the model's dtype: torch's AdamW keeps its
    state in the parameter's dtype and the trainers keep no float32 master copy); the reward is a
    frozen copy; the critic a trained copy whose untied LM head is frozen (a last-token head never
    reads it). Heads (hidden + 1 floats each) are left out."""
    n, t = total, total - lm_head
    items = [("reference: the loaded base, frozen", "N x 2", n * bytes_per),
             ("policy: a copy, weights + grads + AdamW m and v", "N x (2 + 2 + 2 + 2)", n * 4 * bytes_per),
             ("reward: a frozen copy", "N x 2", n * bytes_per),
             ("value: a copy, LM head frozen: weights + (N - lm_head) x (grads + m + v)",
              "N x 2 + (N - lm_head) x 6", n * bytes_per + t * 3 * bytes_per)]
    return items, sum(b for _, _, b in items)


def seven_b_case(out: Path, tiny: bool, steps: int) -> list[dict]:
    """The 7B case (module docstring): a 1-step reward model, then 4-role PPO; prints the peak
    against 24 GiB and the full-copy arithmetic. Returns both runs' results."""
    shape = TINY_7B_SHAPE if tiny else QWEN_7B_SHAPE
    model = write_random_init_model(out, shape, "model-7b-tiny" if tiny else "model-7b")
    total, lm_head = parameter_counts(shape)
    print(f"\n7B case: random Qwen2 {'(tiny shapes: --tiny) ' if tiny else ''}with {total:,} parameters "
          f"(LM head {lm_head:,}, untied), bf16, built from {model / 'config.json'} on load (no weights on disk)", flush=True)
    recipe, overrides = SEVEN_B_REWARD
    reward = run("7b-reward", recipe, overrides, 1, "ddp", model, 1, out, random_init=True)
    print(f"  reward model (1 step): {'FAILED' if 'error' in reward else 'ok'} in {reward['seconds']:.0f} s", flush=True)
    if "error" in reward:
        return [reward]
    recipe, overrides = SEVEN_B_PPO
    ppo = run("7b-ppo-4-roles", recipe, [*overrides, f"rollout.reward_model={reward['run_dir']}"], 1, "ddp", model,
              steps, out, random_init=True)
    print(f"  ppo, 4 roles: {'FAILED' if 'error' in ppo else 'ok'} in {ppo['seconds']:.0f} s", flush=True)
    print_table([reward, ppo])
    items, full_bytes = full_mode_arithmetic(total, lm_head)
    if "error" not in ppo:
        if ppo["peak_kind"] == "cuda_max_allocated":
            verdict = "within" if ppo["peak"] <= 24 * GIB else "ABOVE"
            print(f"\n7B PPO, LoRA, one base for 4 roles, measured CUDA peak (torch.cuda.max_memory_allocated): "
                  f"{ppo['peak'] / GIB:.2f} GiB, {verdict} 24 GiB")
        else:
            print(f"\n7B PPO, LoRA, one base for 4 roles, measured peak ({ppo['peak_kind']}, no GPU: not compared "
                  f"with 24 GiB): {ppo['peak'] / GIB:.2f} GiB")
    print_full_mode_arithmetic(total, lm_head)
    return [reward, ppo]


def print_full_mode_arithmetic(total: int, lm_head: int) -> None:
    items, full_bytes = full_mode_arithmetic(total, lm_head)
    print(f"7B PPO, mode full, computed from N = {total:,} parameters (lm_head = {lm_head:,}), bf16 (2 bytes), "
          "before activations (not run):")
    for what, formula, nbytes in items:
        print(f"  {what:<76} {formula:<28} {nbytes / GIB:8.2f} GiB")
    print(f"  {'total = N x 20 - lm_head x 6':<105} {full_bytes / GIB:8.2f} GiB ({full_bytes / (24 * GIB):.1f} x 24 GiB)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [CHILD_FLAG]:
        return random_init_child(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", default="gpu_check")
    parser.add_argument("--methods", nargs="*", default=list(TRAINERS), help="trainers of the table (none: only --7b)")
    parser.add_argument("--engines", nargs="+", default=["hf", "hf-multinomial", "vllm"], choices=["hf", "hf-multinomial", "vllm"],
                        help="rollout engines for ppo and grpo (hf-multinomial: hf with rollout.sampler=multinomial; "
                             "hf-multinomial and vllm rows: one process)")
    parser.add_argument("--7b", dest="seven_b", action="store_true",
                        help="add PPO with all four roles on a random Qwen2.5-7B-shaped base (one GPU)")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model, CPU allowed: checks this script itself")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available() and not args.tiny:
        print("no CUDA GPU here: the GPU check needs one (CPU runs are what the test suite covers)")
        if args.seven_b:  # the computed half of the 7B case needs no GPU
            print_full_mode_arithmetic(*parameter_counts(QWEN_7B_SHAPE))
        return 2
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 1
    out = (REPO / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))
    model = build_model(out, TINY_SHAPE if args.tiny else QWEN_05B_SHAPE, "model-tiny" if args.tiny else "model")
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    print(f"{device} x {gpus}; torch {torch.__version__}; model {model} (bf16)", flush=True)
    layouts = [(1, "ddp")] + ([(gpus, "ddp"), (gpus, "fsdp")] if gpus > 1 else [])
    if gpus == 1:
        print("one GPU: the ddp and fsdp rows need 2 or more (NCCL puts one process on each GPU)", flush=True)
    engines = list(args.engines)
    if "vllm" in engines and any(m in ENGINE_METHODS for m in args.methods) and not vllm_importable():
        print("vllm is not importable here: the rollout.engine=vllm rows (ppo, grpo) are skipped "
              "(pip install -e \".[vllm]\", docs/vllm.md)", flush=True)
        engines.remove("vllm")
    results = []
    for method in args.methods:
        recipe, overrides = TRAINERS[method]
        cases = [("hf", overrides, layouts)] if "hf" in engines or method not in ENGINE_METHODS else []
        if method in ENGINE_METHODS:
            cases += [(e, [*overrides, *ENGINE_OVERRIDES[e]], [(1, "ddp")]) for e in ("hf-multinomial", "vllm") if e in engines]
        for engine, case_overrides, case_layouts in cases:
            for processes, strategy in case_layouts:
                results.append(run(method, recipe, case_overrides, processes, strategy, model, args.steps, out, engine))
                r = results[-1]
                print(f"  {method} {engine} {processes}x{strategy}: {'FAILED' if 'error' in r else 'ok'} in {r['seconds']:.0f} s",
                      flush=True)
    if results:
        print_table(results)
    if torch.cuda.is_available() and any(m in ENGINE_METHODS for m in args.methods):
        # the samplers alone, at the GRPO rows' 64 completions and more (scripts/benchmarks/bench_sampler.py)
        subprocess.run([sys.executable, str(REPO / "scripts" / "benchmarks" / "bench_sampler.py"), "--device", "cuda",
                        "--rows", "64", "256", "--vocab", str(QWEN_05B_SHAPE["vocab_size"])], check=False)
    if args.seven_b:
        results += seven_b_case(out, args.tiny, args.steps)
    (out / "gpu_check.json").write_text(json.dumps(results, indent=1))
    failed = [r for r in results if "error" in r]
    for r in failed:
        print(f"\n{r['method']} {r['engine']} {r['processes']}x{r['strategy']} failed:\n{r['error']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
