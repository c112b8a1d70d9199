"""Sample efficiency of our `grpo_lora` recipe against TRL's GRPOTrainer on the built-in task.

    OMP_NUM_THREADS=1 python scripts/benchmarks/grpo_vs_trl.py                       # 3 LRs x 3 seeds x 2 sides
    OMP_NUM_THREADS=1 python scripts/benchmarks/grpo_vs_trl.py --lrs-ours 1e-3 --lrs-trl 1e-3 --seeds 0 --steps 10
    OMP_NUM_THREADS=1 python scripts/benchmarks/grpo_vs_trl.py --smoke --out /tmp/x  # 2 steps on scratch:test (tests)

Every run is its OWN process (this script re-invoked with `--case`), one at a time, one torch
thread, and starts from the same base (`builtin:tiny-arith`; `scratch:test` with --smoke):
    ours   `align.trainers.grpo.train_grpo` on `recipes/grpo_lora.yaml` with `optimizer.lr`,
           `train.seed` and `train.steps` overridden (no evaluation in between)
    trl    `trl.GRPOTrainer` with a peft LoRA built by `align.lora.peft_lora_config` from the same
           recipe (r8, alpha 32, every linear layer of the blocks, B = 0), the recipe's group size,
           completions per optimizer step and per generation, passes (num_iterations 1), max
           completion length, temperature 1, beta 0 (no KL), loss_type grpo, group-std advantages,
           clip 0.2 both sides, AdamW with the recipe's betas, eps, weight decay and clipping,
           constant LR, the base's dropout off (both sides)
Metric: OUR evaluation of the trained policy, sampled accuracy on the 256 held-out prompts at
temperature 1 (`align.evaluation.evaluate_task` with the arithmetic task, exactly as
`align.trainers.common.evaluate` calls it: n, split, seed = the run's seed, max_new_tokens from the
recipe); TRL's trained peft model is evaluated by that same call. Both after the same number of
completions (steps x prompts x group size).

TRL's reward wraps ours: `reward_models.verifiable.ArithmeticCorrectness` on the decoded completion
with the row's answer (the `answer` column of `align.tasks.get_task("arithmetic").prompts("train",
num_train, seed)`, the rows our trainer loads), then the recipe's no-stop penalty: -1 for a
completion whose last token is not EOS (it ran out of max_completion_length), as our rollout does.
Prompts are plain text; TRL tokenizes them with the tokenizer's default `add_special_tokens=True`,
as our rollout does (checked per run: the ids of the first prompt are equal on both sides).

What differs (and is left as each trainer does it): TRL shuffles the generation batch before
splitting it into optimizer minibatches, ours keeps whole groups together; TRL samples with
`model.generate` and the global RNG, ours with one generator per completion; TRL's prompt order
comes from its sampler, ours from `BatchStream`; LoRA A is drawn from different RNG states.

Writes OUT/runs.jsonl (one line per run, appended as it finishes; `--reuse` keeps the runs already
there), OUT/table.md and OUT/table.json (mean ± std over seeds per LR and side, wall times).
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

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # this folder, also when imported (tests)
sys.path.insert(0, str(REPO / "scripts" / "studies"))  # as_measured.py: the recipes the studies were measured with
from as_measured import GRPO_BEFORE_ISSUE11_TUNING  # noqa: E402 (scripts/studies)
from trl_timing import step_timer  # noqa: E402 (this folder)

RECIPE = REPO / "recipes" / "grpo_lora.yaml"
SMOKE = ["model=scratch:test", "data.num_train=64", "grpo.prompts_per_iteration=4", "grpo.group_size=4",
         "grpo.minibatch_size=8", "eval.num_prompts=16", "rollout.max_new_tokens=6"]


def recipe(lr: float, seed: int, steps: int, out_dir: str, smoke: bool):
    """The run's recipe: grpo_lora with the LR, seed and steps of this run (and --smoke's sizes)."""
    from align.config import load_recipe

    # the recipe as results/grpo_vs_trl was measured with (the shipped one has been tuned since)
    return load_recipe(RECIPE, [*GRPO_BEFORE_ISSUE11_TUNING, f"optimizer.lr={lr}", f"train.seed={seed}", f"train.steps={steps}", "train.eval_every=0",
                                "train.log_every=1", "tracking.wandb=false", f"output_dir={out_dir}"] + (SMOKE if smoke else []))


def evaluate(cfg, model, tokenizer) -> dict[str, float]:
    """`align.trainers.common.evaluate`'s call of `evaluate_task`, without a Run."""
    from align.evaluation import evaluate_task
    from align.tasks import get_task

    return evaluate_task(model, tokenizer, get_task(cfg.data.task), n=cfg.eval.num_prompts, split="eval",
                         seed=cfg.train.seed, max_new_tokens=cfg.eval.max_new_tokens)


def run_ours(cfg) -> dict:
    from align.trainers.grpo import train_grpo

    result = train_grpo(cfg)
    rows = [json.loads(line) for line in (Path(result.run_dir) / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "time/iteration" in r]
    return {"eval_before": result.summary["eval_before"], "eval_after": result.summary["eval_after"],
            "train_s": sum(r["time/iteration"] for r in rows), "final_reward": rows[-1]["reward/score"]}


def run_trl(cfg) -> dict:
    import torch
    from datasets import Dataset
    from align.compat import checkpointing_args  # the TrainingArguments name of this transformers
    from trl import GRPOConfig, GRPOTrainer

    from align.data.prompts import load_prompt_rows
    from align.dropout import disable_model_dropout
    from align.experience import eos_token_ids
    from align.lora import peft_lora_config
    from align.models import load_model_and_tokenizer
    from reward_models.verifiable import ArithmeticCorrectness

    g, r, o = cfg.grpo, cfg.rollout, cfg.optimizer
    assert cfg.mode == "lora" and r.kl_coef == 0.0 and g.epochs == 1 and g.advantage == "grpo" and not g.batch_std
    assert o.schedule == "constant" and o.warmup_steps == 0 and not o.lr_rule and r.top_p == 1.0
    model, tokenizer = load_model_and_tokenizer(cfg.model, cfg.dtype)
    disable_model_dropout(model)  # as our load_shared_base does
    eos_ids = eos_token_ids(model, tokenizer)  # our stop tokens; TRL's are the same (checked below)
    correctness = ArithmeticCorrectness()

    def correctness_with_no_stop_penalty(prompts, completions, completion_ids, answer, **kw):
        scores = correctness(prompts, completions, answers=answer).scores
        if r.no_stop_penalty is None:
            return scores
        # our rollout's rule: a completion that never reached EOS gets rollout.no_stop_penalty
        return [s if ids and ids[-1] in eos_ids else r.no_stop_penalty for s, ids in zip(scores, completion_ids)]

    times: list[float] = []

    StepTimer = step_timer(times)

    updates_per_generation = g.prompts_per_iteration * g.group_size // g.minibatch_size
    args = GRPOConfig(
        output_dir=str(Path(cfg.output_dir) / "trl"), report_to=[], use_cpu=not torch.cuda.is_available(), bf16=False,
        per_device_train_batch_size=g.minibatch_size, steps_per_generation=updates_per_generation, num_iterations=1,
        gradient_accumulation_steps=1, num_generations=g.group_size, max_completion_length=r.max_new_tokens,
        temperature=r.temperature, top_p=1.0, top_k=0, beta=0.0, loss_type=g.loss_aggregation, scale_rewards="group",
        epsilon=g.clip_low, epsilon_high=g.clip_high, mask_truncated_completions=False, disable_dropout=True,
        max_steps=cfg.train.steps * updates_per_generation, learning_rate=o.lr, lr_scheduler_type="constant",
        warmup_steps=0, max_grad_norm=o.max_grad_norm, optim="adamw_torch", weight_decay=o.weight_decay,
        adam_beta1=o.beta1, adam_beta2=o.beta2, adam_epsilon=o.eps, **checkpointing_args(False),
        save_strategy="no", logging_steps=10, dataloader_num_workers=0, disable_tqdm=True, seed=cfg.train.seed,
    )
    rows = load_prompt_rows(cfg, "train")  # the rows our trainer loads: [{"prompt", "answer"}]
    trainer = GRPOTrainer(model=model, reward_funcs=correctness_with_no_stop_penalty, args=args,
                          train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                          peft_config=peft_lora_config(model, cfg.lora), callbacks=[StepTimer()])
    assert sorted(trainer.eos_token_ids) == eos_ids, (trainer.eos_token_ids, eos_ids)
    # the same prompt ids as our rollout: plain text, add_special_tokens=True (BOS)
    first = rows[0]["prompt"]
    assert trainer._tokenize_prompts([first])[0][0] == tokenizer(first, add_special_tokens=True)["input_ids"]
    trainer.train()
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    return {"eval_after": evaluate(cfg, trainer.model, tokenizer), "train_s": sum(times),
            "final_reward": rewards[-1] if rewards else None}


def case(side: str, lr: float, seed: int, steps: int, work: str, smoke: bool) -> dict:
    import torch

    torch.set_num_threads(1)
    t0 = time.time()
    cfg = recipe(lr, seed, steps, str(Path(work) / f"{side}_lr{lr:g}_seed{seed}"), smoke)
    result = run_ours(cfg) if side == "ours" else run_trl(cfg)
    completions = cfg.train.steps * cfg.grpo.prompts_per_iteration * cfg.grpo.group_size
    return {"side": side, "lr": lr, "seed": seed, "steps": steps, "completions": completions,
            "accuracy_sampled": result["eval_after"]["accuracy_sampled"],
            "accuracy_greedy": result["eval_after"]["accuracy_greedy"],
            "accuracy_sampled_before": result.get("eval_before", {}).get("accuracy_sampled"),
            "final_reward": result["final_reward"], "train_s": result["train_s"], "run_s": time.time() - t0}


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def table(runs: list[dict], args) -> tuple[str, dict]:
    """The markdown table and its JSON: per side and LR, mean ± std over seeds."""
    rows = []
    for side, lrs in (("ours", args.lrs_ours), ("trl", args.lrs_trl)):
        for lr in lrs:
            group = [r for r in runs if r["side"] == side and r["lr"] == lr and r["seed"] in args.seeds]
            if not group:
                continue
            acc_mean, acc_std = _mean_std([r["accuracy_sampled"] for r in group])
            rows.append({"side": side, "lr": lr, "seeds": sorted(r["seed"] for r in group), "accuracy_sampled_mean": acc_mean,
                         "accuracy_sampled_std": acc_std, "accuracy_sampled": [r["accuracy_sampled"] for r in group],
                         "accuracy_greedy_mean": statistics.mean(r["accuracy_greedy"] for r in group),
                         "train_s_mean": statistics.mean(r["train_s"] for r in group),
                         "run_s_mean": statistics.mean(r["run_s"] for r in group)})
    best = {side: max((r for r in rows if r["side"] == side), key=lambda r: r["accuracy_sampled_mean"], default=None)
            for side in ("ours", "trl")}
    before = sorted({r["seed"]: r["accuracy_sampled_before"] for r in runs  # the base at each seed (ours evaluates it)
                     if r.get("accuracy_sampled_before") is not None and r["seed"] in args.seeds}.items())
    before = [value for _, value in before]
    completions = runs[0]["completions"] if runs else 0
    lines = [
        "| side | LR | seeds | sampled accuracy after, mean ± std | per seed | greedy accuracy after, mean "
        "| train s / run | run s / run (setup + train + evals) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mark = " **best**" if best[r["side"]] is r else ""
        lines.append(f"| {r['side']} | {r['lr']:g}{mark} | {len(r['seeds'])} | {r['accuracy_sampled_mean']:.3f} ± "
                     f"{r['accuracy_sampled_std']:.3f} | {' '.join(f'{a:.3f}' for a in r['accuracy_sampled'])} | "
                     f"{r['accuracy_greedy_mean']:.3f} | {r['train_s_mean']:.1f} | {r['run_s_mean']:.1f} |")
    summary = {"steps": args.steps, "completions_per_run": completions, "before_accuracy_sampled": before,
               "best": {s: (b["lr"], b["accuracy_sampled_mean"], b["accuracy_sampled_std"]) if b else None
                        for s, b in best.items()},
               "rows": rows, "runs": runs}
    text = "\n".join(lines)
    if before:
        text += (f"\n\nBefore training (the base, our evaluation at each seed): sampled accuracy "
                 f"{statistics.mean(before):.3f} ± {statistics.stdev(before) if len(before) > 1 else 0.0:.3f}.")
    if best["ours"] and best["trl"]:
        text += (f"\nAt its best LR after {completions} completions: ours {best['ours']['accuracy_sampled_mean']:.3f} ± "
                 f"{best['ours']['accuracy_sampled_std']:.3f} (LR {best['ours']['lr']:g}), TRL "
                 f"{best['trl']['accuracy_sampled_mean']:.3f} ± {best['trl']['accuracy_sampled_std']:.3f} "
                 f"(LR {best['trl']['lr']:g}).")
    return text, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lrs-ours", type=float, nargs="+", default=[3e-4, 1e-3, 3e-3])
    parser.add_argument("--lrs-trl", type=float, nargs="+", default=[3e-4, 1e-3, 3e-3])
    parser.add_argument("--steps", type=int, default=60, help="iterations (generation batches) per run, both sides")
    parser.add_argument("--smoke", action="store_true", help="2 steps on scratch:test with small sizes (tests)")
    parser.add_argument("--reuse", action="store_true", help="keep the runs already in OUT/runs.jsonl, run the others")
    parser.add_argument("--out", default=str(REPO / "results" / "grpo_vs_trl"))
    parser.add_argument("--work", default="/tmp/align_grpo_vs_trl", help="a fresh folder under it holds the run folders")
    parser.add_argument("--note", default="", help="a line for table.md (e.g. what did not fit)")
    parser.add_argument("--case", nargs=2, metavar=("SIDE", "LR"), help="(internal) run one case: ours|trl and its LR")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps = min(args.steps, 2)
    out = Path(args.out)
    if args.case:
        side, lr = args.case[0], float(args.case[1])
        print("RESULT " + json.dumps(case(side, lr, args.seeds[0], args.steps, args.work, args.smoke)), flush=True)
        return 0

    out.mkdir(parents=True, exist_ok=True)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    work = tempfile.mkdtemp(prefix="runs-", dir=args.work)  # run folders (adapters, metrics) of this invocation
    runs_path = out / "runs.jsonl"
    runs = [json.loads(l) for l in runs_path.read_text().splitlines()] if args.reuse and runs_path.exists() else []
    if not args.reuse:
        runs_path.write_text("")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled", "TQDM_DISABLE": "1"}
    sides = (("ours", args.lrs_ours), ("trl", args.lrs_trl))
    plan = [(side, lr, seed) for seed in args.seeds for side, lrs in sides for lr in lrs]
    for side, lr, seed in plan:  # one at a time: they would compete for cores
        if any(r["side"] == side and r["lr"] == lr and r["seed"] == seed and r["steps"] == args.steps for r in runs):
            continue
        command = [sys.executable, __file__, "--case", side, repr(lr), "--seeds", str(seed), "--steps", str(args.steps),
                   "--work", work] + (["--smoke"] if args.smoke else [])
        proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            print(proc.stdout[-3000:], proc.stderr[-5000:], file=sys.stderr)
            raise SystemExit(f"run {side} lr {lr:g} seed {seed} failed (exit {proc.returncode})")
        run = json.loads(line[len("RESULT "):])
        runs.append(run)
        with runs_path.open("a") as f:
            f.write(json.dumps(run) + "\n")
        print(f"{side:<5} lr {lr:<8g} seed {seed}: sampled accuracy {run['accuracy_sampled']:.3f} "
              f"(train {run['train_s']:.0f} s, run {run['run_s']:.0f} s)", flush=True)

    runs = [r for r in runs if r["steps"] == args.steps]
    text, summary = table(runs, args)
    header = (f"# Our grpo_lora vs TRL GRPOTrainer on {'scratch:test (smoke)' if args.smoke else 'builtin:tiny-arith'}\n\n"
              f"Each run: {args.steps} iterations = {summary['completions_per_run']} completions; sampled accuracy on the "
              f"held-out prompts after training (our `evaluate_task`), mean ± std over seeds. Command: "
              f"`OMP_NUM_THREADS=1 python scripts/benchmarks/grpo_vs_trl.py --steps {args.steps} --seeds {' '.join(map(str, args.seeds))} "
              f"--lrs-ours {' '.join(f'{x:g}' for x in args.lrs_ours)} --lrs-trl {' '.join(f'{x:g}' for x in args.lrs_trl)}"
              f"{' --smoke' if args.smoke else ''}`. `train s`: the training loop alone (ours: the sum of `time/iteration`; "
              f"TRL: the sum of its step times); `run s`: the case's process after imports (model load, training, "
              f"evaluations: ours before and after, TRL after).\n"
              + (f"\n{args.note}\n" if args.note else "") + "\n")
    (out / "table.md").write_text(header + text + "\n")
    (out / "table.json").write_text(json.dumps({**summary, "note": args.note, "smoke": args.smoke}, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
