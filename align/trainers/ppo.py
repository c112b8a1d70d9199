"""PPO for language models on ONE frozen base: the policy adapter and the value adapter + head train,
nothing else does. `mode: full` runs the same code with full copies (the FullFT baseline).

Run: `align train recipes/ppo_lora.yaml` (verifiable arithmetic reward), `recipes/ppo_lora_rm.yaml`
(learned reward role + gold rule beside it), `recipes/ppo_full.yaml`; 2 processes:
`accelerate launch --config_file recipes/accelerate/cpu_2proc.yaml -m align.cli train recipes/ppo_lora.yaml`.

Roles (see `align.shared_base`): policy (trainable LoRA, or started from `ppo.init_adapter`),
reference (its frozen starting point), value (trainable LoRA + scalar head, optionally copied from
the reward role), and, for `ppo.reward: learned`, the frozen reward role of an rm_lora run.

One PPO iteration (`train.steps` of them), following "The N Implementation Details of RLHF with
PPO" (Huang et al.), see `align.trainers.ppo_rollout`:
    rollout     sample `ppo.rollout_batch_size` prompts' responses from the policy (split over
                processes), score them; a response without EOS gets `ppo.no_stop_penalty`
    experience  old/reference log-probs and values under no_grad; r_t = -kl_coef KL_t + score at
                the last token; GAE; whitened advantages
    update      `ppo.ppo_epochs` passes of minibatches (`ppo.minibatch_size` rows, split over
                processes): clipped surrogate + clipped value loss; each process backpropagates
                the mean over its equal share and `all_reduce_gradients` averages the gradients
                (no DDP wrapper: roles switch inside one step),
                clipped to `optimizer.max_grad_norm`, one AdamW with a policy and a value group
                (`ppo.value_lr`); the LR schedule runs over every optimizer step of the run
    control     the adaptive KL controller (if on) moves kl_coef towards `ppo.kl_target`

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

import torch

from align.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from align.config import RecipeConfig
from align.data.batching import BatchStream, shard
from align.data.loading import SkipCounter
from align.dropout import disable_model_dropout
from align.lora import effective_learning_rate
from align.losses.policy import AdaptiveKLController, FixedKLController
from align.memory import memory_report, peak_bytes
from align.models import load_model_and_tokenizer
from align.preflight import adapter_load_errors
from align.shared_base import SharedBase
from align.trainers.common import (
    TrainResult, all_reduce_gradients, clip_and_step, evaluate, make_scheduler, start_run, summary,
)
from align.trainers.ppo_rollout import (
    build_training_reward, collect_experience, evaluate_prompts, load_prompt_rows, ppo_minibatch_loss,
)
from align.tracking import progress
from reward_models.base import LEARNED, parse_reward_spec


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


def _eos_ids(model, tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    return sorted(i for i in ids if i is not None)


def _generator(seed: int, step: int, rank: int, purpose: int = 0) -> torch.Generator:
    """A CPU generator that depends only on (seed, iteration, rank, purpose): resumable."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 1_009 + rank) * 7 + purpose)


def train_ppo(cfg: RecipeConfig) -> TrainResult:
    # ---- setup ----------------------------------------------------------------------------------
    run = start_run(cfg)
    acc = run.accelerator
    ppo = cfg.ppo
    if ppo.rollout_batch_size % run.world or ppo.minibatch_size % run.world:
        raise SystemExit(f"ppo.rollout_batch_size and ppo.minibatch_size must divide by the {run.world} processes")
    model, tokenizer = load_model_and_tokenizer(cfg.model, cfg.dtype)
    if not cfg.train.model_dropout:
        disable_model_dropout(model)  # before any role exists; lora.dropout is untouched (align.dropout)
    base = SharedBase(model.to(acc.device), tokenizer, mode=cfg.mode, lora=cfg.lora)
    with adapter_load_errors("ppo.init_adapter", ppo.init_adapter):  # a misfit: one ConfigError line
        base.add_policy(init_adapter=ppo.init_adapter)
        base.add_reference()
    learned = None
    if any(name == LEARNED for _, name in parse_reward_spec(ppo.reward)):
        from reward_models.learned import load_learned_reward

        with adapter_load_errors("ppo.reward_model", ppo.reward_model):
            learned = load_learned_reward(ppo.reward_model, base)  # adds the frozen reward role
    reward_fn = build_training_reward(ppo.reward, learned)
    gold_fn = None
    if ppo.gold_reward:
        from reward_models import build_reward

        gold_fn = build_reward(ppo.gold_reward)
    base.add_value(init_from_reward=ppo.value_init_from_reward)
    _set_update_mode(base, False)  # eval mode except during the update's forward passes
    eos_ids = _eos_ids(model, tokenizer)

    skipped = SkipCounter()  # prompt rows left out under data.bad_rows: skip, logged with the metrics
    train_rows = load_prompt_rows(cfg, "train", skipped)
    if not train_rows:
        raise SystemExit("no PPO prompts: set data.task or data.train_file")
    stream = BatchStream(len(train_rows), ppo.rollout_batch_size, cfg.train.seed)
    local_rollout, local_minibatch = ppo.rollout_batch_size // run.world, ppo.minibatch_size // run.world

    policy_params, value_params = base.trainable_parameters("policy"), base.trainable_parameters("value")
    params = policy_params + value_params
    named_params = _named_trainable(base)
    policy_lr = run.derived["learning_rate"]
    value_lr = policy_lr if ppo.value_lr is None else effective_learning_rate(ppo.value_lr, cfg.mode == "lora", cfg.optimizer.lr_rule)
    o = cfg.optimizer
    optimizer = torch.optim.AdamW(
        [{"params": policy_params, "lr": policy_lr, "name": "policy"}, {"params": value_params, "lr": value_lr, "name": "value"}],
        betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=o.weight_decay,
    )
    updates_per_iteration = ppo.ppo_epochs * (ppo.rollout_batch_size // ppo.minibatch_size)
    total_updates = cfg.train.steps * updates_per_iteration  # derived once: the schedule's length
    scheduler = make_scheduler(optimizer, cfg, total_updates)
    kl_ctl = (AdaptiveKLController(ppo.kl_coef, ppo.kl_target, ppo.kl_horizon) if ppo.adaptive_kl
              else FixedKLController(ppo.kl_coef))
    trainable = sum(p.numel() for _, p in named_params)
    every = {id(p): p for p in base.base_parameters() + base.all_adapter_parameters() + base.head_parameters()}
    total = sum(p.numel() for p in every.values())  # base + every role's adapter/copy and head

    start_step = 0
    if cfg.resume:
        ckpt = latest_checkpoint(run.run_dir)
        if ckpt is None:
            raise SystemExit(f"resume=true but {run.run_dir} has no checkpoint")
        state = load_checkpoint(ckpt, named_params, {"ppo": optimizer}, {"ppo": scheduler})
        start_step = state["step"]
        kl_ctl.load_state_dict(state["extra"]["kl_controller"])
        run.tracker.truncate_after(start_step)
        run.print(f"resumed from {ckpt} at step {start_step}")

    def save(step: int) -> None:
        if run.is_main:
            def save_roles(d):
                base.save_role("policy", d)
                base.save_role("value", d.parent / "value")

            save_checkpoint(run.run_dir, step, named_params, {"ppo": optimizer}, {"ppo": scheduler},
                            extra={"kl_controller": kl_ctl.state_dict()},
                            save_adapter=save_roles if cfg.mode == "lora" else None)
        acc.wait_for_everyone()

    eval_rows = load_prompt_rows(cfg, "eval", skipped) if cfg.data.task is None and cfg.eval.enabled else []

    def evaluate_policy() -> dict[str, float]:
        with base.role("policy") as policy_model:  # generation with the policy adapter active
            metrics = evaluate(run, policy_model, tokenizer)  # built-in task: greedy/sampled accuracy
        if eval_rows:  # a prompt file: the training reward of greedy/sampled responses
            metrics = evaluate_prompts(base, eval_rows, reward_fn, cfg, eos_ids) if run.is_main else {}
            acc.wait_for_everyone()
        return metrics

    run.print(
        f"ppo {cfg.mode}: {trainable:,} trainable of {total:,} parameters (policy + value); reward {ppo.reward}"
        f"{f' (gold: {ppo.gold_reward})' if ppo.gold_reward else ''}; {len(train_rows)} prompts ({skipped.total} skipped); "
        f"lr policy {policy_lr:.3g} value {value_lr:.3g}; {cfg.train.steps} iterations x {updates_per_iteration} updates; "
        f"run dir {run.run_dir}"
    )
    eval_before = evaluate_policy() if start_step == 0 else {}
    if eval_before:
        run.tracker.log({f"eval/{k}": v for k, v in eval_before.items()}, step=0)

    # ---- loop -----------------------------------------------------------------------------------
    bar = progress(total=cfg.train.steps, desc="ppo", initial=start_step)
    for step in range(start_step, cfg.train.steps):
        t_start = time.time()
        # ---- rollout and experience (this process's share of the prompts)
        rows = [train_rows[i] for i in shard(stream.batch(step), run.rank, run.world)]
        exp = collect_experience(base, rows, reward_fn, gold_fn, kl_ctl.value, cfg,
                                 _generator(cfg.train.seed, step, run.rank), eos_ids)

        # ---- update: ppo_epochs passes of shuffled minibatches (train mode: LoRA dropout, if any)
        t0 = time.time()
        _set_update_mode(base, True)
        sums: dict[str, float] = {}
        grad_norms = []
        order_gen = _generator(cfg.train.seed, step, run.rank, 1)
        for _ in range(ppo.ppo_epochs):
            order = torch.randperm(local_rollout, generator=order_gen).tolist()
            for start in range(0, local_rollout, local_minibatch):
                batch = exp.rows(order[start : start + local_minibatch])
                loss, stats = ppo_minibatch_loss(base, batch, exp.prompt_width, cfg)
                loss.backward()
                # Each process holds an equal share of the minibatch and the mean over it; the
                # average of those gradients over processes is the gradient of the global mean.
                all_reduce_gradients(params, acc)
                grad_norms.append(clip_and_step(params, optimizer, scheduler, cfg.optimizer.max_grad_norm, acc))
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
        _set_update_mode(base, False)
        t_update = time.time() - t0
        local = {**exp.stats, **{k: v / updates_per_iteration for k, v in sums.items()}, "time/update": t_update}
        local["grad_norm"] = sum(grad_norms) / len(grad_norms)

        # ---- statistics over processes, KL control
        keys = sorted(local)
        reduced = acc.reduce(torch.tensor([local[k] for k in keys], dtype=torch.float64, device=acc.device), reduction="mean")
        metrics = dict(zip(keys, reduced.tolist()))
        response_tokens = metrics.pop("response_tokens") * run.world
        kl_coef_used = kl_ctl.value
        kl_ctl.update(metrics["kl"], ppo.rollout_batch_size)
        seconds = time.time() - t_start
        metrics.update({"kl_coef": kl_coef_used, "lr": scheduler.get_last_lr()[0], "lr_value": scheduler.get_last_lr()[1],
                        "time/iteration": seconds, "tokens_per_s": response_tokens / max(seconds, 1e-9),
                        "peak_memory_bytes": float(peak_bytes()), **skipped.as_dict()})
        bar.update(1)
        bar.set_postfix(score=f"{metrics['reward/score']:.3f}", kl=f"{metrics['kl']:.3f}")

        done = step + 1
        if cfg.train.log_every and (done % cfg.train.log_every == 0 or done == cfg.train.steps):
            run.tracker.log(metrics, step=done)
        if cfg.train.eval_every and done % cfg.train.eval_every == 0 and done != cfg.train.steps:
            metrics = evaluate_policy()
            if metrics:
                run.tracker.log({f"eval/{k}": v for k, v in metrics.items()}, step=done)
        if cfg.train.save_every and done % cfg.train.save_every == 0 and done != cfg.train.steps:
            save(done)
    bar.close()

    # ---- save -----------------------------------------------------------------------------------
    save(cfg.train.steps)
    if run.is_main:
        out = run.run_dir / ("adapter" if cfg.mode == "lora" else "model")
        base.save_role("policy", out)
        tokenizer.save_pretrained(out)
        base.save_role("value", run.run_dir / "value")
    eval_after = evaluate_policy()
    if eval_after:
        run.tracker.log({f"eval/{k}": v for k, v in eval_after.items()}, step=cfg.train.steps)
    result = summary(run, eval_before, eval_after, trainable, total, {
        "reward": ppo.reward, "gold_reward": ppo.gold_reward, "rollout_batch_size": ppo.rollout_batch_size,
        "minibatch_size": ppo.minibatch_size, "ppo_epochs": ppo.ppo_epochs, "optimizer_updates": total_updates,
        "value_learning_rate": value_lr, "final_kl_coef": kl_ctl.value, "memory_bytes": memory_report(base, optimizer),
        "skipped_rows": skipped.total,
    })
    run.tracker.finish(result)
    acc.wait_for_everyone()
    acc.end_training()
    return TrainResult(str(run.run_dir), base, result)
