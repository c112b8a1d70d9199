"""Helpers of `align.shared_base` that hold no SharedBase state.

- `ScalarHead`, the scalar head of the reward and value roles, and its files (`head.safetensors`,
  keys `weight` and `bias`, plus `logprob_weight` for the `last_token+logprob` readout);
- in-place loading of a full model's `save_pretrained` weights (parameters keep their identity,
  so optimizers stay valid);
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

import math

import torch
import torch.nn as nn

HEAD_FILE = "head.safetensors"
READOUTS = ("last_token", "last_token+logprob")


def check_readout(readout: str) -> None:
    if readout not in READOUTS:
        raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")


class ScalarHead(nn.Linear):
    """A role's scalar head: `w . h + b` on a final hidden state (after the final norm), float32.

    Readouts (what a reward score reads; values are always the per-token `w . h_t + b`):
      last_token          w . h_last + b, h_last = the last real token's hidden state. The usual
                          reward-model head (TRL's, OpenRLHF's, InstructGPT's).
      last_token+logprob  w . h_last + b + a_sum * sum_t log p(y_t) + a_mean * mean_t log p(y_t),
                          with log p(y_t) the completion's token log-probs under the SAME role
                          (its adapter on), from the same forward. `a` starts at zero, so the
                          head starts as `last_token`. The completion's likelihood under the
                          model is the signal DPO and SimPO train as an implicit reward (Rafailov
                          et al. 2023; Meng et al. 2024 use the length-normalised mean); here the
                          Bradley-Terry loss trains it next to the hidden-state head. It helps
                          where the judgement is something the LM predicts token by token (is
                          each digit the one it expected?) but a shallow model cannot gather at
                          the last position: on the built-in 2-layer base, a linear probe of the
                          last hidden state separates right from wrong answers at 0.58, the
                          completion log-prob at 0.95 (docs/results.md, reward model).

    A subclass of `nn.Linear`, so `weight`/`bias` and the saved keys stay those of a linear head."""

    def __init__(self, hidden_size: int, readout: str = "last_token", device: Any = None) -> None:
        check_readout(readout)
        super().__init__(hidden_size, 1, device=device, dtype=torch.float32)
        nn.init.normal_(self.weight, std=1.0 / math.sqrt(hidden_size + 1))
        nn.init.zeros_(self.bias)
        self.readout = readout
        if readout == "last_token+logprob":
            self.logprob_weight = nn.Parameter(torch.zeros(2, device=device, dtype=torch.float32))
        else:
            self.register_parameter("logprob_weight", None)

    @property
    def uses_logprobs(self) -> bool:
        return self.logprob_weight is not None

    def score(self, last_BH: torch.Tensor, logprob_features_B2: torch.Tensor | None = None) -> torch.Tensor:
        """Scores (B,) from the last real token's hidden state and, for `last_token+logprob`, the
        completion's (sum, mean) token log-prob (B, 2)."""
        score_B = self(last_BH.to(self.weight.dtype)).squeeze(-1)
        if self.logprob_weight is None:
            return score_B
        if logprob_features_B2 is None:
            raise ValueError("the last_token+logprob readout needs the completion's log-probs (pass completion_mask)")
        return score_B + logprob_features_B2.to(self.weight.dtype) @ self.logprob_weight

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, readout={self.readout}"


def readout_of_state(state: dict[str, torch.Tensor]) -> str:
    """The readout a saved head state was trained with (`logprob_weight` present or not)."""
    return "last_token+logprob" if "logprob_weight" in state else "last_token"


def hidden_size(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    size = getattr(config, "hidden_size", None) if config is not None else None
    if size is None:
        size = model.get_input_embeddings().embedding_dim
    return int(size)


def save_head(head: ScalarHead, path: Path) -> None:
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
