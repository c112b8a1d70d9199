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

- `memory_phase(name)`: a context manager the trainers put around each phase of a step
  (generation's prefill and decode, old and reference log-probs, values, the update's forward and
  backward, the optimizer, evaluation). It costs nothing unless a `PhaseProfile` is recording
  (`align profile-memory`, `align.profile_memory`): then each phase gets its own peak and the
  memory it leaves behind. Per-phase peaks on CPU come from Linux's resettable high-water mark
  (`/proc/self/clear_refs`, VmHWM); on CUDA from `max_memory_allocated` with
  `reset_peak_memory_stats`, plus the allocator's reserved bytes (what it keeps).

What it leaves out: activations (they show only in the peaks), buffers (rotary tables and the
like, small), allocator fragmentation.

Run its tests: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_memory.py`.
"""

from __future__ import annotations

import ctypes
import os
import re
import resource
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

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
    rss = int(rss if sys.platform == "darwin" else rss * 1024)
    # A PhaseProfile resets the kernel's high-water mark (which ru_maxrss reads) at each phase,
    # so the process peak is the larger of the two.
    return max(rss, _PROFILE.process_peak if _PROFILE is not None else 0, _PEAK_OF_STOPPED_PROFILES)


def reset_peak(device: torch.device | str | None = None) -> None:
    """Reset the CUDA peak counter; a no-op on CPU, where the process peak cannot be reset."""
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.reset_peak_memory_stats(device)


# ---- per-phase profile ---------------------------------------------------------------------------

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def return_freed_memory(threshold_mib: float) -> bool:
    """glibc (Linux): serve allocations above `threshold_mib` from their own memory maps, unmapped
    when freed, and return free heap memory above twice that; a fixed threshold also stops glibc
    from raising it (its default grows to 32 MiB, after which freed activations stay resident and
    the resident size keeps what activation checkpointing saves). True when set; False where the
    C library is not glibc or `threshold_mib` <= 0 (then nothing changes)."""
    if threshold_mib <= 0 or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries: their own policy stays
        return False
    threshold = int(threshold_mib * 2**20)
    return mallopt(M_MMAP_THRESHOLD, threshold) == 1 and mallopt(M_TRIM_THRESHOLD, 2 * threshold) == 1


def _cpu_rss() -> int:
    """Resident bytes of this process now (Linux /proc; elsewhere the peak, an upper bound)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(rss if sys.platform == "darwin" else rss * 1024)


def _cpu_hwm() -> int:
    """The kernel's resident high-water mark (VmHWM) since it was last reset."""
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1)) * 1024


def _reset_cpu_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@dataclass
class PhaseStats:
    """One phase over all its calls: the largest peak of any call, and the memory of the last
    call before and after it (the difference is what the phase leaves behind)."""

    calls: int = 0
    peak: int = 0
    before: int = 0
    after: int = 0
    reserved_after: int | None = None  # CUDA: what the caching allocator keeps after the phase
    first_before: int | None = None  # the memory when the phase first started
    seconds: float = 0.0  # wall time in the phase, all calls

    def as_dict(self) -> dict[str, int | None]:
        return {"calls": self.calls, "peak_bytes": self.peak, "before_bytes": self.before, "after_bytes": self.after,
                "kept_bytes": self.after - self.before, "first_before_bytes": self.first_before, "seconds": round(self.seconds, 3),
                "reserved_after_bytes": self.reserved_after}


@dataclass
class _Frame:
    name: str
    before: int
    peak: int
    started: float = 0.0


@dataclass
class PhaseProfile:
    """Records `memory_phase` peaks for one process. On CUDA devices the figures are torch's
    allocated bytes; on CPU the process's resident set size (libraries and allocator slack
    included: `baseline` is what the process held before any model was built). Phases nest
    (`rollout/prefill` inside `rollout`): a parent's peak includes its children's."""

    device: str = "cpu"
    baseline: int = 0
    phases: dict[str, PhaseStats] = field(default_factory=dict)
    process_peak: int = 0
    outside_peak: int = 0
    exact_peaks: bool = True  # False where the CPU high-water mark cannot be reset (peaks then lower bounds)
    # Every call in order, repeats of the same phase merged (a decode loop is one entry):
    # [name, calls, before, peak, after]. It shows which call first raised the memory, and whether
    # the peak levels off from step to step.
    timeline: list[list[Any]] = field(default_factory=list)
    _stack: list[_Frame] = field(default_factory=list)

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def _now(self) -> int:
        if self.cuda:
            return int(torch.cuda.memory_allocated(self.device))
        return _cpu_rss()

    def _peak_since_reset(self) -> int:
        if self.cuda:
            return int(torch.cuda.max_memory_allocated(self.device))
        return _cpu_hwm() if self.exact_peaks else self._now()

    def _reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.exact_peaks:
            self.exact_peaks = _reset_cpu_hwm()

    def _note_peak(self) -> int:
        """The peak since the last reset, credited to every open phase and the process."""
        peak = self._peak_since_reset()
        for frame in self._stack:
            frame.peak = max(frame.peak, peak)
        if not self._stack:  # model loading, data, checkpoints: what no phase covers
            self.outside_peak = max(self.outside_peak, peak)
        self.process_peak = max(self.process_peak, peak)
        return peak

    def enter(self, name: str) -> None:
        self._note_peak()  # the enclosing phases keep what they reached so far
        self._reset_peak()
        path = f"{self._stack[-1].name}/{name}" if self._stack else name
        now = self._now()
        self.phases.setdefault(path, PhaseStats())  # the table lists phases in the order they first start
        self._stack.append(_Frame(path, now, now, time.perf_counter()))

    def exit(self) -> None:
        self._note_peak()
        frame = self._stack.pop()
        stats = self.phases.setdefault(frame.name, PhaseStats())
        stats.calls += 1
        stats.seconds += time.perf_counter() - frame.started
        stats.peak = max(stats.peak, frame.peak)
        stats.before, stats.after = frame.before, self._now()
        if stats.first_before is None:
            stats.first_before = frame.before
        last = self.timeline[-1] if self.timeline else None
        if last is not None and last[0] == frame.name:
            last[1] += 1
            last[3], last[4] = max(last[3], frame.peak), stats.after
        else:
            self.timeline.append([frame.name, 1, frame.before, frame.peak, stats.after])
        if self.cuda:
            stats.reserved_after = int(torch.cuda.memory_reserved(self.device))

    def as_dict(self) -> dict[str, Any]:
        self._note_peak()
        return {"device": self.device, "baseline_bytes": self.baseline, "process_peak_bytes": self.process_peak,
                "outside_phases_peak_bytes": self.outside_peak,
                "exact_peaks": self.exact_peaks, "phases": {k: v.as_dict() for k, v in self.phases.items()},
                "timeline": self.timeline}


_PROFILE: PhaseProfile | None = None
_PEAK_OF_STOPPED_PROFILES = 0  # CPU: what the kernel's counter forgot when the profiles reset it


def start_phase_profile(device: str = "cpu") -> PhaseProfile:
    """Start recording phases in this process; the baseline is the memory held right now."""
    global _PROFILE
    _PROFILE = PhaseProfile(device=str(device))
    _PROFILE.baseline = _PROFILE._now()
    _PROFILE.process_peak = max(_PROFILE.baseline, peak_bytes(None if _PROFILE.cuda else "cpu"))
    return _PROFILE


def stop_phase_profile() -> PhaseProfile | None:
    global _PROFILE, _PEAK_OF_STOPPED_PROFILES
    profile, _PROFILE = _PROFILE, None
    if profile is not None and not profile.cuda:
        _PEAK_OF_STOPPED_PROFILES = max(_PEAK_OF_STOPPED_PROFILES, profile.as_dict()["process_peak_bytes"])
    return profile


@contextmanager
def memory_phase(name: str) -> Iterator[None]:
    """Mark a phase of a step for the memory profile (a no-op unless one is recording)."""
    profile = _PROFILE
    if profile is None:
        yield
        return
    profile.enter(name)
    try:
        yield
    finally:
        profile.exit()
