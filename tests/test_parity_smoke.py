"""`scripts/studies/parity.py dpo --smoke` end to end: 4 training processes (2 configurations x 2 LRs, 1
seed, a few steps on `scratch:test`), then the table and both plots. About 30-60 s on 2 cores."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_parity_smoke_writes_table_and_plots(tmp_path, repo):
    out, runs = tmp_path / "out", tmp_path / "runs"
    proc = subprocess.run(
        [sys.executable, "scripts/studies/parity.py", "dpo", "--smoke", "--runs-dir", str(runs), "--out", str(out)],
        cwd=repo, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for name in ("table.md", "table.csv", "metric_vs_lr.png", "curves.png"):
        assert (out / name).stat().st_size > 0, name
    rows = list(csv.DictReader(open(out / "table.csv")))
    assert [r["configuration"] for r in rows] == ["full", "lora_r4"]
    assert all(r["edge"] == "EDGE" for r in rows)  # 2 LRs: the best is always at an edge, and the table says so
    assert int(rows[0]["trainable_parameters"]) > int(rows[1]["trainable_parameters"]) > 0
    assert "EDGE" in (out / "table.md").read_text()
    assert len(list(runs.glob("*/summary.json"))) == 4


def test_studies_are_well_formed(repo):
    import importlib.util

    spec = importlib.util.spec_from_file_location("parity", repo / "scripts" / "studies" / "parity.py")
    parity = importlib.util.module_from_spec(spec)
    sys.modules["parity"] = parity  # dataclasses look their module up there
    spec.loader.exec_module(parity)
    assert {"dpo", "ppo", "grpo", "rm"} <= set(parity.STUDIES)
    for method, study in parity.STUDIES.items():
        if (study.out_dir or "").startswith("results/atlas/"):
            continue  # the atlas studies (tests/test_parity_dpo_gap.py, tests/test_parity_atlas.py)
        names = [c.name for c in study.configurations]
        assert names == ["full", "lora_r1", "lora_r4", "lora_r8"] and len(study.seeds) == 3, method
        full = study.configurations[0].lrs
        for c in study.configurations:
            assert len(c.lrs) >= 4 and max(c.lrs) / min(c.lrs) >= 30 - 1e-9 and c.lrs == sorted(c.lrs), (method, c.name)
        for c in study.configurations[1:]:  # LoRA's grid is centred above FullFT's (the 10x rule)
            centre = (min(c.lrs) * max(c.lrs)) ** 0.5 / (min(full) * max(full)) ** 0.5
            assert 2 <= centre <= 20, (method, c.name, centre)
