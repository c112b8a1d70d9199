"""Typed recipe schema: YAML files mapped onto dataclasses, with dotted overrides and validation.

A recipe is one YAML file; `align train RECIPE.yaml key.sub=value ...` loads it, applies the
overrides, and validates everything before any model is loaded. Unknown keys, wrong types and
impossible values raise `ConfigError` naming the key and the file.

What it leaves out: checks against the machine beyond "does this data file exist" (the model,
saved adapters and reward models, resume's checkpoint), which `align.preflight.preflight` runs at
the start of every run, before anything is written or loaded.

Every field has a type, a default and a one-line docstring (the `doc` metadata), which
`align config-help` prints. Derived values (global batch, effective learning rate) are computed
in `derived()`, in one place, and logged with the resolved config.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from align.config_checks import ConfigError, path_exists, validate  # ConfigError: also align.config's, as ever


def _f(default: Any, doc: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"doc": doc}, **kw)
    return field(default=default, metadata={"doc": doc}, **kw)


@dataclass
class LoraSettings:
    rank: int = _f(8, "LoRA rank r (adapters are rank-r updates B @ A).")
    alpha: float = _f(32.0, "LoRA alpha; the update is scaled by alpha / rank (alpha / sqrt(rank) with lora.rslora).")
    targets: Literal["all", "attention", "mlp", "all+embeddings"] = _f("all", "Which layers get adapters: all (every attention and MLP linear layer of the blocks), attention, mlp, or all+embeddings (all, plus the input embeddings and the LM head as LoRA adapters on the same frozen base; with tied embeddings the embeddings only, the head keeps the shared frozen weight).")
    dropout: float = _f(0.0, "Dropout on the LoRA input.")
    rslora: bool = _f(False, "Scale the update by alpha / sqrt(rank) instead of alpha / rank (rank-stabilised LoRA, peft's use_rslora; saved in adapter_config.json, so plain peft loads it the same); false: 1/r, the scaling the LR findings and lr_rule assume.")
    embedding_alpha: Optional[float] = _f(None, "targets all+embeddings only: the alpha of the embedding and LM-head adapters (their update is scaled by embedding_alpha / rank; with Adam about an LR multiplier of embedding_alpha / alpha for them); null: alpha.")


@dataclass
class DataSettings:
    task: Optional[str] = _f("arithmetic", "Built-in task name (arithmetic, preference, facts; for a chat model: chat_arithmetic, instructions, chat_arithmetic_pairs, instructions_pairs), or null.")
    train_file: Optional[str] = _f(None, "Local JSON/JSONL/Parquet training file (or a hub id).")
    eval_file: Optional[str] = _f(None, "Local evaluation file; default: built-in task eval split.")
    max_length: int = _f(64, "Maximum tokens of prompt + completion.")
    bad_rows: Literal["error", "skip"] = _f("error", "On a malformed row: stop with an error, or skip and count it.")
    num_train: int = _f(4000, "Rows drawn from a built-in task's train split.")
    num_eval: int = _f(128, "Rows / prompts drawn from the eval split.")
    num_facts: int = _f(1024, "Facts of the built-in memorisation task `facts` (its training and evaluation set are all of them); other tasks ignore it.")
    prompt_field: str = _f("prompt", "Prompt column of a prompt file (data.train_file / data.eval_file of an on-policy run).")
    answer_field: str = _f("answer", "Answer column of a prompt file (an integer, or GSM8K-style text ending in '#### 42'); needed only by rewards that read answers (arithmetic_correctness, gold_preference).")
    dataset_config: Optional[str] = _f(None, "Config name of a hub dataset given as data.train_file (e.g. 'main' for openai/gsm8k).")
    eval_split: str = _f("test", "Split of a hub dataset used for evaluation prompts when data.eval_file is null.")
    chat_template: bool = _f(False, "Render each prompt as a user turn with the tokenizer's chat template (prompt files of on-policy runs).")


@dataclass
class OptimizerSettings:
    lr: float = _f(1e-4, "Learning rate (the FullFT LR when lr_rule is on).")
    lr_rule: bool = _f(False, "Apply the LoRA LR rule: LoRA LR = ratio x lr (lr is then the FullFT LR; see lr_rule_ratios).")
    lr_rule_ratios: Literal["lwr", "measured"] = _f("lwr", "The rule's ratio. lwr: 10 (\"LoRA Without Regret\"); measured: the ratio of best LoRA to best FullFT LR this toolkit measured for the method on its built-in tasks (align.lora.MEASURED_LR_RATIOS: sft 3, reward 4.6, dpo 1.5, ppo 4.5, grpo 10; results/atlas/lr_rule.md).")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    beta1: float = _f(0.9, "AdamW beta1.")
    beta2: float = _f(0.999, "AdamW beta2.")
    eps: float = _f(1e-8, "AdamW epsilon.")
    schedule: Literal["cosine", "linear", "constant"] = _f("cosine", "LR schedule after warmup.")
    warmup_steps: int = _f(0, "Linear warmup steps.")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm (0 disables).")


@dataclass
class TrainSettings:
    steps: int = _f(200, "Optimizer steps.")
    batch_size: int = _f(16, "Global batch (sequences per optimizer step, all processes).")
    grad_accum: int = _f(1, "Gradient accumulation steps; batch_size must divide by grad_accum x processes.")
    log_every: int = _f(10, "Log metrics every N steps.")
    eval_every: int = _f(0, "Evaluate every N steps (0: only before and after).")
    save_every: int = _f(0, "Checkpoint every N steps (0: only at the end).")
    seed: int = _f(0, "Random seed.")
    threads: int = _f(0, "torch CPU threads (0: leave torch's default).")
    model_dropout: bool = _f(False, "Keep the base model's own dropout in reward, DPO and PPO training (false: off, as TRL does; SFT always keeps it; lora.dropout is separate).")
    activation_checkpointing: Optional[bool] = _f(None, "Keep only each decoder layer's input during the forward and re-run the layer in backward (less activation memory, about a third more compute); role switches are replayed (SharedBase.enable_activation_checkpointing). null (the default): on for bases of 10M+ parameters (every real model, where stored activations, not weights, decide the peak; TRL's configs turn it on too), off for smaller ones (the built-in tiny base, where it only costs time).")
    cpu_mmap_threshold_mib: float = _f(4.0, "CPU with glibc's allocator (train.cpu_allocator glibc, or auto where neither tcmalloc nor jemalloc is installed): tensors above this many MiB get memory of their own (mmap) that goes back to the system when they are freed (align.memory.return_freed_memory). glibc's default threshold grows to 32 MiB and keeps freed activation memory resident: with it, activation checkpointing saved nothing in RSS on SmolLM2 (a GRPO update's forward +1.6 GiB against +0.24 GiB at 4 MiB; at 1 MiB +0.16 GiB but ~40% more CPU time). 0: glibc's own setting.")
    cpu_allocator: Literal["auto", "glibc", "tcmalloc", "jemalloc"] = _f("auto", "CPU runs on Linux: the C allocator (align.allocator). auto: tcmalloc where its library is installed (Debian/Ubuntu: apt-get install libtcmalloc-minimal4), else jemalloc (libjemalloc2), else glibc; glibc on a machine with an NVIDIA driver. tcmalloc or jemalloc: `align train` and `align profile-memory` start themselves again once with it in LD_PRELOAD, before torch loads. glibc keeps freed activation memory resident: SmolLM2 SFT LoRA peaked at 2.13 GiB with glibc, 1.18 GiB with tcmalloc, at 20% less CPU time, with the same metrics bit for bit (docs/memory.md). summary.json records the allocator the run had (cpu_allocator).")
    logprob_chunk_mib: float = _f(32.0, "Float32 logits the log-prob path computes at once (align.logprobs.token_logprobs): target tokens go through the LM head in chunks of this many MiB of logits, never as one (batch, tokens, vocab) tensor; a batch that fits runs in one piece. 0: never chunk.")


@dataclass
class DistributedSettings:
    strategy: Literal["ddp", "fsdp"] = _f("ddp", "How several processes hold the frozen base: ddp (a whole copy each; gradients of the small trainable parameters averaged) or fsdp (FSDP2 shards the base's weights layer by layer; adapters and heads stay whole on every process). One process: the same as ddp.")


@dataclass
class EvalSettings:
    num_prompts: int = _f(128, "Prompts for task evaluation (greedy and sampled).")
    max_new_tokens: int = _f(20, "Tokens generated per evaluation response (padded answers run to ~19).")
    enabled: bool = _f(True, "Run task evaluation before and after training.")
    temperature: float = _f(1.0, "Sampling temperature of the sampled evaluation (accuracy_sampled); chat models are usually sampled below 1.")


@dataclass
class TrackingSettings:
    wandb: bool = _f(True, "Log to wandb (offline unless logged in or WANDB_MODE is set).")
    project: str = _f("align", "wandb project.")
    run_name: Optional[str] = _f(None, "wandb run name (default: the run directory's name).")
    group: Optional[str] = _f(None, "wandb group.")
    job_type: Optional[str] = _f(None, "wandb job type (a parity study: the configuration, e.g. lora_r4).")
    tags: list[str] = _f([], "wandb tags.")
    samples: int = _f(8, "Sampled completions kept per evaluation and per RL iteration (samples.jsonl, wandb tables, `align report`); 0: none.")


@dataclass
class SFTSettings:
    completion_only_loss: bool = _f(True, "Mask prompt tokens out of the loss (False: loss on all tokens, as in pretraining).")


@dataclass
class RewardSettings:
    margin: bool = _f(False, "Use a per-pair margin column in the Bradley-Terry loss, if present.")
    readout: Literal["last_token", "last_token+logprob"] = _f(
        "last_token",
        "What the scalar head reads: the last token's hidden state, or that plus the completion's "
        "sum and mean log-prob under the reward role (see align.role_helpers.ScalarHead).",
    )
    head_lr: Optional[float] = _f(None, "Learning rate of the scalar head (default: the run's learning rate, as for the adapter or copy).")


@dataclass
class DPOSettings:
    loss_type: str = _f("sigmoid", "Preference loss from the registry: sigmoid, ipo, hinge, simpo.")
    beta: float = _f(0.1, "Strength of the KL constraint to the reference.")
    label_smoothing: float = _f(0.0, "Conservative DPO label smoothing (sigmoid loss only).")
    simpo_gamma: float = _f(0.5, "SimPO target margin gamma.")
    precompute_reference: bool = _f(False, "Compute reference log-probs once before training.")
    init_adapter: Optional[str] = _f(None, "Start the policy from this saved adapter (the reference is then that adapter); lora.rank/alpha/targets/rslora are the adapter's (recipe values left at their defaults take them, others must agree).")


@dataclass
class RolloutSettings:
    """What every on-policy method (PPO today, the GRPO family next) needs: the policy's start,
    sampling, the reward and the KL to the reference."""

    reward: str = _f("arithmetic_correctness", "Reward: a registered name, 'learned' (the reward role), or a weighted sum like '1.0*learned + 0.2*format'.")
    reward_model: Optional[str] = _f(None, "Run directory (or adapter dir) of a trained reward model, for a reward that names 'learned'.")
    gold_reward: Optional[str] = _f(None, "A verifiable reward logged beside a learned one.")
    init_adapter: Optional[str] = _f(None, "Start the policy from this saved adapter; lora.rank/alpha/targets/rslora are the adapter's (recipe values left at their defaults take them, others must agree).")
    max_new_tokens: int = _f(12, "Response length limit.")
    temperature: float = _f(1.0, "Sampling temperature (log-probs are those of the sampled distribution: logits / temperature).")
    top_p: float = _f(1.0, "Nucleus sampling p.")
    no_stop_penalty: Optional[float] = _f(-1.0, "Score given to responses that never stop (null: no penalty).")
    kl_coef: float = _f(0.05, "Coefficient of the KL to the reference (PPO: the initial KL penalty in the reward).")
    kl_estimator: Literal["k1", "k2", "k3"] = _f("k1", "Per-token KL estimator (align.losses.policy.KL_ESTIMATORS).")
    forward_batch_size: int = _f(64, "Rows per no-grad forward pass when scoring a rollout batch (memory knob).")
    sampler: Literal["auto", "multinomial", "inverse_cdf"] = _f("auto", "How rollout.engine=hf draws a sampled token (align.rollout.generate): multinomial, one torch.multinomial per completion and token from the completion's own seeded generator (on a GPU each copies the row's probabilities to that CPU generator), or inverse_cdf, each completion's uniforms drawn up front from the same generator and one batched inverse-CDF draw per token for all completions (the same per-completion seeds and independence; scripts/benchmarks/bench_sampler.py). Both are exact draws; they draw different tokens. auto: inverse_cdf on CUDA, multinomial elsewhere, so every CPU figure in results/ (measured with multinomial) still reproduces. Held-out evaluation always uses multinomial.")
    engine: Literal["hf", "vllm"] = _f("hf", "What samples rollouts and on-policy evaluation: hf (this toolkit's loop) or vllm (one vLLM engine in the training process on the frozen base, sampling through the policy adapter, which alone is synced after each update; mode lora only; needs the vllm extra, docs/vllm.md).")
    vllm_gpu_memory_utilization: float = _f(0.3, "rollout.engine=vllm on a GPU: the fraction of GPU memory vLLM may take (weights and KV cache); the trainer needs the rest.")
    vllm_kv_cache_gib: float = _f(1.0, "rollout.engine=vllm on a CPU: the KV cache vLLM allocates, in GiB, rounded up to a whole number (VLLM_CPU_KVCACHE_SPACE, unless that is set).")
    tis_cap: Optional[float] = _f(None, "Truncated importance sampling (rollout.engine=vllm, grpo): weight each token's loss by min(p_trainer / p_engine, tis_cap) of the sampled token, correcting for the engine's log-probs differing from the trainer's; null: off.")


@dataclass
class PPOSettings:
    rollout_batch_size: int = _f(32, "Prompts sampled per PPO iteration.")
    minibatch_size: int = _f(8, "Minibatch size inside each PPO epoch.")
    ppo_epochs: int = _f(2, "Passes over each rollout batch.")
    adaptive_kl: bool = _f(False, "Adapt rollout.kl_coef towards kl_target.")
    kl_target: float = _f(6.0, "Target KL for the adaptive controller.")
    kl_horizon: int = _f(10000, "Horizon of the adaptive KL controller.")
    whiten_rewards: bool = _f(False, "Whiten scores before GAE.")
    gamma: float = _f(1.0, "GAE discount.")
    lam: float = _f(0.95, "GAE lambda.")
    clip_range: float = _f(0.2, "Policy ratio clip.")
    clip_range_value: float = _f(0.2, "Value clip.")
    value_loss_coef: float = _f(0.1, "Value loss weight.")
    value_lr: Optional[float] = _f(None, "Value LR (default: the policy LR).")
    value_init_from_reward: bool = _f(False, "Initialise the value adapter and head from the reward model.")
    value_head_init: Literal["normal", "zero"] = _f("normal", "A fresh value head's weights: normal (std 1/sqrt(hidden+1)) or zero (every value starts at 0, so the first advantages are the whitened returns). A real base's final hidden states are large enough that a normal head's values swamp 0/1 rewards (explained variance -10 on SmolLM2): use zero there.")


@dataclass
class GRPOSettings:
    """Critic-free RL (the GRPO family): G completions per prompt, advantages from the group."""

    prompts_per_iteration: int = _f(16, "Prompts sampled per iteration (all processes); each gets group_size completions.")
    group_size: int = _f(8, "Completions per prompt (G), sampled in one batched generation.")
    minibatch_size: int = _f(64, "Completions per optimizer step (all processes); a multiple of group_size that divides prompts_per_iteration x group_size.")
    epochs: int = _f(1, "Passes over each generation batch (TRL's num_iterations); the importance ratio is 1 on the first.")
    advantage: Literal["grpo", "rloo", "dr_grpo"] = _f("grpo", "Advantage estimator (align.losses.grpo.ADVANTAGE_ESTIMATORS): group mean and std, leave-one-out mean, group mean only.")
    batch_std: bool = _f(False, "Divide centred rewards by the std of the whole batch instead of the group's (TRL's scale_rewards=batch).")
    loss_aggregation: Literal["grpo", "bnpo", "dapo", "dr_grpo"] = _f("grpo", "How token losses are averaged (align.losses.grpo.LOSS_AGGREGATIONS): per-sequence token mean then mean over sequences; per-micro-batch token mean; token mean over the global batch; sum / (sequences x max_new_tokens).")
    clip_low: float = _f(0.2, "Lower clip of the importance ratio: 1 - clip_low.")
    clip_high: float = _f(0.2, "Upper clip of the importance ratio: 1 + clip_high (DAPO's clip-higher uses 0.28).")
    drop_zero_variance_groups: bool = _f(False, "Leave out groups whose rewards are all equal (no signal; DAPO's dynamic-sampling filter); their fraction is logged either way.")


# Keys that moved, for a message that says where (an old recipe is an error, never silently ignored).
MOVED_KEYS = {
    **{f"ppo.{k}": f"rollout.{k}" for k in (
        "reward", "reward_model", "gold_reward", "init_adapter", "max_new_tokens", "temperature", "top_p",
        "no_stop_penalty", "kl_coef", "kl_estimator", "forward_batch_size")},
    **{f"ppo.{k}": f"data.{k}" for k in ("prompt_field", "answer_field", "dataset_config", "eval_split", "chat_template")},
}


@dataclass
class RecipeConfig:
    method: Literal["sft", "reward", "dpo", "ppo", "grpo"] = _f("sft", "Training method.")
    mode: Literal["lora", "full"] = _f("lora", "lora: train adapters on a frozen base; full: full fine-tuning.")
    model: str = _f("builtin:tiny-arith", "Built-in base (builtin:tiny-arith, shipped; builtin:smollm2-135m-instruct, fetched once), Hugging Face model id, local model folder, or local .gguf file (read dequantized in dtype).")
    dtype: Literal["float32", "bfloat16", "float16"] = _f("float32", "Weight dtype of the base model (bfloat16 on GPUs that support it).")
    output_dir: Optional[str] = _f(None, "Run directory (default: a fresh folder under runs/).")
    resume: bool = _f(False, "Continue from the last checkpoint in output_dir.")
    lora: LoraSettings = field(default_factory=LoraSettings, metadata={"doc": "LoRA settings."})
    data: DataSettings = field(default_factory=DataSettings, metadata={"doc": "Data settings."})
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings, metadata={"doc": "Optimizer settings."})
    train: TrainSettings = field(default_factory=TrainSettings, metadata={"doc": "Loop settings."})
    distributed: DistributedSettings = field(default_factory=DistributedSettings, metadata={"doc": "Several processes (launched with accelerate)."})
    eval: EvalSettings = field(default_factory=EvalSettings, metadata={"doc": "Task evaluation."})
    tracking: TrackingSettings = field(default_factory=TrackingSettings, metadata={"doc": "Tracking."})
    sft: SFTSettings = field(default_factory=SFTSettings, metadata={"doc": "SFT settings."})
    reward: RewardSettings = field(default_factory=RewardSettings, metadata={"doc": "Reward-model settings."})
    dpo: DPOSettings = field(default_factory=DPOSettings, metadata={"doc": "DPO settings."})
    rollout: RolloutSettings = field(default_factory=RolloutSettings, metadata={"doc": "On-policy sampling, reward and KL (PPO and later RL methods)."})
    ppo: PPOSettings = field(default_factory=PPOSettings, metadata={"doc": "PPO settings."})
    grpo: GRPOSettings = field(default_factory=GRPOSettings, metadata={"doc": "GRPO-family settings."})

    # ---- derived values: computed here, once, and logged -------------------------------------
    def derived(self, num_processes: int = 1) -> dict[str, Any]:
        from align.lora import effective_learning_rate  # why: align.lora imports torch and peft (~1.4 s measured); the CLI imports config

        return {
            "learning_rate": effective_learning_rate(
                self.optimizer.lr, self.mode == "lora", self.optimizer.lr_rule, self.method, self.optimizer.lr_rule_ratios
            ),
            "per_process_micro_batch": self.train.batch_size // (self.train.grad_accum * num_processes),
            "num_processes": num_processes,
            "global_batch": self.train.batch_size,
        }

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---- loading ------------------------------------------------------------------------------------

def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:  # the allowed values, not the word "Literal"
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _coerce(value, non_none[0], key, source)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{source}: {key} must be one of {list(args)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {key} must be a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} must be a mapping of settings, got {value!r}")
        return _build(tp, value, key + ".", source)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads "3e-4" (no dot) as a string; accept any plain float literal.
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {key} must be a number, got {value!r}")
        try:
            return float(value)
        except OverflowError:  # an integer too large for a float
            raise ConfigError(f"{source}: {key} must be a number within float range, got an integer of "
                              f"{value.bit_length()} bits") from None
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{source}: {key}: unsupported type {_type_name(tp)}")


def _build(cls: type, data: dict[str, Any], prefix: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names, key=str)  # YAML keys may be numbers, booleans or null
    moved = [k for k in unknown if f"{prefix}{k}" in MOVED_KEYS]
    if moved:
        old = f"{prefix}{moved[0]}"
        raise ConfigError(f"{source}: {old} has moved to {MOVED_KEYS[old]} (write it there; the value is unchanged)")
    if unknown:
        raise ConfigError(
            f"{source}: unknown key {prefix}{unknown[0]} (valid keys here: {', '.join(sorted(names))})"
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k, source) for k, v in data.items()}
    return cls(**kwargs)


def _parse_scalar(text: str, dotted: str, source: str) -> Any:
    """Parse an override value the way YAML would (numbers, booleans, null, lists)."""
    if text == "":
        return ""
    try:
        return yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, RecursionError) as err:  # ValueError: e.g. an integer past Python's digit limit
        raise ConfigError(f"{source}: override {dotted}: value {text[:80]!r} is not valid YAML ({_first_line(err)})") from None


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def apply_overrides(data: dict[str, Any], overrides: list[str], source: str) -> dict[str, Any]:
    """Apply `key.sub=value` overrides to the raw recipe mapping (before type checking)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{source}: override {item!r} is not of the form key.sub=value")
        dotted, raw = item.split("=", 1)
        parts = dotted.strip().split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{source}: override {dotted}: {part} is not a section")
        node[parts[-1]] = _parse_scalar(raw, dotted.strip(), source)
    return data


def load_recipe(path: str | os.PathLike | None, overrides: list[str] | None = None) -> RecipeConfig:
    """Load, override and validate a recipe. `path=None` starts from the defaults."""
    source = str(path) if path is not None else "<defaults>"
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not path_exists(p, "recipe"):
            raise ConfigError(f"recipe not found: {p}")
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:  # a folder, no permission, not UTF-8
            raise ConfigError(f"{source}: could not be read ({_first_line(err)})") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"{source}: not valid YAML: {err}") from None
        except (ValueError, RecursionError) as err:  # an integer past Python's digit limit, deep nesting
            raise ConfigError(f"{source}: not valid YAML: {_first_line(err)}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{source}: a recipe must be a mapping of settings")
        data = loaded or {}
    data = apply_overrides(data, overrides or [], source)
    cfg = _build(RecipeConfig, data, "", source)
    validate(cfg, source)
    return cfg


def save_resolved(cfg: RecipeConfig, path: str | os.PathLike) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def describe(cls: type = RecipeConfig, prefix: str = "") -> list[str]:
    """One line per field: dotted key, type, default, doc (used by `align config-help`)."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines.extend(describe(tp, prefix + f.name + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        lines.append(f"{prefix}{f.name}: {_type_name(tp)} = {default!r}  # {f.metadata.get('doc', '')}")
    return lines
