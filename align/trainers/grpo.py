"""Critic-free RL on ONE frozen base: GRPO, RLOO, Dr. GRPO and DAPO-style losses, picked by settings.

Run: `align train recipes/grpo_lora.yaml` (verifiable arithmetic reward), `recipes/grpo_lora_rm.yaml`
(learned reward role + gold rule beside it), `recipes/grpo_full.yaml` (the FullFT baseline: the same
code with full copies); 2 processes: `accelerate launch --config_file recipes/accelerate/cpu_2proc.yaml
-m align.cli train recipes/grpo_lora.yaml`.

Roles (`align.shared_base`): the policy (a trainable LoRA adapter, or started from
`rollout.init_adapter`) and its reference (the base with adapters off, or the frozen start adapter);
for a reward naming `learned`, the frozen reward role. No critic: nothing else is in memory.

One iteration (`train.steps` of them):
    rollout     `grpo.prompts_per_iteration` prompts x `grpo.group_size` completions, sampled in
                one batched generation (KV cache) from the policy; each completion from its own
                generator seeded by its global index, so what is sampled does not depend on the
                number of processes; scored by `rollout.reward` (a response without EOS gets
                `rollout.no_stop_penalty`); old log-probs, and reference log-probs only when
                `rollout.kl_coef` is not 0 (`align.experience.sample_and_score`)
    advantages  from each prompt's group (`grpo.advantage`: grpo, rloo, dr_grpo; `grpo.batch_std`);
                groups whose rewards are all equal carry no signal: their fraction is logged and,
                with `grpo.drop_zero_variance_groups`, they are left out of the loss
    update      `grpo.epochs` passes over the generation batch in minibatches of
                `grpo.minibatch_size` completions (whole groups; each process holds its share of
                every minibatch): clipped importance ratio with `grpo.clip_low` / `clip_high`,
                + kl_coef x KL (`rollout.kl_estimator`, k3 in the recipes) in the loss,
                aggregated by `grpo.loss_aggregation` over the GLOBAL minibatch
                (`align.losses.grpo`); gradients averaged over processes, clipped, one AdamW step

The pieces are pure functions in `align.losses.grpo` (checked against TRL's GRPOTrainer in
tests/test_grpo_trl_oracle.py). Dropout: the base model's own is removed (`align.dropout`) unless
`train.model_dropout`; sampling and old log-probs run in eval mode, the update in train mode.

`rollout.engine: vllm` samples with a colocated vLLM engine instead (`align.vllm_engine`; the
adapter alone is synced; `rollout.tis_cap` optionally corrects for its log-probs).

Left out: multi-turn/tool rollouts, sequence-level importance sampling (GSPO),
entropy bonuses, resampling to replace dropped groups (DAPO's dynamic sampling refills the batch;
here a dropped group is simply left out of the loss).
"""

from __future__ import annotations

import math
import time

import torch

from align.config import RecipeConfig
from align.data.batching import BatchStream, chunks, shard
from align.data.loading import SkipCounter
from align.data.prompts import load_train_and_eval_prompts
from align.experience import (
    RolloutRewards, completion_generators, eos_token_ids, mismatch_stats, response_logprobs, sample_and_score,
)
from align.losses.grpo import LossDenominators, group_advantages, group_stats, grpo_loss, truncated_importance_weights
from align.memory import count_parameters, memory_by_role, memory_phase, memory_report, peak_bytes
from align.trainers.common import (
    TrainResult, add_policy_and_reference, all_reduce_gradients, checkpoint_saver, clip_and_step, end_of_step,
    evaluate_on_policy, finish_run, load_shared_base, make_optimizer, make_scheduler, mean_over_processes,
    resume_step, save_policy, shard_if_asked, start_loop, start_run, sum_over_processes,
)
from align.vllm_engine import build_rollout_engine


def local_prompt_positions(num_prompts: int, prompts_per_minibatch: int, rank: int, world: int) -> list[int]:
    """Positions in the iteration's prompt list that this process samples: its share of EVERY
    minibatch, so each minibatch is split evenly over the processes and no rows ever move."""
    positions: list[int] = []
    for start in range(0, num_prompts, prompts_per_minibatch):
        positions += shard(list(range(start, start + prompts_per_minibatch)), rank, world)
    return positions


def train_grpo(cfg: RecipeConfig) -> TrainResult:
    # ---- setup ----------------------------------------------------------------------------------
    run = start_run(cfg)
    acc, g, r = run.accelerator, cfg.grpo, cfg.rollout
    prompts_per_minibatch = g.minibatch_size // g.group_size
    if prompts_per_minibatch % run.world:
        raise SystemExit(f"grpo.minibatch_size / grpo.group_size ({prompts_per_minibatch} prompts per minibatch) "
                         f"must divide by the {run.world} processes")
    base = load_shared_base(cfg, run)
    uses_reference = r.kl_coef != 0.0  # at 0, no reference forward runs, and no reference role is kept
    add_policy_and_reference(base, "rollout.init_adapter", r.init_adapter, reference=uses_reference)
    rewards = RolloutRewards.from_recipe(cfg, base)  # a learned reward adds the frozen reward role
    engine = build_rollout_engine(cfg, base, run.sharded)  # rollout.engine vllm; None for hf
    policy_model, tokenizer = base.role_model("policy"), base.tokenizer
    policy_model.eval()  # eval mode except during the update's forward passes
    eos_ids = eos_token_ids(base.model, tokenizer)

    skipped = SkipCounter()
    train_rows, eval_rows = load_train_and_eval_prompts(cfg, skipped)
    stream = BatchStream(len(train_rows), g.prompts_per_iteration, cfg.train.seed)
    minibatches = g.prompts_per_iteration // prompts_per_minibatch
    # One pass over one minibatch per generation: every update is on-policy, the importance ratio
    # is 1, and the old log-probs are the update's own (detached); their forward is skipped.
    on_policy_only = g.epochs == 1 and minibatches == 1
    local_group_rows = prompts_per_minibatch // run.world * g.group_size  # this process's rows of one minibatch

    params = base.trainable_parameters("policy")
    trainable_ids = {id(p) for p in params}
    named_params = [(n, p) for n, p in policy_model.named_parameters() if id(p) in trainable_ids]
    trainable, total = count_parameters(policy_model)
    shard_if_asked(run, base.model, base.all_adapter_parameters())
    optimizer = make_optimizer(params, cfg, run.derived["learning_rate"])
    total_updates = cfg.train.steps * minibatches * g.epochs  # derived once: the schedule's length
    scheduler = make_scheduler(optimizer, cfg, total_updates)

    optimizers, schedulers = {"policy": optimizer}, {"policy": scheduler}
    start_step = resume_step(run, named_params, optimizers, schedulers)
    save = checkpoint_saver(run, named_params, optimizers, schedulers, save_adapter=lambda d: base.save_role("policy", d))

    def evaluate_policy() -> dict[str, float]:
        return evaluate_on_policy(run, base, eval_rows, rewards.train, eos_ids, engine)

    # ---- loop -----------------------------------------------------------------------------------
    headline = (
        f"grpo/{g.advantage}/{g.loss_aggregation} {cfg.mode}: {trainable:,} trainable of {total:,} parameters; "
        f"reward {r.reward}{f' (gold: {r.gold_reward})' if r.gold_reward else ''}; {len(train_rows)} prompts "
        f"({skipped.total} skipped); {g.prompts_per_iteration} prompts x {g.group_size} completions per iteration, "
        f"{minibatches * g.epochs} updates each; lr {run.derived['learning_rate']:.3g}; kl_coef {r.kl_coef}"
    )
    eval_before, bar = start_loop(run, start_step, evaluate_policy, "grpo", headline)
    for step in range(start_step, cfg.train.steps):
        t_start = time.time()
        # ---- rollout: this process's share of every minibatch's prompts, G completions each
        prompt_ids = stream.batch(step)
        positions = local_prompt_positions(len(prompt_ids), prompts_per_minibatch, run.rank, run.world)
        rows = [train_rows[prompt_ids[p]] for p in positions for _ in range(g.group_size)]
        generators = completion_generators(cfg.train.seed, step, [p * g.group_size + j for p in positions
                                                                   for j in range(g.group_size)])
        samples = sample_and_score(base, rows, rewards, cfg, generators, eos_ids, reference=uses_reference,
                                   old_logprobs=not on_policy_only, engine=engine)

        # ---- advantages from each group; the zero-variance filter
        scores_B = samples.scores_B
        n, total_score, total_square = sum_over_processes(run, [len(scores_B), float(scores_B.sum()),
                                                                float((scores_B.double() ** 2).sum())])
        reward_std = math.sqrt(max(total_square - total_score**2 / n, 0.0) / max(n - 1, 1))
        advantages_B = group_advantages(scores_B, g.group_size, g.advantage, g.batch_std, reward_std)
        zero_variance_N = group_stats(scores_B, g.group_size)
        keep_B = (~zero_variance_N if g.drop_zero_variance_groups else torch.ones_like(zero_variance_N))
        keep_B = keep_B.repeat_interleave(g.group_size).to(samples.response_mask_BT.dtype)
        loss_mask_BT = samples.response_mask_BT * keep_B[:, None]
        run.tracker.log_rollouts(step + 1, [row["prompt"] for row in rows], samples, advantages_B, r.kl_estimator)
        counts = []  # per minibatch: completions and tokens that count, summed over processes
        for k in range(minibatches):
            part = slice(k * local_group_rows, (k + 1) * local_group_rows)
            counts += [float(keep_B[part].sum()), float(loss_mask_BT[part].sum())]
        counts = sum_over_processes(run, counts + [float(zero_variance_N.sum()), float(len(zero_variance_N))])

        # ---- update: epochs x minibatches, each process its share, train mode
        t0 = time.time()
        policy_model.train()
        sums: dict[str, float] = {"loss": 0.0}
        grad_norms, updates = [], 0
        update_logps = []  # on-policy only, with an engine: the trainer's log-probs, for the mismatch
        for _ in range(g.epochs):
            for k in range(minibatches):
                sequences, tokens = counts[2 * k], counts[2 * k + 1]
                if tokens == 0:  # every group of this minibatch was dropped, on every process
                    continue
                denominators = LossDenominators(sequences, tokens, r.max_new_tokens, cfg.train.grad_accum, run.world)
                for micro in chunks(list(range(k * local_group_rows, (k + 1) * local_group_rows)), cfg.train.grad_accum):
                    with memory_phase("update/forward"):
                        logps_BT, entropy_BT = response_logprobs(
                            base, "policy", samples.input_ids_BL[micro], samples.attention_mask_BL[micro],
                            samples.response_mask_BT[micro], r.temperature, with_entropy=True)
                        old_logps_BT = logps_BT.detach() if on_policy_only else samples.old_logps_BT[micro]
                        if on_policy_only and samples.sampler_logps_BT is not None:
                            update_logps.append((micro, old_logps_BT))
                        tis_BT = (truncated_importance_weights(old_logps_BT, samples.sampler_logps_BT[micro], r.tis_cap)
                                  if r.tis_cap is not None and samples.sampler_logps_BT is not None else None)
                        loss, stats = grpo_loss(
                            logps_BT, old_logps_BT, advantages_B[micro], loss_mask_BT[micro], denominators,
                            g.loss_aggregation, g.clip_low, g.clip_high,
                            samples.ref_logps_BT[micro] if uses_reference else None, r.kl_coef, r.kl_estimator,
                            token_weights_BT=tis_BT)
                    # x world: all_reduce_gradients AVERAGES over processes, the loss shares SUM
                    with memory_phase("update/backward"):
                        (loss * run.world).backward()
                    # the step's loss is the sum of every share: x world here, then the mean over processes
                    sums["loss"] += float(loss.detach()) * run.world
                    stats["update_entropy"] = (entropy_BT.detach() * loss_mask_BT[micro]).sum() / loss_mask_BT[micro].sum().clamp(min=1)
                    # Token means of each micro-batch, weighted by its share of the minibatch's
                    # tokens over all processes (x world: the mean over processes follows), so
                    # they sum to the minibatch's token means whatever the world size.
                    weight = run.world * float(loss_mask_BT[micro].sum()) / tokens
                    for key, value in stats.items():
                        sums[key] = sums.get(key, 0.0) + float(value) * weight
                all_reduce_gradients(params, acc)
                grad_norms.append(clip_and_step(params, optimizer, scheduler, cfg.optimizer.max_grad_norm, acc))
                updates += 1
        policy_model.eval()
        local = {**samples.stats, **{k: v / max(updates, 1) for k, v in sums.items()}, "time/update": time.time() - t0}
        local["grad_norm"] = sum(grad_norms) / max(len(grad_norms), 1)
        local.setdefault("entropy", local.get("update_entropy", 0.0))  # no old-log-prob forward: the update's
        if update_logps:  # the training-inference mismatch against the update's own (detached) log-probs
            index = [i for micro, _ in update_logps for i in micro]
            local.update(mismatch_stats(torch.cat([logps for _, logps in update_logps]), samples.sampler_logps_BT[index],
                                        samples.response_mask_BT[index]))

        # ---- statistics over processes
        metrics = mean_over_processes(run, local)
        response_tokens = metrics.pop("response_tokens") * run.world
        seconds = time.time() - t_start
        metrics.update({"reward/std": reward_std, "zero_variance_fraction": counts[-2] / max(counts[-1], 1.0),
                        "updates": float(updates), "lr": scheduler.get_last_lr()[0], "kl_coef": r.kl_coef,
                        "time/iteration": seconds, "tokens_per_s": response_tokens / max(seconds, 1e-9),
                        "peak_memory_bytes": float(peak_bytes()), **skipped.as_dict()})
        end_of_step(run, step + 1, metrics, evaluate_policy, save, bar, {"reward/score": ".3f", "zero_variance_fraction": ".2f"})
    bar.close()

    # ---- save -----------------------------------------------------------------------------------
    return finish_run(run, save, lambda run_dir: save_policy(base, run_dir), evaluate_policy, eval_before, trainable, total,
                      lambda eval_after: {
                          "reward": r.reward, "gold_reward": r.gold_reward, "group_size": g.group_size,
                          "prompts_per_iteration": g.prompts_per_iteration, "minibatch_size": g.minibatch_size,
                          "epochs": g.epochs, "advantage": g.advantage, "loss_aggregation": g.loss_aggregation,
                          "kl_coef": r.kl_coef, "completions": cfg.train.steps * g.prompts_per_iteration * g.group_size,
                          "optimizer_updates": total_updates, "memory_bytes": memory_report(base, optimizer),
                          "memory_by_role": memory_by_role(base, optimizer), "skipped_rows": skipped.total,
                      }, model=base, engine=engine)
