"""Names that changed between the transformers versions this toolkit supports, in one place.

transformers renamed gradient checkpointing to activation checkpointing: newer releases have
`model.activation_checkpointing_enable(activation_checkpointing_kwargs=..., every_n_layers=...)`
and the `TrainingArguments` field `activation_checkpointing` (keeping the old names as deprecated
aliases that warn); older ones, among them 5.19 (what vLLM's CPU build 0.32 pins), have only
`gradient_checkpointing_enable(gradient_checkpointing_kwargs=...)` and `gradient_checkpointing`.
Each helper here picks whichever name the installed transformers has, so neither a warning nor an
AttributeError/TypeError depends on the version. Nothing else lives here.

Run: `python -c "from align.compat import checkpointing_args; print(checkpointing_args(False))"`.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn


def enable_activation_checkpointing(model: nn.Module, checkpointing_kwargs: dict[str, Any] | None = None,
                                    every_n_layers: int = 1) -> None:
    """Turn on transformers' activation checkpointing of `model` (a `PreTrainedModel` or a peft
    model around one), `checkpointing_kwargs` going to `torch.utils.checkpoint`. `every_n_layers`
    other than 1 needs a transformers that has `activation_checkpointing_enable`."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=checkpointing_kwargs,
                                              every_n_layers=every_n_layers)
        return
    if every_n_layers != 1:
        raise ValueError(f"every_n_layers={every_n_layers} needs a transformers with activation_checkpointing_enable "
                         "(this one has only gradient_checkpointing_enable, which checkpoints every layer)")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing_kwargs)


def checkpointing_args(enabled: bool) -> dict[str, bool]:
    """The keyword that switches activation checkpointing in `TrainingArguments` (and TRL's configs,
    which subclass it) on this transformers: `{"activation_checkpointing": enabled}` or, on older
    releases, `{"gradient_checkpointing": enabled}`."""
    from transformers import TrainingArguments  # seconds to import; its callers build a TRL config, so they have it already

    fields = getattr(TrainingArguments, "__dataclass_fields__", {})
    name = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    return {name: enabled}
