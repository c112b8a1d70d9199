"""Step time and peak memory of our GRPO iteration: LoRA vs TRL's GRPOTrainer (same peft config), LoRA vs full.

    OMP_NUM_THREADS=1 python scripts/benchmarks/bench_grpo.py              # ~61M random Llama, 3 processes in turn (~5 min)
    OMP_NUM_THREADS=1 python scripts/benchmarks/bench_grpo.py --quick      # a ~0.1M config, 1+1 steps (tests)

Cases, each in its OWN process (this script re-invoked with `--case`), one torch thread, float32,
the same random Llama (built from a config with seed 0, no download; the built-in char tokenizer of
`scratch:test`), the same 8 prompts of the arithmetic task (plain text, BOS added by the tokenizer on
both sides), 4 completions per prompt, 32 completion tokens each, temperature 1, no KL (no reference
forward on either side), the same reward (`format`, from `reward_models.verifiable`) and the same
LoRA config (rank 8, alpha 32, every linear layer of the blocks):
    ours_lora   `align.trainers.grpo.train_grpo` itself, run for warm-up + timed iterations; its
                `load_shared_base` is swapped for one that returns the bench model on a SharedBase
                (nothing else is touched). One iteration = rollout (8 x 4 completions, one batched
                generation with KV cache) + old log-probs + score + advantages + ONE minibatch of 32
                (`grpo.minibatch_size` 32, `grpo.epochs` 1) + one AdamW step; its time is the
                trainer's own `time/iteration` from metrics.jsonl
    trl_lora    `trl.GRPOTrainer(..., peft_config=...)` `.train()` with per_device_train_batch_size 32,
                num_generations 4, steps_per_generation 1, num_iterations 1, gradient_accumulation 1,
                loss_type grpo, beta 0, AdamW, the same clipping, no gradient checkpointing, bf16 off;
                one step = `training_step` (generation + scoring + loss + backward) + optimizer step,
                timed by a TrainerCallback (on_step_begin -> on_step_end)
    ours_full   `train_grpo` in mode full on the same model (the policy is a full copy)
The step time is the median of the timed steps after the warm-up steps; `generate s` is the median
time of sampling alone (ours: the trainer's `time/rollout`; TRL: its `_generate_single_turn`, timed
from outside), `old logps s` our no-grad forward for old log-probs (`time/forward`). Peak memory is the process's
peak resident set size (`align.memory.peak_bytes`; on a GPU, CUDA's max allocated). Every case
imports trl and datasets, so the fixed library cost is the same in all.

Equal lengths: the bench model can never emit EOS. A forward hook on its `lm_head` (installed by
`build`, so identical on both sides, and kept when peft wraps the model) sets the logit of the EOS
id, and of every id past the tokenizer's 100 (ids the char tokenizer cannot decode), to -1e4:
probability exactly 0 after softmax in float32, so every completion runs to the 32-token limit with
each side's own EOS handling untouched (our `rollout.no_stop_penalty: null`, TRL
`mask_truncated_completions=False`). Each case asserts it: ours, every iteration's
`response_length` is 32 and `no_stop_fraction` 1; TRL, every step's logged completion
min_length = max_length = 32. The softmax still spans all 32,000 logits on both sides.

What is and is not the same: our iteration computes old log-probs (and entropies) in a no-grad
forward before the update even when there is one pass over one minibatch (the importance ratio is
then exactly 1); TRL skips that forward in this setting (it sets old log-probs to the detached
current ones). Sampling: ours is its own KV-cache loop with one torch.Generator per completion, TRL
calls `model.generate`. Both run the update forward once with gradients (32 x ~45 tokens).

The last three lines are exactly:
    time ours/trl: X
    memory ours/trl: X
    time lora/full: X
Targets: ours/trl <= 1.0 for time and memory.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from trl_timing import print_ratios, step_timer  # noqa: E402 (this folder)

REPO = Path(__file__).resolve().parents[2]

# ~61M parameters (tied embeddings): 8 layers, hidden 640, vocab 32000 (as scripts/benchmarks/bench_dpo.py).
MODELS: dict[str, dict] = {
    "llama-61m": dict(vocab_size=32000, hidden_size=640, intermediate_size=1792, num_hidden_layers=8,
                      num_attention_heads=10, num_key_value_heads=10, max_position_embeddings=256,
                      tie_word_embeddings=True),
    "llama-tiny": dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,  # --quick
                     num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True),
}
PROMPTS, GROUP, COMPLETION_TOKENS = 8, 4, 32  # per step: 8 prompts x 4 completions, 32 tokens each
LORA = {"rank": 8, "alpha": 32.0, "targets": "all", "dropout": 0.0}
LR, MAX_GRAD_NORM, CLIP = 1e-5, 1.0, 0.2
REWARD = "format"  # 1 when the completion holds an integer: cheap, and not constant on random text
NEVER = -1e4  # the logit of a token the bench model must not emit: exp(-1e4 - max) == 0 in float32


def build(model_name: str):
    """The bench model (seed 0, from a config) and the built-in char tokenizer; the model never
    emits EOS nor an id the tokenizer cannot decode (the module docstring's lm_head hook)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from align.models import load_tokenizer

    torch.manual_seed(0)
    tokenizer = load_tokenizer("scratch:test")  # the built-in char-level tokenizer (ids < 100)
    config = LlamaConfig(**MODELS[model_name], pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(config)
    eos, known = tokenizer.eos_token_id, len(tokenizer)

    def never_emit(module, inputs, logits):  # in place: no copy of the (B, L, V) logits
        logits[..., known:] = NEVER
        logits[..., eos] = NEVER
        return logits

    model.lm_head.register_forward_hook(never_emit)
    return model, tokenizer


def prompt_rows() -> list[dict]:
    from align.tasks import get_task

    return get_task("arithmetic").prompts("train", PROMPTS, 0)  # [{"prompt": "Q: 23+45=? A:", "answer": 68}]


def run_ours(mode: str, model_name: str, warmup: int, steps: int, out_dir: str) -> dict:
    import align.trainers.grpo as grpo
    from align.config import load_recipe
    from align.shared_base import SharedBase

    overrides = [
        f"mode={mode}", "model=scratch:test", f"output_dir={out_dir}/ours_{mode}", "tracking.wandb=false",
        "eval.enabled=false", f"data.num_train={PROMPTS}", f"optimizer.lr={LR}", "optimizer.schedule=constant", f"optimizer.max_grad_norm={MAX_GRAD_NORM}",
        f"rollout.reward={REWARD}", f"rollout.max_new_tokens={COMPLETION_TOKENS}", "rollout.no_stop_penalty=null",
        "rollout.kl_coef=0.0", f"rollout.forward_batch_size={PROMPTS * GROUP}", f"grpo.prompts_per_iteration={PROMPTS}",
        f"grpo.group_size={GROUP}", f"grpo.minibatch_size={PROMPTS * GROUP}", "grpo.epochs=1", "grpo.loss_aggregation=grpo",
        f"grpo.clip_low={CLIP}", f"grpo.clip_high={CLIP}", f"train.steps={warmup + steps}", "train.log_every=1",
        "train.threads=1",
    ] + [f"lora.{k}={v}" for k, v in LORA.items()]
    cfg = load_recipe(REPO / "recipes" / "grpo_lora.yaml", overrides)

    def bench_base(cfg, run):  # the trainer's only change: the bench model instead of cfg.model
        model, tokenizer = build(model_name)
        return SharedBase(model.to(run.accelerator.device), tokenizer, mode=cfg.mode, lora=cfg.lora)

    grpo.load_shared_base = bench_base
    result = grpo.train_grpo(cfg)
    rows = [json.loads(line) for line in (Path(result.run_dir) / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "time/iteration" in r]
    assert len(rows) == warmup + steps, len(rows)
    lengths = []
    for r in rows:  # every completion ran to the limit: mean length = limit and none stopped
        assert r["response_length"] == COMPLETION_TOKENS and r["no_stop_fraction"] == 1.0, r
        lengths.append(int(r["response_length"]))
    timed = rows[warmup:]
    return {"times": [r["time/iteration"] for r in timed], "lengths": lengths,
            "generate_s": statistics.median(r["time/rollout"] for r in timed),
            "old_logps_s": statistics.median(r["time/forward"] for r in timed)}


def run_trl(model_name: str, warmup: int, steps: int, out_dir: str) -> dict:
    from datasets import Dataset
    from align.compat import checkpointing_args  # the TrainingArguments name of this transformers
    from trl import GRPOConfig, GRPOTrainer

    from align.config import LoraSettings
    from align.lora import peft_lora_config
    from reward_models.base import build_reward

    model, tokenizer = build(model_name)
    peft_config = peft_lora_config(model, LoraSettings(**LORA))
    reward = build_reward(REWARD)
    times: list[float] = []
    lengths: list[int] = []
    generate_times: list[float] = []

    def format_reward(prompts, completions, **kw):
        return reward(prompts, completions).scores

    class StepTimer(step_timer(times)):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/max_length" in logs:
                assert logs["completions/min_length"] == logs["completions/max_length"] == COMPLETION_TOKENS, logs
                lengths.append(int(logs["completions/max_length"]))

    import torch

    args = GRPOConfig(
        output_dir=f"{out_dir}/trl", report_to=[], use_cpu=not torch.cuda.is_available(), bf16=False,
        per_device_train_batch_size=PROMPTS * GROUP, num_generations=GROUP, steps_per_generation=1, num_iterations=1,
        gradient_accumulation_steps=1, max_completion_length=COMPLETION_TOKENS, temperature=1.0, beta=0.0,
        loss_type="grpo", epsilon=CLIP, mask_truncated_completions=False, max_steps=warmup + steps,
        learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=MAX_GRAD_NORM,
        optim="adamw_torch", weight_decay=0.0, **checkpointing_args(False), save_strategy="no", logging_steps=1,
        dataloader_num_workers=0, disable_tqdm=True, seed=0,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=format_reward, args=args, processing_class=tokenizer,
                          train_dataset=Dataset.from_list([{"prompt": r["prompt"]} for r in prompt_rows()]),
                          peft_config=peft_config, callbacks=[StepTimer()])
    generate = trainer._generate_single_turn  # timed from outside: `model.generate` and the EOS masking

    def timed_generate(*a, **kw):
        t0 = time.perf_counter()
        out = generate(*a, **kw)
        generate_times.append(time.perf_counter() - t0)
        return out

    trainer._generate_single_turn = timed_generate
    trainer.train()
    assert len(times) == warmup + steps and len(lengths) == warmup + steps, (len(times), len(lengths))
    return {"times": times[warmup:], "lengths": lengths, "generate_s": statistics.median(generate_times[warmup:]),
            "old_logps_s": 0.0}


def case(name: str, model_name: str, warmup: int, steps: int, out_dir: str) -> dict:
    import torch

    torch.set_num_threads(1)
    import datasets  # noqa: F401  (the same library footprint in every case)
    import trl  # noqa: F401

    from align.memory import count_parameters, peak_bytes

    if name == "trl_lora":
        r = run_trl(model_name, warmup, steps, out_dir)
    else:
        r = run_ours(name.split("_")[1], model_name, warmup, steps, out_dir)
    parameters = count_parameters(build(model_name)[0])[1] if name == "ours_full" else 0
    return {"case": name, "step_s": statistics.median(r["times"]), "times": r["times"], "lengths": sorted(set(r["lengths"])),
            "generate_s": r["generate_s"], "old_logps_s": r["old_logps_s"], "peak_bytes": peak_bytes(), "parameters": parameters}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per case")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up steps per case, not timed")
    parser.add_argument("--quick", action="store_true", help="a ~0.1M config, 1 warm-up + 1 timed step (tests)")
    parser.add_argument("--case", choices=["ours_lora", "trl_lora", "ours_full"], help="(internal) run one case")
    parser.add_argument("--model", default="llama-61m", choices=sorted(MODELS), help="(internal) the bench model")
    parser.add_argument("--out", default="/tmp/align_bench_grpo", help="a fresh folder under it holds the runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.warmup, args.steps = "llama-tiny", 1, 1
    if args.case:
        print("RESULT " + json.dumps(case(args.case, args.model, args.warmup, args.steps, args.out)), flush=True)
        return 0

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled", "TQDM_DISABLE": "1"}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    work = tempfile.mkdtemp(prefix="bench-", dir=args.out)  # run folders of this invocation
    results = {}
    for name in ("ours_lora", "trl_lora", "ours_full"):  # one at a time: they would compete for cores
        proc = subprocess.run([sys.executable, __file__, "--case", name, "--model", args.model, "--warmup", str(args.warmup),
                               "--steps", str(args.steps), "--out", work],
                              cwd=REPO, env=env, capture_output=True, text=True)
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            print(proc.stdout[-3000:], proc.stderr[-5000:], file=sys.stderr)
            raise SystemExit(f"case {name} failed (exit {proc.returncode})")
        results[name] = json.loads(line[len("RESULT "):])
    lengths = {name: r["lengths"] for name, r in results.items()}
    assert all(v == [COMPLETION_TOKENS] for v in lengths.values()), f"generated lengths differ: {lengths}"

    print(f"model: random Llama ({args.model}), {results['ours_full']['parameters'] / 1e6:.1f}M parameters "
          f"{MODELS[args.model]}; {PROMPTS} prompts x {GROUP} completions x {COMPLETION_TOKENS} tokens per step "
          f"(every completion exactly {COMPLETION_TOKENS} tokens on every side), LoRA r{LORA['rank']} on all block "
          f"linears, 1 thread, float32, {args.warmup} warm-up + {args.steps} timed steps")
    print(f"{'case':<10} {'step s (median)':>16} {'all timed steps':>22} {'generate s':>11} {'old logps s':>12} {'peak MB':>9}")
    for name, r in results.items():
        print(f"{name:<10} {r['step_s']:>16.3f} {' '.join(f'{t:.2f}' for t in r['times']):>22} {r['generate_s']:>11.2f} "
              f"{r['old_logps_s']:>12.2f} {r['peak_bytes'] / 2**20:>9.0f}")
    print_ratios(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
