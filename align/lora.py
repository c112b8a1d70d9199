"""LoRA settings that follow "LoRA Without Regret" (Thinking Machines, 2025).

What it does:
- resolves a target preset (`all`, `attention`, `mlp`) into the explicit module names of the
  transformer blocks of any architecture (Llama-style `q_proj/.../down_proj`, GPT-2-style
  `c_attn/c_proj/c_fc` Conv1D layers, and others whose module names say attn/mlp);
  `all+embeddings` adds the input embeddings and the LM head (adapters on the same frozen base:
  peft's LoRA `Embedding` and `Linear` layers wrap the base modules, no weight is copied). With
  tied embeddings (the LM head's weight IS the embedding weight) only the embeddings get an
  adapter: the head keeps the frozen shared weight, so the adapter changes the input side only;
  an adapter of its own on the head would no longer be "tied". The built-in bases are untied,
  so there both get adapters;
- builds the `peft.LoraConfig` (alpha 32 by default, 1/r scaling or 1/sqrt(r) with `lora.rslora`,
  B initialised to zero);
- applies the optional learning-rate rule: LoRA LR = 10 x the FullFT LR.

What it leaves out: role handling (see `align.shared_base`).

Explicit names instead of peft's `"all-linear"`: that preset also wraps any head attached to the
model (a reward or value head), which must stay a plain trainable or frozen linear layer.
"""

from __future__ import annotations

import re

import torch.nn as nn

TARGET_PRESETS = ("all", "attention", "mlp", "all+embeddings")

# Finding 1 of "LoRA Without Regret": LoRA's best LR is ~10x FullFT's with alpha=32, 1/r scaling.
LORA_LR_MULTIPLIER = 10.0
# LoRA's best LR over FullFT's as this toolkit MEASURED it per method on its built-in tasks (alpha
# 32, 1/r, targets all): the geometric mean over ranks 1-8 (SFT: 1-32) of the ratio of the best
# points of x~3.16 LR grids, 3 seeds each (results/atlas/lr_rule.md, `python scripts/studies/atlas.py`).
# Not 10x except for GRPO; following 10x cost 0.37-0.40 of pairwise accuracy in reward modelling.
MEASURED_LR_RATIOS = {"sft": 3.0, "reward": 4.6, "dpo": 1.5, "ppo": 4.5, "grpo": 10.0}

_ATTENTION_PATTERN = re.compile(r"(^|\.)(self_attn|attn|attention|self_attention)(\.|$)")
_MLP_PATTERN = re.compile(r"(^|\.)(mlp|feed_forward|ffn|ff)(\.|$)")
# A module of a transformer block lives under a numbered layer list: model.layers.3..., h.3...
_BLOCK_PATTERN = re.compile(r"\.\d+\.")


def _is_linear(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    # GPT-2 style models use transformers' Conv1D (a linear layer with transposed weight).
    return type(module).__name__ == "Conv1D"


def resolve_target_modules(model: nn.Module, targets: str) -> list[str]:
    """Return the full module names of the linear layers that `targets` selects.

    `all` = every linear layer of attention and MLP inside the transformer blocks; heads,
    embeddings and layers outside the blocks are not targeted. `all+embeddings` = `all` plus the
    input embeddings and the LM head (`embedding_target_modules`). Scalar heads (reward, value)
    live outside the model and are never targeted.
    """
    if targets not in TARGET_PRESETS:
        raise ValueError(f"lora.targets must be one of {TARGET_PRESETS}, got {targets!r}")
    names: list[str] = []
    for name, module in model.named_modules():
        if not _is_linear(module) or not _BLOCK_PATTERN.search(f".{name}."):
            continue
        in_attention = bool(_ATTENTION_PATTERN.search(name))
        in_mlp = bool(_MLP_PATTERN.search(name))
        if targets in ("all", "all+embeddings") and (in_attention or in_mlp):
            names.append(name)
        elif targets == "attention" and in_attention:
            names.append(name)
        elif targets == "mlp" and in_mlp:
            names.append(name)
    if not names:
        raise ValueError(
            f"lora.targets={targets!r} matched no linear layer in {type(model).__name__}; "
            "its attention/MLP modules are not named like attn/self_attn/mlp"
        )
    if targets == "all+embeddings":
        names += embedding_target_modules(model)
    return names


def embeddings_tied(model: nn.Module) -> bool:
    """Whether the LM head's weight is the input embedding's weight (one tensor)."""
    inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    if inputs is None or outputs is None:
        return False
    return outputs.weight is inputs.weight or outputs.weight.data_ptr() == inputs.weight.data_ptr()


def embedding_target_modules(model: nn.Module) -> list[str]:
    """Module names of the input embeddings and the LM head, for `lora.targets: all+embeddings`.
    Tied embeddings: the embeddings only (module docstring)."""
    get_in, get_out = getattr(model, "get_input_embeddings", None), getattr(model, "get_output_embeddings", None)
    inputs, outputs = (get_in() if get_in else None), (get_out() if get_out else None)
    if not isinstance(inputs, nn.Embedding):
        raise ValueError(f"lora.targets='all+embeddings': {type(model).__name__} has no nn.Embedding input embeddings")
    wanted = [inputs] if outputs is None or embeddings_tied(model) else [inputs, outputs]
    if len(wanted) == 2 and not _is_linear(outputs):
        raise ValueError(f"lora.targets='all+embeddings': the LM head of {type(model).__name__} is a "
                         f"{type(outputs).__name__}, not a linear layer")
    names = {id(module): name for name, module in model.named_modules()}
    return [names[id(module)] for module in wanted]


def peft_lora_config(model: nn.Module, lora):
    """The `peft.LoraConfig` of a recipe's `lora:` section (`align.config.LoraSettings`): explicit
    targets, alpha/r scaling (alpha/sqrt(r) with `lora.rslora`), B initialised to zero. The one
    route every trainer takes (SFT's `get_peft_model` and `SharedBase`'s roles). Build it from the
    unwrapped model: once peft has wrapped it, its lora_A/lora_B layers are linear layers under
    attention/MLP too."""
    from peft import LoraConfig

    target_modules = resolve_target_modules(model, lora.targets)
    modules = dict(model.named_modules())
    embedding_alpha = getattr(lora, "embedding_alpha", None)
    alpha_pattern = {}
    if embedding_alpha is not None:
        if lora.targets != "all+embeddings":
            raise ValueError(f"lora.embedding_alpha is for lora.targets='all+embeddings', not {lora.targets!r}")
        alpha_pattern = {re.escape(name): float(embedding_alpha) for name in embedding_target_modules(model)}
    return LoraConfig(
        alpha_pattern=alpha_pattern,  # the embedding and LM-head adapters' own alpha (lora.embedding_alpha)
        r=int(lora.rank),
        lora_alpha=float(lora.alpha),
        lora_dropout=float(lora.dropout),
        target_modules=target_modules,
        init_lora_weights=True,  # A ~ Kaiming-uniform, B = 0: the adapter starts as the identity
        # alpha / r (the setting the LR findings were measured at), or alpha / sqrt(r) with lora.rslora
        use_rslora=bool(getattr(lora, "rslora", False)),
        bias="none",
        # GPT-2's Conv1D stores weights transposed
        fan_in_fan_out=any(type(modules[name]).__name__ == "Conv1D" for name in target_modules),
    )


def lr_rule_ratio(method: str | None, ratios: str = "lwr") -> float:
    """The rule's LoRA/FullFT LR multiplier: 10 ("lwr"), or the one measured for `method` ("measured")."""
    if ratios == "lwr":
        return LORA_LR_MULTIPLIER
    if ratios == "measured":
        if method not in MEASURED_LR_RATIOS:
            raise ValueError(f"no measured LR ratio for method {method!r}; measured: {sorted(MEASURED_LR_RATIOS)}")
        return MEASURED_LR_RATIOS[method]
    raise ValueError(f"optimizer.lr_rule_ratios must be 'lwr' or 'measured', got {ratios!r}")


def effective_learning_rate(base_lr: float, lora_enabled: bool, apply_rule: bool, method: str | None = None,
                            ratios: str = "lwr") -> float:
    """The LR actually used: `base_lr` is the FullFT LR when the rule is on (LoRA gets lr_rule_ratio x)."""
    if lora_enabled and apply_rule:
        return base_lr * lr_rule_ratio(method, ratios)
    return base_lr
