"""PPO for language models on ONE frozen base: the policy adapter and the value adapter + head train,
nothing else does. `mode: full` runs the same code with full copies (the FullFT baseline).

Run: `align train recipes/ppo_lora.yaml` (verifiable arithmetic reward), `recipes/ppo_lora_rm.yaml`
(learned reward role + gold rule beside it), `recipes/ppo_full.yaml`; 2 processes:
`accelerate launch --config_file recipes/accelerate/cpu_2proc.yaml -m align.cli train recipes/ppo_lora.yaml`.

Roles (see `align.shared_base`): policy (trainable LoRA, or started from `ppo.init_adapter`),
reference (its frozen starting point), value (trainable LoRA + scalar head, optionally copied from
the reward role), and, for a `rollout.reward` that names `learned`, the frozen reward role of an
rm_lora run. Recipe sections: `rollout:` (sampling, reward, KL; shared by on-policy methods) and
`ppo:` (batches, epochs, GAE, clipping, the value model).

One PPO iteration (`train.steps` of them), following "The N Implementation Details of RLHF with
PPO" (Huang et al.):
    rollout     sample `ppo.rollout_batch_size` prompts' responses from the policy (split over
                processes), score them; a response without EOS gets `rollout.no_stop_penalty`;
                old and reference log-probs under no_grad (`align.experience`, shared by every
                on-policy method)
    experience  values under no_grad; r_t = -kl_coef KL_t + score at the last token; GAE;
                whitened advantages (`ppo_experience`, below)
    update      `ppo.ppo_epochs` passes of minibatches (`ppo.minibatch_size` rows, split over
                processes): clipped surrogate + clipped value loss; each process backpropagates
                the mean over its equal share and `all_reduce_gradients` averages the gradients
                (no DDP wrapper: roles switch inside one step),
                clipped to `optimizer.max_grad_norm`, one AdamW with a policy and a value group
                (`ppo.value_lr`); the LR schedule runs over every optimizer step of the run
    control     the adaptive KL controller (if on) moves kl_coef towards `ppo.kl_target`

Log-probs are those of the sampled distribution (logits / `rollout.temperature`), from the one
log-prob path (`SharedBase.logprobs`), which also handles soft-capped or scaled logits.

Dropout: the base model's own dropout is removed (`align.dropout`, as TRL does) unless
`train.model_dropout: true`. Rollouts and experience run in eval mode; the update's forward runs
the trainable roles in train mode, so `lora.dropout` (and a kept model dropout) applies there, as
in OpenRLHF. With neither (the default) the two modes are the same function, so old and new
log-probs agree and the first ratio is exactly 1; with dropout the ratio starts off 1.
Rollout sampling and minibatch order draw from generators seeded by (seed, iteration, rank), so a
resumed run repeats an unbroken one exactly.

Left out: reward-model training (`align.trainers.reward`), critic-free RL, vLLM rollouts,
reference-model updates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from align.config import RecipeConfig
from align.data.batching import BatchStream, shard
from align.data.loading import SkipCounter
from align.data.prompts import load_train_and_eval_prompts
from align.experience import (
    RolloutRewards, Samples, completion_generators, eos_token_ids, gather_rollout, response_logprobs, sample_and_score,
    sampling_generator,
)
from align.lora import effective_learning_rate
from align.losses.policy import (
    AdaptiveKLController, FixedKLController, gae_advantages, masked_mean, masked_whiten, per_token_rewards,
    ppo_policy_loss, ppo_value_loss,
)
from align.memory import memory_by_role, memory_phase, memory_report, peak_bytes
from align.shared_base import SharedBase
from align.trainers.common import (
    TrainResult, add_policy_and_reference, all_reduce_gradients, checkpoint_saver, clip_and_step, end_of_step,
    evaluate_on_policy, finish_run, load_shared_base, make_optimizer, make_scheduler, mean_over_processes,
    resume_step, save_policy, shard_if_asked, start_loop, start_run,
)
from align.vllm_engine import build_rollout_engine

# ---------------------------------------------------------------- PPO's own pieces: values, GAE, loss


def response_values(base: SharedBase, input_ids_BL: torch.Tensor, attention_mask_BL: torch.Tensor, P: int) -> torch.Tensor:
    """V_t (B, T) of the value role: the state before response token t is chosen (read from the
    column that predicts it)."""
    return base.values("value", input_ids_BL, attention_mask_BL)[:, P - 1 : -1]


@dataclass
class Experience:
    """One scored rollout batch with values and advantages, ready for PPO epochs: the GLOBAL batch
    (every process's rows, in process order), so that each process can take its share of any
    minibatch and the advantages are whitened over the whole batch, whatever the world size."""

    input_ids_BL: torch.Tensor
    attention_mask_BL: torch.Tensor
    response_mask_BT: torch.Tensor
    old_logps_BT: torch.Tensor
    old_values_BT: torch.Tensor
    advantages_BT: torch.Tensor
    returns_BT: torch.Tensor

    def rows(self, index: list[int]) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name)[index] for name in (
            "input_ids_BL", "attention_mask_BL", "response_mask_BT", "old_logps_BT", "old_values_BT", "advantages_BT", "returns_BT")}


@torch.no_grad()
def ppo_experience(base: SharedBase, samples: Samples, kl_coef: float, cfg: RecipeConfig, accelerator=None) -> Experience:
    """Values of this process's rollout rows, then (over the global batch, `gather_rollout`)
    per-token rewards and GAE advantages; adds `kl` and `reward/total` to the stats."""
    t0 = time.time()
    P, mask_BT = samples.prompt_width, samples.response_mask_BT.bool()
    values = []
    for start in range(0, len(samples), cfg.rollout.forward_batch_size):
        part = slice(start, start + cfg.rollout.forward_batch_size)
        with memory_phase("values"):
            values.append(response_values(base, samples.input_ids_BL[part], samples.attention_mask_BL[part], P))
    old_values_BT = torch.where(mask_BT, torch.cat(values).float(), 0.0)
    rollout = gather_rollout(accelerator, samples, base.tokenizer.pad_token_id, old_values_BT=old_values_BT)
    mask_BT = rollout["response_mask_BT"].bool()
    # r_t = -kl_coef * KL_t, plus the score at the last response token (Ziegler et al. 2019, eq. 2)
    # No reference (a fixed kl_coef of 0): its log-probs would only enter multiplied by 0, so the
    # policy's own stand in (KL exactly 0, the same rewards) and no `kl` is logged.
    ref_logps_BT = rollout["ref_logps_BT"] if rollout["ref_logps_BT"] is not None else rollout["old_logps_BT"]
    rewards_BT, kl_BT = per_token_rewards(rollout["scores_B"], rollout["old_logps_BT"], ref_logps_BT, mask_BT,
                                          kl_coef, cfg.rollout.kl_estimator)
    if cfg.ppo.whiten_rewards:
        rewards_BT = masked_whiten(rewards_BT, mask_BT, shift_mean=False)  # rescale only (TRL 0.x)
    advantages_BT, returns_BT = gae_advantages(rewards_BT, rollout["old_values_BT"], mask_BT, cfg.ppo.gamma, cfg.ppo.lam)
    if int(mask_BT.sum()) > 1:
        advantages_BT = masked_whiten(advantages_BT, mask_BT)  # A <- (A - mean) / std over response tokens
    samples.stats.update({
        "reward/total": float(rewards_BT.sum(-1).mean()),
        "time/forward": samples.stats["time/forward"] + time.time() - t0,
    })
    if rollout["ref_logps_BT"] is not None:
        samples.stats["kl"] = float(kl_BT.sum(-1).mean())  # per-sequence KL(policy || reference), summed over tokens
    return Experience(rollout["input_ids_BL"], rollout["attention_mask_BL"], rollout["response_mask_BT"],
                      rollout["old_logps_BT"], rollout["old_values_BT"], advantages_BT, returns_BT)


def ppo_minibatch_loss(base: SharedBase, batch: dict[str, torch.Tensor], cfg: RecipeConfig) -> tuple[torch.Tensor, dict]:
    """Clipped surrogate (policy role) + value_loss_coef x clipped value loss (value role).

    loss = E_t max(-A ratio, -A clip(ratio, 1 +- eps)) + c_v * 0.5 E_t max((V - R)^2, (V_clip - R)^2)
    """
    ppo, mask_BT = cfg.ppo, batch["response_mask_BT"]
    ids_BL, attention_BL = batch["input_ids_BL"], batch["attention_mask_BL"]
    logps_BT, entropy_BT = response_logprobs(base, "policy", ids_BL, attention_BL, mask_BT, cfg.rollout.temperature,
                                             with_entropy=True)
    policy_loss, policy_stats = ppo_policy_loss(logps_BT, batch["old_logps_BT"], batch["advantages_BT"], mask_BT, ppo.clip_range)
    values_BT = response_values(base, ids_BL, attention_BL, ids_BL.shape[1] - mask_BT.shape[1]).float()
    value_loss, value_stats = ppo_value_loss(values_BT, batch["old_values_BT"], batch["returns_BT"], mask_BT, ppo.clip_range_value)
    loss = policy_loss + ppo.value_loss_coef * value_loss
    stats = {"loss/policy": policy_loss.detach(), "loss/value": value_loss.detach(),
             "update_entropy": masked_mean(entropy_BT, mask_BT), **policy_stats, **value_stats}
    return loss, stats


def _named_trainable(base: SharedBase) -> list[tuple[str, torch.nn.Parameter]]:
    """Policy and value parameters (adapters, copies, head) with stable, role-prefixed names."""
    named = []
    for role in ("policy", "value"):
        wanted = {id(p) for p in base.trainable_parameters(role)}
        for name, p in base.role_model(role).named_parameters():
            if id(p) in wanted:
                named.append((f"{role}.{name}", p))
        head = base.head(role)
        if head is not None:
            named.extend((f"{role}.head.{n}", p) for n, p in head.named_parameters() if p.requires_grad)
    return named


def _set_update_mode(base: SharedBase, training: bool) -> None:
    """Train mode for the update's forward passes, eval mode for rollouts, experience and
    evaluation (module docstring). Frozen roles run in eval mode inside their role context anyway."""
    for role in base.roles:
        base.role_model(role).train(training)
        head = base.head(role)
        if head is not None:
            head.train(training)


def train_ppo(cfg: RecipeConfig) -> TrainResult:
    # ---- setup ----------------------------------------------------------------------------------
    run = start_run(cfg)
    acc = run.accelerator
    ppo = cfg.ppo
    if ppo.rollout_batch_size % run.world or ppo.minibatch_size % run.world:
        raise SystemExit(f"ppo.rollout_batch_size and ppo.minibatch_size must divide by the {run.world} processes")
    base = load_shared_base(cfg, run)
    # A fixed kl_coef of 0 reads no reference: no reference role (full mode: no frozen copy, the
    # policy trains the loaded base in place) and no reference forward per rollout.
    uses_reference = cfg.rollout.kl_coef != 0.0 or ppo.adaptive_kl
    add_policy_and_reference(base, "rollout.init_adapter", cfg.rollout.init_adapter, reference=uses_reference)
    rewards = RolloutRewards.from_recipe(cfg, base)  # a learned reward adds the frozen reward role
    engine = build_rollout_engine(cfg, base, run.sharded)  # rollout.engine vllm; None for hf
    base.add_value(init_from_reward=ppo.value_init_from_reward)
    if ppo.value_head_init == "zero" and not ppo.value_init_from_reward:
        with torch.no_grad():
            base.head("value").weight.zero_()  # V = bias = 0 at the start; a resume loads the trained head over it
    _set_update_mode(base, False)  # eval mode except during the update's forward passes
    eos_ids = eos_token_ids(base.model, base.tokenizer)

    skipped = SkipCounter()  # prompt rows left out under data.bad_rows: skip, logged with the metrics
    train_rows, eval_rows = load_train_and_eval_prompts(cfg, skipped)
    stream = BatchStream(len(train_rows), ppo.rollout_batch_size, cfg.train.seed)
    local_rollout, local_minibatch = ppo.rollout_batch_size // run.world, ppo.minibatch_size // run.world

    policy_params, value_params = base.trainable_parameters("policy"), base.trainable_parameters("value")
    params = policy_params + value_params
    named_params = _named_trainable(base)
    policy_lr = run.derived["learning_rate"]
    value_lr = policy_lr if ppo.value_lr is None else effective_learning_rate(ppo.value_lr, cfg.mode == "lora", cfg.optimizer.lr_rule,
                                                                                 cfg.method, cfg.optimizer.lr_rule_ratios)
    shard_if_asked(run, base.model, base.all_adapter_parameters())
    optimizer = make_optimizer([{"params": policy_params, "lr": policy_lr, "name": "policy"},
                                {"params": value_params, "lr": value_lr, "name": "value"}], cfg, policy_lr)
    updates_per_iteration = ppo.ppo_epochs * (ppo.rollout_batch_size // ppo.minibatch_size)
    total_updates = cfg.train.steps * updates_per_iteration  # derived once: the schedule's length
    scheduler = make_scheduler(optimizer, cfg, total_updates)
    kl_ctl = (AdaptiveKLController(cfg.rollout.kl_coef, ppo.kl_target, ppo.kl_horizon) if ppo.adaptive_kl
              else FixedKLController(cfg.rollout.kl_coef))
    trainable = sum(p.numel() for _, p in named_params)
    every = {id(p): p for p in base.base_parameters() + base.all_adapter_parameters() + base.head_parameters()}
    total = sum(p.numel() for p in every.values())  # base + every role's adapter/copy and head

    optimizers, schedulers = {"ppo": optimizer}, {"ppo": scheduler}
    start_step = resume_step(run, named_params, optimizers, schedulers)
    if start_step:
        kl_ctl.load_state_dict(run.resumed_extra["kl_controller"])

    def save_roles(directory) -> None:  # inside a checkpoint (LoRA mode): both adapters, peft format
        base.save_role("policy", directory)
        base.save_role("value", directory.parent / "value")

    save = checkpoint_saver(run, named_params, optimizers, schedulers, save_adapter=save_roles,
                            extra=lambda: {"kl_controller": kl_ctl.state_dict()})

    def evaluate_policy() -> dict[str, float]:
        return evaluate_on_policy(run, base, eval_rows, rewards.train, eos_ids, engine)

    # ---- loop -----------------------------------------------------------------------------------
    headline = (
        f"ppo {cfg.mode}: {trainable:,} trainable of {total:,} parameters (policy + value); reward {cfg.rollout.reward}"
        f"{f' (gold: {cfg.rollout.gold_reward})' if cfg.rollout.gold_reward else ''}; {len(train_rows)} prompts "
        f"({skipped.total} skipped); lr policy {policy_lr:.3g} value {value_lr:.3g}; {cfg.train.steps} iterations x "
        f"{updates_per_iteration} updates"
    )
    eval_before, bar = start_loop(run, start_step, evaluate_policy, "ppo", headline)
    for step in range(start_step, cfg.train.steps):
        t_start = time.time()
        # ---- rollout and experience (this process's share of the prompts)
        rows = [train_rows[i] for i in shard(stream.batch(step), run.rank, run.world)]
        mine = range(run.rank * local_rollout, (run.rank + 1) * local_rollout)  # global positions of this process's rows
        samples = sample_and_score(base, rows, rewards, cfg, completion_generators(cfg.train.seed, step, list(mine)), eos_ids,
                                   reference=uses_reference, engine=engine)
        exp = ppo_experience(base, samples, kl_ctl.value, cfg, acc)
        run.tracker.log_rollouts(step + 1, [row["prompt"] for row in rows], samples,
                                 exp.advantages_BT[mine.start : mine.stop, : samples.response_mask_BT.shape[1]],
                                 cfg.rollout.kl_estimator)

        # ---- update: ppo_epochs passes of shuffled minibatches (train mode: LoRA dropout, if any)
        t0 = time.time()
        _set_update_mode(base, True)
        sums: dict[str, float] = {}
        grad_norms = []
        order_gen = sampling_generator(cfg.train.seed, step, 0, 1)  # one minibatch order for every process
        for _ in range(ppo.ppo_epochs):
            order = torch.randperm(ppo.rollout_batch_size, generator=order_gen).tolist()
            for start in range(0, ppo.rollout_batch_size, ppo.minibatch_size):
                minibatch = order[start : start + ppo.minibatch_size]
                share = minibatch[run.rank * local_minibatch : (run.rank + 1) * local_minibatch]
                batch = exp.rows(share)
                with memory_phase("update/forward"):
                    loss, stats = ppo_minibatch_loss(base, batch, cfg)
                # The losses are token means over this process's share; weighted by its share of
                # the minibatch's tokens (x world: all_reduce_gradients averages), the processes'
                # gradients average to the gradient of the token mean over the whole minibatch.
                tokens = float(batch["response_mask_BT"].sum())
                weight = run.world * tokens / max(float(exp.response_mask_BT[minibatch].sum()), 1.0) if run.world > 1 else 1.0
                with memory_phase("update/backward"):
                    (loss * weight).backward()
                all_reduce_gradients(params, acc)
                grad_norms.append(clip_and_step(params, optimizer, scheduler, cfg.optimizer.max_grad_norm, acc))
                for k, v in stats.items():  # token means too: weighted alike, they average to the minibatch's
                    sums[k] = sums.get(k, 0.0) + float(v) * weight
        _set_update_mode(base, False)
        local = {**samples.stats, **{k: v / updates_per_iteration for k, v in sums.items()}, "time/update": time.time() - t0}
        local["grad_norm"] = sum(grad_norms) / len(grad_norms)

        # ---- statistics over processes, KL control
        metrics = mean_over_processes(run, local)
        response_tokens = metrics.pop("response_tokens") * run.world
        kl_coef_used = kl_ctl.value
        if uses_reference:
            kl_ctl.update(metrics["kl"], ppo.rollout_batch_size)
        seconds = time.time() - t_start
        metrics.update({"kl_coef": kl_coef_used, "lr": scheduler.get_last_lr()[0], "lr_value": scheduler.get_last_lr()[1],
                        "time/iteration": seconds, "tokens_per_s": response_tokens / max(seconds, 1e-9),
                        "peak_memory_bytes": float(peak_bytes()), **skipped.as_dict()})
        end_of_step(run, step + 1, metrics, evaluate_policy, save, bar, {"reward/score": ".3f", "kl": ".3f"})
    bar.close()

    # ---- save -----------------------------------------------------------------------------------
    def save_outputs(run_dir) -> None:
        save_policy(base, run_dir)
        base.save_role("value", run_dir / "value")

    return finish_run(run, save, save_outputs, evaluate_policy, eval_before, trainable, total, lambda eval_after: {
        "reward": cfg.rollout.reward, "gold_reward": cfg.rollout.gold_reward, "rollout_batch_size": ppo.rollout_batch_size,
        "minibatch_size": ppo.minibatch_size, "ppo_epochs": ppo.ppo_epochs, "optimizer_updates": total_updates,
        "value_learning_rate": value_lr, "final_kl_coef": kl_ctl.value, "memory_bytes": memory_report(base, optimizer),
        "memory_by_role": memory_by_role(base, optimizer), "skipped_rows": skipped.total,
    }, model=base, engine=engine)
