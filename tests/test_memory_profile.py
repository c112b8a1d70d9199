"""The per-phase memory profile (`align.memory.memory_phase`, `align profile-memory`)."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from align.cli import main
from align.memory import memory_phase, peak_bytes, start_phase_profile, stop_phase_profile

MIB = 1024**2
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-phase CPU peaks read Linux's /proc")


@pytest.fixture(autouse=True)
def _no_profile_left_behind():
    yield
    stop_phase_profile()


def _touch(mib: int) -> int:
    """Allocate and write `mib` MiB (so the pages are resident), free them; returns a checksum."""
    x = torch.ones(mib * MIB // 4)
    total = int(x[:: 1024 * 1024].sum())
    del x
    return total


def test_memory_phase_is_a_no_op_without_a_profile():
    with memory_phase("anything"):
        pass
    assert stop_phase_profile() is None


@linux_only
def test_each_phase_gets_its_own_peak_and_parents_include_children():
    profile = start_phase_profile("cpu")
    with memory_phase("big"):
        _touch(256)
    with memory_phase("small"):
        with memory_phase("inner"):
            _touch(16)
    data = stop_phase_profile().as_dict()
    phases = data["phases"]
    assert list(phases) == ["big", "small", "small/inner"]  # in the order they first start
    big, small, inner = phases["big"], phases["small"], phases["small/inner"]
    assert big["peak_bytes"] - big["before_bytes"] >= 200 * MIB
    assert profile.exact_peaks
    # The 256 MiB were freed (large allocations go back to the OS): a later phase does not inherit the peak.
    assert small["peak_bytes"] < big["peak_bytes"] - 150 * MIB
    assert small["peak_bytes"] >= inner["peak_bytes"] >= inner["before_bytes"]
    assert all(p["calls"] == 1 for p in phases.values())
    assert data["process_peak_bytes"] >= big["peak_bytes"]


@linux_only
def test_peak_bytes_stays_the_process_peak_while_a_profile_resets_the_high_water_mark():
    start_phase_profile("cpu")
    with memory_phase("big"):
        _touch(256)
    with memory_phase("after"):
        assert peak_bytes("cpu") >= 256 * MIB
    profile = stop_phase_profile()
    # The kernel's own counter was reset at "after"; the process peak is still reported.
    assert peak_bytes("cpu") >= profile.phases["big"].peak


def test_calls_accumulate_and_the_peak_is_the_largest_call():
    start_phase_profile("cpu")
    for mib in (8, 64, 8):
        with memory_phase("step"):
            _touch(mib)
    stats = stop_phase_profile().phases["step"]
    assert stats.calls == 3
    assert stats.peak >= stats.before


@linux_only
@pytest.mark.parametrize("recipe", ["dpo_lora", "rm_lora"])  # rm: its summary keeps the peak's kind (a string) among the bytes
def test_align_profile_memory_runs_a_recipe_and_writes_its_table(tmp_path, capsys, recipe):
    run_dir = tmp_path / "run"
    code = main(["profile-memory", f"recipes/{recipe}.yaml", "eval.enabled=false", f"output_dir={run_dir}",
                 "train.threads=1", "--steps", "2"])
    assert code == 0
    out = capsys.readouterr().out
    assert "library baseline" in out and "process peak" in out
    saved = json.loads((run_dir / "memory_profile.json").read_text())
    phases = saved["phases"]
    for name in ("update/forward", "update/backward", "optimizer"):
        assert phases[name]["calls"] == 2, name  # one micro-batch per step here
        assert phases[name]["peak_bytes"] >= saved["baseline_bytes"]
    assert saved["process_peak_bytes"] >= max(p["peak_bytes"] for p in phases.values())
    assert any(line.startswith("accounted state:") for line in saved["table"])
    # an ordinary run: metrics and summary are there too
    assert (run_dir / "metrics.jsonl").exists() and (run_dir / "summary.json").exists()
