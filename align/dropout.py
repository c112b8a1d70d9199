"""The base model's own dropout in preference and RL training: off by default, as in TRL.

DPO compares the policy with a reference that runs in eval mode; with the model's dropout on in
the policy, policy != reference at step 0 (a GPT-2 config has 0.1 everywhere: the first DPO loss
is no longer ln 2) and the loss is no longer TRL's. TRL's DPO, reward and GRPO trainers call
`trl.trainer.utils.disable_dropout_in_model` (`p = 0` on every `nn.Dropout`). The reward, DPO and
PPO trainers here call `disable_model_dropout` on the loaded model before any role exists, unless
the recipe sets `train.model_dropout: true`. SFT keeps the model's dropout (it has no reference).

Differences from TRL's helper, on purpose:
- LoRA's own dropout (`lora.dropout`, peft's `lora_dropout` modules) is the recipe's choice and is
  never touched, even if the model is already wrapped by peft;
- attention dropout that a model keeps as a float attribute rather than an `nn.Dropout` (Llama,
  Qwen, Mistral, ...: `self.attention_dropout`, read as `0.0 if not self.training else ...`) is
  zeroed too; TRL's helper misses it.
The model's `config` is left as it is (it is what gets saved; the modules read it only at init).

Run its tests: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_model_dropout.py`.
"""

from __future__ import annotations

from typing import Iterator

import torch.nn as nn


def _adapter_module_ids(model: nn.Module) -> set[int]:
    """Modules that belong to peft adapters (LoRA A/B, lora_dropout, ...), not to the base."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # pragma: no cover - peft is a dependency
        return set()
    ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            base_ids = {id(m) for m in module.get_base_layer().modules()}
            ids.update(id(m) for m in module.modules() if m is not module and id(m) not in base_ids)
    return ids


def _dropout_sites(model: nn.Module) -> Iterator[tuple[nn.Module, str]]:
    """(module, attribute) of every dropout probability of `model`'s own layers: `p` of each
    `nn.Dropout` (any subclass), and float attributes whose name contains "drop" (e.g. Llama's
    `attention_dropout`). LoRA's modules are skipped."""
    adapters = _adapter_module_ids(model)
    for module in model.modules():
        if id(module) in adapters:
            continue
        if isinstance(module, nn.modules.dropout._DropoutNd):
            yield module, "p"
            continue
        for name, value in list(vars(module).items()):
            if "drop" in name.lower() and type(value) is float:
                yield module, name


def disable_model_dropout(model: nn.Module) -> int:
    """Set every dropout probability of `model`'s own layers to 0 (LoRA dropout excluded).
    Returns how many were non-zero."""
    changed = 0
    for module, name in _dropout_sites(model):
        changed += getattr(module, name) > 0
        setattr(module, name, 0.0)
    return changed


def model_dropout_probabilities(model: nn.Module) -> list[float]:
    """The non-zero dropout probabilities of `model`'s own layers (LoRA dropout excluded): []
    after `disable_model_dropout`."""
    return [float(getattr(m, name)) for m, name in _dropout_sites(model) if getattr(m, name) > 0]
