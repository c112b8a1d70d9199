"""Sharding the frozen base across processes with FSDP2 (`distributed.strategy: fsdp`).

What it does:
- `shard_frozen_base(model, keep_whole)`: `torch.distributed.fsdp.fully_shard` on every decoder
  layer of the causal LM inside `model` (the classes its `_no_split_modules` names), then on the
  causal LM itself (embeddings, final norm, LM head). Each process then holds 1/world of every
  base weight between forwards; a forward gathers one layer at a time.
- The parameters in `keep_whole` (every LoRA adapter, trainable or frozen) are FSDP's
  `ignored_params`: they stay ordinary tensors, whole on every process. Adapters are a fraction
  of a percent of the weights, so sharding them would save nothing worth the cost, and keeping
  them whole keeps everything else as it is under ddp: gradients are averaged by hand
  (`align.trainers.common.all_reduce_gradients`), the optimizer steps plain tensors, checkpoints
  and `adapter/` are written by the main process in plain peft format, and resume loads them
  into any number of processes. Scalar heads live outside the model and stay whole too.
- Role switching is untouched: roles write peft's per-layer switches, which FSDP never sees;
  `requires_grad` and train/eval flags are not FSDP's business either (tests/test_fsdp.py).
- `is_sharded(model)`; `every_process(flag, model)`: whether every process says `flag`, the
  agreement a sharded model needs wherever processes could otherwise run different numbers of
  forwards (generation stops when every process's rows have stopped).
- `final_hidden_states_of_sharded(lm, ...)`: the final hidden states through the causal LM's own
  forward. FSDP gathers the root's weights (embeddings, norm, LM head) in the root module's
  forward hook, so the log-prob path, which otherwise calls the backbone directly and applies
  the LM head itself, enters through the root here (asking for the last position's logits only).

What it leaves out: sharding full-mode copies (mode: full runs under ddp; config validation
says so), tensor or pipeline parallelism, CPU offload, DeepSpeed (docs/scaling.md).

Run its tests: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_fsdp.py`.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn


def causal_lm(model: nn.Module) -> nn.Module:
    """The transformers causal LM inside a peft wrapper (itself otherwise)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_layers(lm: nn.Module) -> list[nn.Module]:
    """The modules FSDP shards one by one: those whose class a `_no_split_modules` list names
    (transformers' own unit of sharding, e.g. `LlamaDecoderLayer`, `Qwen2DecoderLayer`)."""
    names: set[str] = set()
    for module in lm.modules():
        names |= set(getattr(module, "_no_split_modules", None) or [])
    return [m for m in lm.modules() if type(m).__name__ in names]


def shard_frozen_base(model: nn.Module, keep_whole: Iterable[nn.Parameter]) -> int:
    """Shard `model`'s causal LM layer by layer with FSDP2, leaving `keep_whole` whole on every
    process; returns the number of decoder layers sharded. Needs an initialised process group."""
    from torch.distributed.fsdp import fully_shard

    lm = causal_lm(model)
    layers = decoder_layers(lm)
    if not layers:
        raise ValueError(
            f"{type(lm).__name__} names no decoder-layer class in _no_split_modules, so it cannot be sharded "
            "layer by layer; run it with distributed.strategy: ddp"
        )
    keep = set(keep_whole)
    for layer in layers:
        fully_shard(layer, ignored_params=keep & set(layer.parameters()))
    fully_shard(lm, ignored_params=keep & set(lm.parameters()))
    return len(layers)


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(causal_lm(model), FSDPModule)


def every_process(flag: bool, model: nn.Module) -> bool:
    """`flag` on every process (one all-reduce) when `model` is sharded; `flag` otherwise."""
    if not is_sharded(model):
        return flag
    import torch.distributed as dist

    device = local_tensor(next(causal_lm(model).parameters())).device  # NCCL reduces CUDA tensors only
    agreed = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
    return bool(agreed.item())


def final_hidden_states_of_sharded(lm: nn.Module, input_ids_BT: torch.Tensor, attention_mask_BT: torch.Tensor,
                                   position_ids_BT: torch.Tensor) -> torch.Tensor:
    """The backbone's `last_hidden_state` (after the final norm), read by a hook during the causal
    LM's own forward, so that FSDP's root hooks gather the embeddings, norm and LM head."""
    captured: dict[str, torch.Tensor] = {}

    def keep(_module, _args, _kwargs, output):
        captured["hidden"] = output.last_hidden_state

    handle = lm.base_model.register_forward_hook(keep, with_kwargs=True)
    try:
        lm(input_ids=input_ids_BT, attention_mask=attention_mask_BT, position_ids=position_ids_BT,
           use_cache=False, logits_to_keep=1)
    finally:
        handle.remove()
    return captured["hidden"]


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """This process's shard of a sharded (DTensor) tensor; the tensor itself otherwise."""
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor
