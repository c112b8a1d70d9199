"""`align profile-memory RECIPE [key=value ...] [--steps N]`: where a recipe's memory goes, phase by
phase.

It runs the recipe's own trainer for a few steps (default 2: the second runs with the optimizer's
state allocated, as every later step does) with a `align.memory.PhaseProfile` recording, then
prints one row per phase of a step (generation's prefill and decode, old and reference
log-probs, values, the update's forward and backward, the optimizer, evaluation) with its peak and
what it left behind, the library baseline (the process after importing torch, transformers, peft
and the trainer, before any model loads), and the accounted state (`align.memory.memory_report`:
base, adapters, heads, gradients, optimizer) from the run's summary. The same table goes to
`memory_profile.json` in the run directory.

On CPU the figures are the process's resident set size (RSS: libraries, allocator slack and freed
memory the C allocator keeps included), each phase's peak from Linux's resettable high-water mark;
on CUDA they are torch's allocated bytes (`max_memory_allocated` per phase), with what the caching
allocator reserves beside them. The run is a normal run (its own run directory, metrics,
checkpoints): pass `eval.enabled=false` to leave evaluation out, `output_dir=...` to place it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch

from align.config import RecipeConfig
from align.memory import PhaseProfile, start_phase_profile, stop_phase_profile

GIB = 1024**3
MIB = 1024**2


def profile_device() -> str:
    """The device whose memory the profile reads: the trainer's GPU when CUDA is there."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def profile_run(cfg: RecipeConfig, trainer: Callable[[RecipeConfig], Any]) -> tuple[PhaseProfile, Any]:
    """Run `trainer(cfg)` with a phase profile recording; returns (profile, the trainer's result)."""
    device = profile_device()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    profile = start_phase_profile(device)
    try:
        result = trainer(cfg)
    finally:
        stop_phase_profile()
    return profile, result


def _summary(run_dir: str | None) -> dict[str, Any]:
    path = Path(run_dir) / "summary.json" if run_dir else None
    return json.loads(path.read_text()) if path is not None and path.exists() else {}


def is_role_bytes(key: str, value) -> bool:
    """An entry of memory_bytes / memory_by_role that is one role's bytes (not the total, nor the
    measured peak and its kind that the summary keeps beside them)."""
    return key not in ("total", "peak_measured") and isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def format_profile(profile: PhaseProfile, cfg: RecipeConfig, recipe: str, run_dir: str | None) -> list[str]:
    """The printed table (also what `write_profile` stores beside the numbers)."""
    data = profile.as_dict()
    base = data["baseline_bytes"]
    kind = "CUDA allocated bytes" if profile.cuda else "CPU resident set size (RSS)"
    lines = [
        f"memory profile of {recipe} ({cfg.method}, {cfg.mode}, {cfg.train.steps} steps; {kind})",
        f"library baseline (torch, transformers, peft and the trainer imported; no model): {base / GIB:.2f} GiB",
        f"{'phase':<28}{'calls':>6}{'peak GiB':>10}{'peak-base':>11}{'kept MiB':>10}{'seconds':>9}"
        + (f"{'reserved GiB':>14}" if profile.cuda else ""),
        f"{'(outside phases: load, save)':<28}{'':>6}{data['outside_phases_peak_bytes'] / GIB:>10.2f}"
        f"{(data['outside_phases_peak_bytes'] - base) / GIB:>11.2f}{'':>10}{'':>9}",
    ]
    for name, stats in data["phases"].items():
        row = (f"{name:<28}{stats['calls']:>6}{stats['peak_bytes'] / GIB:>10.2f}{(stats['peak_bytes'] - base) / GIB:>11.2f}"
               f"{stats['kept_bytes'] / MIB:>10.0f}{stats['seconds']:>9.1f}")
        if profile.cuda:
            row += f"{(stats['reserved_after_bytes'] or 0) / GIB:>14.2f}"
        lines.append(row)
    peak = data["process_peak_bytes"]
    top = max(data["phases"].items(), key=lambda kv: kv[1]["peak_bytes"], default=None)
    lines.append(f"process peak: {peak / GIB:.2f} GiB ({(peak - base) / GIB:.2f} GiB above the baseline)"
                 + (f"; the highest phase: {top[0]}" if top else ""))
    if not data["exact_peaks"]:
        lines.append("note: this system does not let a process reset its memory high-water mark, so phase peaks are "
                     "the memory at the phase's start and end (lower bounds)")
    summary = _summary(run_dir)
    for key, title in (("memory_bytes", "accounted state"), ("memory_by_role", "by role")):
        if summary.get(key):
            parts = ", ".join(f"{k} {v / MIB:.1f} MiB" for k, v in summary[key].items() if is_role_bytes(k, v))
            lines.append(f"{title}: {parts}; total {summary[key].get('total', 0) / MIB:.0f} MiB")
    if run_dir:
        lines.append(f"run dir: {run_dir}")
    return lines


def write_profile(profile: PhaseProfile, lines: list[str], run_dir: str) -> Path:
    path = Path(run_dir) / "memory_profile.json"
    path.write_text(json.dumps({**profile.as_dict(), "table": lines}, indent=2) + "\n")
    return path
