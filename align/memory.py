"""Memory accounting: what a SharedBase (and its optimiser) holds, and the process peak.

What it does:
- `memory_report(shared_base, optimizer=None)`: bytes held by base weights, adapter weights,
  heads, gradients and optimiser state, each storage counted once (tied weights, and the one
  base shared by every LoRA role, are deduplicated through `untyped_storage().data_ptr()`);
- `count_parameters(module)`: (trainable, total) parameter counts, shared storage counted once;
- `peak_bytes()`: the peak memory of this process. On GPU, `torch.cuda.max_memory_allocated()`
  (reset it with `reset_peak()`). On CPU, the peak resident set size of the whole PROCESS
  (`resource.getrusage(RUSAGE_SELF).ru_maxrss`): it covers everything the process ever held,
  never goes down and cannot be reset, which is why memory benchmarks run each mode (LoRA,
  full) in its own process.

What it leaves out: activations (they show only in the peaks), buffers (rotary tables and the
like, small), allocator fragmentation.

Run its tests: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_memory.py`.
"""

from __future__ import annotations

import resource
import sys
from typing import Any, Iterable

import torch
import torch.nn as nn

from align.distributed import local_tensor


def _storage_key(tensor: torch.Tensor) -> tuple[str, int]:
    return (str(tensor.device), tensor.untyped_storage().data_ptr())


def _unique_storage_bytes(tensors: Iterable[torch.Tensor], seen: set[tuple[str, int]]) -> int:
    """Bytes of the storages behind `tensors` not yet in `seen` (which is updated)."""
    total = 0
    for tensor in tensors:
        tensor = local_tensor(tensor)  # a base sharded with FSDP: this process's shard
        key = _storage_key(tensor)
        if key in seen:
            continue
        seen.add(key)
        total += tensor.untyped_storage().nbytes()
    return total


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    tensors = []
    for state in optimizer.state.values():
        for value in state.values():
            # Scalar step counters are tensors too; they count, they are tiny.
            if isinstance(value, torch.Tensor):
                tensors.append(value)
    return tensors


def memory_report(shared_base: Any, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """Bytes by category; each storage counted once, in the order base, adapters, heads,
    gradients, optimiser state (a storage already counted is not counted again)."""
    seen: set[tuple[str, int]] = set()
    base = shared_base.base_parameters()
    adapters = shared_base.all_adapter_parameters()
    heads = shared_base.head_parameters()
    report = {
        "base_weights": _unique_storage_bytes(base, seen),
        "adapter_weights": _unique_storage_bytes(adapters, seen),
        "heads": _unique_storage_bytes(heads, seen),
        "gradients": _unique_storage_bytes((p.grad for p in [*base, *adapters, *heads] if p.grad is not None), seen),
        "optimizer_state": _unique_storage_bytes(_optimizer_tensors(optimizer), seen) if optimizer is not None else 0,
    }
    report["total"] = sum(report.values())
    return report


def memory_by_role(shared_base: Any, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """Bytes per role: `base` (the shared base weights that no role owns: in LoRA mode the one
    frozen base), then each role's own adapter (or full copy) and head in role order (a storage
    already counted is not counted again; in full mode the base module is the role that runs on it,
    e.g. the reference), then `gradients` and `optimizer_state`; plus `total`."""
    seen: set[tuple[str, int]] = set()
    own = {id(p) for role in shared_base.roles for p in shared_base.role_parameters(role)}
    report = {"base": _unique_storage_bytes((p for p in shared_base.base_parameters() if id(p) not in own), seen)}
    for role in shared_base.roles:
        report[role] = _unique_storage_bytes(shared_base.role_parameters(role), seen)
    report["base"] += _unique_storage_bytes(shared_base.base_parameters(), seen)  # anything no role owns
    params = [*shared_base.base_parameters(), *shared_base.all_adapter_parameters(), *shared_base.head_parameters()]
    report["gradients"] = _unique_storage_bytes((p.grad for p in params if p.grad is not None), seen)
    report["optimizer_state"] = _unique_storage_bytes(_optimizer_tensors(optimizer), seen) if optimizer is not None else 0
    report["total"] = sum(report.values())
    return report


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) number of parameter elements; a tensor shared by several modules
    (tied embeddings) counts once."""
    seen: set[tuple[str, int, int, tuple[int, ...]]] = set()
    trainable = total = 0
    for _, param in module.named_parameters(remove_duplicate=False):
        key = (str(param.device), param.untyped_storage().data_ptr(), param.storage_offset(), tuple(param.shape))
        if key in seen:
            continue
        seen.add(key)
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    return trainable, total


def peak_bytes(device: torch.device | str | None = None) -> int:
    """Peak memory in bytes: CUDA's max allocated on a GPU device (default: the current one when
    CUDA is available); otherwise the peak resident memory of this whole process."""
    device = torch.device(device) if device is not None else None
    if torch.cuda.is_available() and (device is None or device.type == "cuda"):
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in kilobytes on Linux and in bytes on macOS.
    return int(rss if sys.platform == "darwin" else rss * 1024)


def reset_peak(device: torch.device | str | None = None) -> None:
    """Reset the CUDA peak counter; a no-op on CPU, where the process peak cannot be reset."""
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.reset_peak_memory_stats(device)
