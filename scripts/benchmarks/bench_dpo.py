"""Step time and peak memory of our DPO step: LoRA vs TRL's DPOTrainer (same peft config), LoRA vs full.

    OMP_NUM_THREADS=1 python scripts/benchmarks/bench_dpo.py              # ~61M random Llama, 3 processes in turn
    OMP_NUM_THREADS=1 python scripts/benchmarks/bench_dpo.py --steps 2    # fewer timed steps

Cases, each in its OWN process (this script re-invoked with `--case`), one torch thread, float32,
the same random Llama config (built from a config, no download), the same batch of pairs
(identical lengths, so every step sees the same shapes) and the same LoRA config (rank 8, alpha 32,
every linear layer of the blocks):
    ours_lora   align's step: `collate_pairs` -> `dpo_loss_on_batch` (policy forward with the
                adapter on, reference forward with it off, sigmoid loss) -> backward ->
                `clip_and_step` (AdamW), on a SharedBase in LoRA mode
    trl_lora    `trl.DPOTrainer(..., peft_config=...)` `.train()` with the same batch size, AdamW,
                clipping, no gradient checkpointing (TRL's default is on; off in both), bf16 off;
                step time from a TrainerCallback (on_step_begin -> on_step_end)
    ours_full   align's step on a SharedBase in full mode (policy = full copy, reference = base)
The step time is the median over the timed steps after one warm-up step. Peak memory is the
process's peak resident set size (`align.memory.peak_bytes`; on a GPU it would be CUDA's max
allocated). Every case imports trl and datasets, so the fixed library cost is the same in all.

The last three lines are exactly:
    time ours/trl: X
    memory ours/trl: X
    time lora/full: X
Targets: ours/trl <= 1.0 for time and memory; lora/full step time <= 0.8.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from trl_timing import print_ratios, step_timer  # noqa: E402 (this folder)

REPO = Path(__file__).resolve().parents[2]

# ~61M parameters (tied embeddings): 8 layers, hidden 640, vocab 32000.
MODEL = dict(vocab_size=32000, hidden_size=640, intermediate_size=1792, num_hidden_layers=8, num_attention_heads=10,
             num_key_value_heads=10, max_position_embeddings=256, tie_word_embeddings=True)
PAIRS, PROMPT_CHARS, COMPLETION_CHARS = 2, 40, 15  # pairs per step; the tokenizer is 1 token per char (+BOS, +EOS)
LORA = {"rank": 8, "alpha": 32.0, "targets": "all", "dropout": 0.0}
LR, MAX_GRAD_NORM, BETA = 1e-4, 1.0, 0.1


def rows(n: int) -> list[dict]:
    import random

    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    text = lambda k: "".join(rng.choice(letters) for _ in range(k))  # noqa: E731
    return [{"prompt": text(PROMPT_CHARS), "chosen": text(COMPLETION_CHARS), "rejected": text(COMPLETION_CHARS)} for _ in range(n)]


def build():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from align.models import load_tokenizer

    torch.manual_seed(0)
    tokenizer = load_tokenizer("scratch:test")  # the built-in char-level tokenizer (ids < 100)
    config = LlamaConfig(**MODEL, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(config), tokenizer


def run_ours(mode: str, steps: int) -> list[float]:
    import torch

    from align.config import DPOSettings, OptimizerSettings, RecipeConfig
    from align.data.batching import collate_pairs
    from align.data.loading import SkipCounter, pair_examples, rows_from_task
    from align.losses import get_preference_loss
    from align.shared_base import SharedBase
    from align.trainers.common import clip_and_step, make_optimizer, make_scheduler
    from align.trainers.dpo import dpo_loss_on_batch

    class _NoAccelerator:  # clip_and_step only needs clip_grad_norm_
        clip_grad_norm_ = staticmethod(torch.nn.utils.clip_grad_norm_)

    model, tokenizer = build()
    base = SharedBase(model, tokenizer, mode=mode, lora=LORA)
    base.add_policy()
    base.add_reference()
    base.role_model("policy").train()
    cfg = RecipeConfig(method="dpo", mode=mode, dpo=DPOSettings(beta=BETA), optimizer=OptimizerSettings(lr=LR, schedule="constant"))
    params = base.trainable_parameters("policy")
    optimizer = make_optimizer(params, cfg, LR)
    scheduler = make_scheduler(optimizer, cfg, steps + 1)
    examples = pair_examples(rows_from_task(rows(PAIRS), "bench"), tokenizer, 1024, "error", SkipCounter())
    loss_fn = get_preference_loss("sigmoid")
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        batch = collate_pairs(examples, tokenizer.pad_token_id)
        loss, _, _ = dpo_loss_on_batch(base, batch, loss_fn, cfg)
        loss.backward()
        clip_and_step(params, optimizer, scheduler, MAX_GRAD_NORM, _NoAccelerator())
        times.append(time.perf_counter() - t0)
    return times[1:]


def run_trl(steps: int, out_dir: str) -> list[float]:
    from datasets import Dataset
    from align.compat import checkpointing_args  # the TrainingArguments name of this transformers
    from trl import DPOConfig, DPOTrainer

    from align.config import LoraSettings
    from align.lora import peft_lora_config

    model, tokenizer = build()
    peft_config = peft_lora_config(model, LoraSettings(**LORA))
    times: list[float] = []

    StepTimer = step_timer(times)

    args = DPOConfig(
        output_dir=out_dir, report_to=[], use_cpu=True, bf16=False, beta=BETA, loss_type="sigmoid",
        per_device_train_batch_size=PAIRS, gradient_accumulation_steps=1, max_steps=steps + 1,
        learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=MAX_GRAD_NORM,
        optim="adamw_torch", weight_decay=0.0, **checkpointing_args(False), max_length=None,
        save_strategy="no", logging_steps=10_000, dataloader_num_workers=0, disable_tqdm=True, seed=0,
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows(PAIRS * (steps + 1))),
                         processing_class=tokenizer, peft_config=peft_config, callbacks=[StepTimer()])
    trainer.train()
    return times[1:]


def case(name: str, steps: int, out_dir: str) -> dict:
    import torch

    torch.set_num_threads(1)
    import datasets  # noqa: F401  (the same library footprint in every case)
    import trl  # noqa: F401

    from align.memory import peak_bytes

    if name == "trl_lora":
        times = run_trl(steps, out_dir)
    else:
        times = run_ours(name.split("_")[1], steps)
    from align.memory import count_parameters

    parameters = count_parameters(build()[0])[1] if name == "ours_full" else 0
    return {"case": name, "step_s": statistics.median(times), "times": times, "peak_bytes": peak_bytes(), "parameters": parameters}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per case (after 1 warm-up step)")
    parser.add_argument("--case", choices=["ours_lora", "trl_lora", "ours_full"], help="(internal) run one case")
    parser.add_argument("--out", default="/tmp/align_bench_dpo")
    args = parser.parse_args(argv)
    if args.case:
        print("RESULT " + json.dumps(case(args.case, args.steps, args.out)), flush=True)
        return 0

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled", "TQDM_DISABLE": "1"}
    results = {}
    for name in ("ours_lora", "trl_lora", "ours_full"):  # one at a time: they would compete for cores
        proc = subprocess.run([sys.executable, __file__, "--case", name, "--steps", str(args.steps), "--out", args.out],
                              cwd=REPO, env=env, capture_output=True, text=True)
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            print(proc.stdout[-3000:], proc.stderr[-5000:], file=sys.stderr)
            raise SystemExit(f"case {name} failed (exit {proc.returncode})")
        results[name] = json.loads(line[len("RESULT "):])

    print(f"model: random Llama, {results['ours_full']['parameters'] / 1e6:.1f}M parameters {MODEL}; "
          f"{PAIRS} pairs/step, {PROMPT_CHARS + 1}+{COMPLETION_CHARS + 1} tokens per sequence, 1 thread, float32")
    print(f"{'case':<10} {'step s (median)':>16} {'all timed steps':>28} {'peak RSS MB':>12}")
    for name, r in results.items():
        print(f"{name:<10} {r['step_s']:>16.3f} {' '.join(f'{t:.2f}' for t in r['times']):>28} {r['peak_bytes'] / 2**20:>12.0f}")
    print_ratios(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
