"""Helpers of `align.shared_base` that hold no SharedBase state.

- scalar-head files (`head.safetensors`, keys `weight` and `bias`) and in-place loading of a full
  model's `save_pretrained` weights (parameters keep their identity, so optimizers stay valid);
- the activation-checkpoint `context_fn` that replays forward-time adapter switches during the
  backward recompute (see `SharedBase.enable_activation_checkpointing`).

Kept apart so that shared_base.py reads as the role logic alone.
"""

from __future__ import annotations

import json
import weakref
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

HEAD_FILE = "head.safetensors"


def hidden_size(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    size = getattr(config, "hidden_size", None) if config is not None else None
    if size is None:
        size = model.get_input_embeddings().embedding_dim
    return int(size)


def save_head(head: nn.Linear, path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in head.state_dict().items()}
    save_file(tensors, str(path / HEAD_FILE), metadata={"format": "pt"})


def read_head_state(path: Path, device: torch.device) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    head_file = path / HEAD_FILE
    if not head_file.is_file():
        raise FileNotFoundError(f"{head_file} not found: a reward/value role directory needs its scalar head")
    return load_file(str(head_file), device=str(device))


def load_full_weights(model: nn.Module, path: Path) -> None:
    """Copy the weights of a `save_pretrained` directory into `model` in place (parameters keep
    their identity, so an optimiser holding them stays valid). Tied weights may be absent."""
    from safetensors.torch import load_file

    device = next(model.parameters()).device
    index_file = path / "model.safetensors.index.json"
    if index_file.is_file():
        files = sorted(set(json.loads(index_file.read_text())["weight_map"].values()))
    elif (path / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"no model.safetensors (or index) in {path}")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(str(path / name), device=str(device)))
    result = model.load_state_dict(state, strict=False)
    # A missing key is fine only when it is tied to a loaded one (e.g. GPT-2's lm_head = wte).
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded_ptrs = {params[k].data_ptr() for k in state if k in params}
    missing = [k for k in result.missing_keys if k not in params or params[k].data_ptr() not in loaded_ptrs]
    if missing or result.unexpected_keys:
        raise ValueError(f"{path}: missing weights {missing[:5]}, unexpected {result.unexpected_keys[:5]}")


class ReplayAdapterState:
    """Re-applies the per-layer adapter switches recorded at construction (forward time) while a
    checkpointed layer is recomputed during backward, then puts back what was there."""

    def __init__(self, layers: list[nn.Module]) -> None:
        self._recorded = [(layer, layer._active_adapter, layer._disable_adapters) for layer in layers]
        self._saved: list[tuple[nn.Module, Any, bool]] = []

    def __enter__(self) -> None:
        self._saved = [(layer, layer._active_adapter, layer._disable_adapters) for layer, _, _ in self._recorded]
        for layer, active, disabled in self._recorded:
            layer._active_adapter = active
            layer._disable_adapters = disabled

    def __exit__(self, *exc: Any) -> None:
        for layer, active, disabled in self._saved:
            layer._active_adapter = active
            layer._disable_adapters = disabled


class CheckpointContextFn:
    """The `context_fn` of torch.utils.checkpoint: (forward context, recompute context). Holds the
    SharedBase weakly and survives `copy.deepcopy` of the model as itself (a bound method would
    drag the whole SharedBase into the copy)."""

    def __init__(self, shared_base: Any) -> None:
        self._base = weakref.ref(shared_base)

    def __call__(self):
        base = self._base()
        return nullcontext(), ReplayAdapterState(base._tuner_layers if base is not None else [])

    def __deepcopy__(self, memo: dict) -> "CheckpointContextFn":
        return self
