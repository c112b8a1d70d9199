"""What a recipe's values must satisfy: `validate`, which `align.config.load_recipe` runs on every
recipe after its overrides, and the path rules every loader shares (`looks_like_path`,
`is_local_data`, `path_exists`).

Its functions take the typed recipe (`align.config.RecipeConfig`, annotated `Any` here) without
importing align.config, so that align.config can import them: the schema stays in config.py, the rules here. What it leaves out:
checks against the machine (the model, saved adapters, resume's checkpoint): `align.preflight`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from align.tasks import TASKS as TASK_NAMES


class ConfigError(ValueError):
    """A recipe problem, reported before anything is loaded."""


def validate(cfg: Any, source: str) -> None:
    """Every check of a recipe's values that needs no machine state beyond "does this data file
    exist": the first problem raises ConfigError naming the key and the recipe `source`. Expands
    `~` in the path keys first (the resolved config holds real paths)."""
    def bad(key: str, why: str) -> None:
        raise ConfigError(f"{source}: {key} {why}")

    _expand_home(cfg)
    if cfg.lora.rank < 1:
        bad("lora.rank", f"must be at least 1, got {cfg.lora.rank}")
    if cfg.lora.alpha <= 0:
        bad("lora.alpha", f"must be positive, got {cfg.lora.alpha}")
    if not 0 <= cfg.lora.dropout < 1:
        bad("lora.dropout", f"must be in [0, 1), got {cfg.lora.dropout}")
    if cfg.lora.embedding_alpha is not None and (cfg.lora.embedding_alpha <= 0 or cfg.lora.targets != "all+embeddings"):
        bad("lora.embedding_alpha", f"must be positive and needs lora.targets all+embeddings, got {cfg.lora.embedding_alpha} "
            f"with lora.targets {cfg.lora.targets!r}")
    if cfg.optimizer.lr < 0:
        bad("optimizer.lr", f"must not be negative, got {cfg.optimizer.lr}")
    if cfg.reward.head_lr is not None and cfg.reward.head_lr < 0:
        bad("reward.head_lr", f"must not be negative, got {cfg.reward.head_lr}")
    if cfg.optimizer.weight_decay < 0:
        bad("optimizer.weight_decay", f"must not be negative, got {cfg.optimizer.weight_decay}")
    if cfg.optimizer.warmup_steps < 0:
        bad("optimizer.warmup_steps", "must not be negative")
    if cfg.optimizer.max_grad_norm < 0:
        bad("optimizer.max_grad_norm", "must not be negative (0 disables clipping)")
    for key in ("steps", "batch_size", "grad_accum"):
        if getattr(cfg.train, key) < 1:
            bad(f"train.{key}", f"must be at least 1, got {getattr(cfg.train, key)}")
    for key in ("log_every", "eval_every", "save_every", "threads"):
        if getattr(cfg.train, key) < 0:
            bad(f"train.{key}", "must not be negative")
    if cfg.train.batch_size % cfg.train.grad_accum:
        bad(
            "train.batch_size",
            f"({cfg.train.batch_size}) must be divisible by train.grad_accum ({cfg.train.grad_accum})",
        )
    if cfg.data.max_length < 2:
        bad("data.max_length", f"must be at least 2, got {cfg.data.max_length}")
    if cfg.data.task is None and cfg.data.train_file is None:
        bad("data", "needs either data.task (a built-in task) or data.train_file")
    if cfg.data.task is not None:
        valid = set(TASK_NAMES) | {"pretrain"}  # pretrain: the built-in base's corpus
        if cfg.data.task not in valid:
            bad("data.task", f"must be one of {sorted(valid)}, got {cfg.data.task!r}")
        if getattr(TASK_NAMES.get(cfg.data.task), "chat", False) and not cfg.data.chat_template:
            bad("data.chat_template", f"must be true for the chat task {cfg.data.task!r} (its prompts are user turns "
                                      "that the model's chat template renders)")
    for key in ("train_file", "eval_file"):
        path = getattr(cfg.data, key)
        if path is not None and is_local_data(path, f"data.{key}", source) and not path_exists(path, f"data.{key}", source):
            bad(f"data.{key}", f"file not found: {path}")
    if cfg.data.num_train < 1 or cfg.data.num_eval < 1:
        bad("data.num_train/num_eval", "must be at least 1")
    if cfg.data.num_facts < 1:
        bad("data.num_facts", f"must be at least 1, got {cfg.data.num_facts}")
    if not cfg.eval.temperature > 0:
        bad("eval.temperature", f"must be > 0 (greedy is measured beside it), got {cfg.eval.temperature}")
    if cfg.eval.num_prompts < 1 or cfg.eval.max_new_tokens < 1:
        bad("eval", "num_prompts and max_new_tokens must be at least 1")
    if cfg.resume and cfg.output_dir is None:
        bad("resume", "needs output_dir: the run directory to resume")
    if cfg.distributed.strategy == "fsdp" and cfg.mode == "full":
        bad("distributed.strategy", "fsdp shards the frozen base that LoRA roles share; mode: full trains whole copies "
            "(run it with ddp, or with mode: lora)")
    if cfg.method == "dpo":
        from align.losses import PREFERENCE_LOSSES  # why: align.losses imports torch (~1.5 s measured); the CLI imports config

        if cfg.dpo.loss_type not in PREFERENCE_LOSSES:
            bad("dpo.loss_type", f"must be one of {sorted(PREFERENCE_LOSSES)}, got {cfg.dpo.loss_type!r}")
        if cfg.dpo.beta <= 0:
            bad("dpo.beta", f"must be positive, got {cfg.dpo.beta}")
        if not 0 <= cfg.dpo.label_smoothing < 0.5:
            bad("dpo.label_smoothing", "must be in [0, 0.5)")
        if cfg.dpo.label_smoothing and cfg.dpo.loss_type not in ("sigmoid", "simpo"):
            bad("dpo.label_smoothing", f"applies to the sigmoid loss only, not {cfg.dpo.loss_type!r}")
    if cfg.method in ON_POLICY_METHODS:
        _validate_rollout(cfg.rollout, bad)
        if cfg.rollout.engine == "vllm" and cfg.mode != "lora":
            bad("rollout.engine", "vllm needs mode lora: the engine syncs the policy's adapter, and a full-mode policy "
                "would have to send every weight after each update (use rollout.engine hf)")
        if cfg.rollout.tis_cap is not None and cfg.method != "grpo":
            bad("rollout.tis_cap", f"is implemented for grpo only, not {cfg.method}")
    if cfg.method == "ppo":
        p = cfg.ppo
        if p.rollout_batch_size < 1 or p.minibatch_size < 1 or p.ppo_epochs < 1:
            bad("ppo", "rollout_batch_size, minibatch_size and ppo_epochs must be at least 1")
        if p.rollout_batch_size % p.minibatch_size:
            bad("ppo.rollout_batch_size", "must be divisible by ppo.minibatch_size")
        if not (0 <= p.gamma <= 1 and 0 <= p.lam <= 1):
            bad("ppo.gamma/lam", "must be in [0, 1]")
        if p.clip_range <= 0 or p.clip_range_value <= 0:
            bad("ppo.clip_range/clip_range_value", "must be positive")
        if p.value_lr is not None and p.value_lr < 0:
            bad("ppo.value_lr", "must not be negative")
        if p.adaptive_kl and (p.kl_target <= 0 or p.kl_horizon < 1):
            bad("ppo.kl_target/kl_horizon", "must be positive for the adaptive KL controller")
        if p.value_init_from_reward and not reward_spec(cfg).uses_learned:
            bad("ppo.value_init_from_reward", "needs a learned reward (rollout.reward: learned) to copy from")
    if cfg.method == "grpo":
        g = cfg.grpo
        if g.group_size < 2:
            bad("grpo.group_size", f"must be at least 2 (advantages compare completions of one prompt), got {g.group_size}")
        if g.prompts_per_iteration < 1 or g.minibatch_size < 1 or g.epochs < 1:
            bad("grpo", "prompts_per_iteration, minibatch_size and epochs must be at least 1")
        if g.minibatch_size % g.group_size:
            bad("grpo.minibatch_size", f"({g.minibatch_size}) must be a multiple of grpo.group_size ({g.group_size}): "
                                       "a minibatch holds whole groups")
        if (g.prompts_per_iteration * g.group_size) % g.minibatch_size:
            bad("grpo.minibatch_size", f"({g.minibatch_size}) must divide prompts_per_iteration x group_size "
                                       f"({g.prompts_per_iteration * g.group_size})")
        if not 0 <= g.clip_low < 1 or g.clip_high < 0:
            bad("grpo.clip_low/clip_high", "clip_low must be in [0, 1) and clip_high at least 0")


# Methods that sample from the policy and read the `rollout:` section.
ON_POLICY_METHODS = ("ppo", "grpo")


def reward_spec(cfg: Any):
    """`rollout.reward`, parsed (`reward_models.base.RewardSpec`); valid once the recipe loaded."""
    from reward_models.base import parse_reward_spec  # why: the reward_models package imports torch (~1.5 s measured); the CLI imports config

    return parse_reward_spec(cfg.rollout.reward)


def _validate_rollout(r: Any, bad) -> None:
    from reward_models.base import LEARNED, parse_reward_spec, reward_factory  # why: as in reward_spec (torch, ~1.5 s)

    if r.temperature <= 0:
        bad("rollout.temperature", "must be positive")
    if not 0 < r.top_p <= 1:
        bad("rollout.top_p", "must be in (0, 1]")
    if r.kl_coef < 0:
        bad("rollout.kl_coef", "must not be negative")
    if r.max_new_tokens < 1 or r.forward_batch_size < 1:
        bad("rollout", "max_new_tokens and forward_batch_size must be at least 1")
    if not 0 < r.vllm_gpu_memory_utilization <= 1:
        bad("rollout.vllm_gpu_memory_utilization", f"must be in (0, 1], got {r.vllm_gpu_memory_utilization}")
    if r.vllm_kv_cache_gib <= 0:
        bad("rollout.vllm_kv_cache_gib", f"must be positive, got {r.vllm_kv_cache_gib}")
    if r.tis_cap is not None and (r.tis_cap < 1 or r.engine != "vllm"):
        bad("rollout.tis_cap", f"must be at least 1 and needs rollout.engine vllm (the hf engine samples with the trainer's own log-probs), got {r.tis_cap} with engine {r.engine!r}")
    if r.sampler not in ("auto", "multinomial") and r.engine != "hf":
        bad("rollout.sampler", f"chooses how rollout.engine=hf draws tokens; engine {r.engine!r} samples with its own sampler")
    try:
        spec = parse_reward_spec(r.reward)
    except ValueError as err:
        bad("rollout.reward", str(err))
    if spec.uses_learned and not r.reward_model:
        bad("rollout.reward_model", "is required when rollout.reward names 'learned'")
    if r.gold_reward is not None:  # one registered verifiable reward, built by name
        if r.gold_reward == LEARNED:
            bad("rollout.gold_reward", "must be a verifiable reward (the learned one is rollout.reward)")
        try:
            reward_factory(r.gold_reward)
        except ValueError as err:
            bad("rollout.gold_reward", str(err))


def looks_like_path(value: str) -> bool:
    """True for a value meant as a local path, never a hub id (`org/name`): it starts with `/`,
    `./`, `../` or `~`, has more than one `/`, or ends in a separator."""
    return (value.startswith(("/", "./", "../", "~")) or value in (".", "..") or value.count("/") > 1
            or value.endswith(("/", os.sep)))


def path_exists(path: str | os.PathLike, key: str, source: str | None = None) -> bool:
    """`Path(path).exists()`, except that a value the system cannot look up at all (a name past
    its length limit) is a ConfigError naming `key` (and the recipe `source`), not an OSError."""
    try:
        return Path(path).exists()
    except OSError as err:
        text = str(path)
        shown = text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"
        where = f"{source}: " if source else ""
        raise ConfigError(f"{where}{key}: {shown} is not a usable path ({err.strerror or type(err).__name__})") from None


DATA_SUFFIXES = (".json", ".jsonl", ".parquet")


def is_local_data(path: str, key: str, source: str | None = None) -> bool:
    """Whether a `data.*_file` value names a local file rather than a hub dataset id: it exists,
    has a data file's suffix, or is written as a path (`looks_like_path`, or starts with `.`).
    The one rule every loader and check uses; a value the system cannot look up is a ConfigError."""
    return (path.startswith(".") or os.path.splitext(path)[1] in DATA_SUFFIXES or looks_like_path(path)
            or path_exists(path, key, source))


# Every recipe key that names a local path (or may: `model` and data files may be hub ids).
PATH_KEYS = ("model", "output_dir", "data.train_file", "data.eval_file", "dpo.init_adapter", "rollout.init_adapter",
             "rollout.reward_model")


def get_dotted(cfg: Any, dotted: str) -> Any:
    """`cfg.a.b` for `dotted` "a.b"."""
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _set(cfg: Any, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        cfg = getattr(cfg, part)
    setattr(cfg, last, value)


def _expand_home(cfg: Any) -> None:
    """`~/x` -> `/home/me/x` in every path key, once, so every loader (and the resolved config)
    sees the real path."""
    for key in PATH_KEYS:
        value = get_dotted(cfg, key)
        if isinstance(value, str) and value.startswith("~"):
            _set(cfg, key, os.path.expanduser(value))
