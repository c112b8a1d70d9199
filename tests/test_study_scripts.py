"""The study scripts behind the robustness figures of docs/results.md: their verdicts and tables (the
builds and runs themselves are the trainers', tested elsewhere)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts" / "studies"))
import base_robustness  # noqa: E402
import spread  # noqa: E402


def _build(seed, cap, greedy, sampled):
    q = {"accuracy_greedy": greedy, "accuracy_sampled": sampled, "accuracy_sampled_4x256": sampled}
    return {"seed": seed, "capability": cap, "eval_arithmetic": q, "build_seconds": 1.0}


def test_band_passes_only_when_every_build_is_inside():
    inside = [_build(0, "default", 0.95, 0.60), _build(0, "avx2", 0.99, 0.64), _build(1, "avx512", 0.90, 0.63)]
    ok, why, median = base_robustness.band_verdict(inside, min_greedy=0.85, sampled_band=0.05)
    assert ok and why == "" and median == 0.63

    low_greedy = inside + [_build(2, "avx2", 0.41, 0.62)]
    ok, why, _ = base_robustness.band_verdict(low_greedy, 0.85, 0.05)
    assert not ok and "seed 2/avx2: greedy 0.410 < 0.85" in why

    far = inside + [_build(2, "default", 0.97, 0.70)]
    ok, why, _ = base_robustness.band_verdict(far, 0.85, 0.05)
    assert not ok and "sampled 0.700 outside" in why


def test_table_orders_builds_and_summarises_them():
    rows = [_build(1, "avx512", 0.9, 0.6), _build(0, "AVX2", 1.0, 0.7), _build(0, "default", 0.8, 0.5)]
    lines = base_robustness.table(rows).splitlines()
    assert [line.split("|")[1:3] for line in lines[2:5]] == [[" 0 ", " default "], [" 0 ", " AVX2 "], [" 1 ", " avx512 "]]
    assert lines[-1].startswith("| all | mean ± std (min-max) | 0.900 ± 0.082 (0.800-1.000)")


def test_capabilities_are_the_levels_up_to_this_cpus(monkeypatch):
    import torch

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert base_robustness.available_capabilities() == ["default", "avx2"]
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "NO AVX")
    assert base_robustness.available_capabilities() == ["default"]


def test_spread_mean_std_is_the_population_std():
    assert spread.mean_std([0.7, 0.8, 0.9]) == "0.800 ± 0.082"
    with pytest.raises(Exception):
        spread.mean_std([])


@pytest.mark.slow
def test_ppo_vs_grpo_writes_its_table(tmp_path):
    import json

    import ppo_vs_grpo

    assert ppo_vs_grpo.main(["--seeds", "0", "--steps", "4", "--model", "scratch:test", "--runs-dir", str(tmp_path / "runs"),
                             "--out", str(tmp_path / "out")]) == 0
    table = json.loads((tmp_path / "out" / "table.json").read_text())
    assert set(table["methods"]) == {"ppo", "grpo"}
    for entry in table["methods"].values():
        assert entry["iterations_in_equal_time"][0] >= 0 and entry["state_bytes"][0] > 0
    assert "| grpo |" in (tmp_path / "out" / "table.md").read_text()


def test_spread_names_finished_runs_its_table_leaves_out(tmp_path, capsys):
    """`spread.py --seeds 0` over a runs folder that also holds seed 1 (another process finished it):
    the table has seed 0 only, and a note names s1 and how to table both. Finished runs are reused,
    so nothing trains here."""
    runs = tmp_path / "runs"
    for seed, accuracy in ((0, 0.5), (1, 0.75)):
        run = runs / f"s{seed}-avx2"
        run.mkdir(parents=True)
        (run / "summary.json").write_text(json.dumps({"eval_before": {"accuracy": 0.25}, "eval_after": {"accuracy": accuracy},
                                                      "wall_time_s": 1.0, "peak_memory_bytes": 2**30}))
    assert spread.main(["recipes/ppo_lora.yaml", "--seeds", "0", "--caps", "avx2", "--runs-dir", str(runs),
                        "--out", str(tmp_path / "out")]) == 0
    out, err = capsys.readouterr()
    assert "| 0 | avx2 | 0.250 -> 0.500 |" in out and "| 1 | avx2 |" not in out
    assert "also holds finished runs this table leaves out: s1-avx2" in err
    assert spread.main(["recipes/ppo_lora.yaml", "--seeds", "0", "1", "--caps", "avx2", "--runs-dir", str(runs),
                        "--out", str(tmp_path / "out")]) == 0
    out, err = capsys.readouterr()
    assert "| 1 | avx2 | 0.250 -> 0.750 |" in out and "leaves out" not in err
