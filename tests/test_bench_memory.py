"""`scripts/benchmarks/bench_memory.py --quick`: the table's format, the last line, and LoRA's peak below full's.

Runs the benchmark as a user would (a subprocess; it starts one process per case itself) on its
6M-parameter config: about a minute on 2 CPU cores, most of it importing torch five times.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest


def test_bench_memory_quick(repo):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(repo / "scripts" / "benchmarks" / "bench_memory.py"), "--quick"],
                          capture_output=True, text=True, env=env, cwd=repo, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert re.fullmatch(r"peak memory ratio lora/full: \d\.\d\d", lines[-1]), lines[-1]
    assert any(line.startswith("baseline") and "MiB" in line for line in lines)
    rows = {}
    for line in lines:
        parts = line.split()
        if parts and parts[0] in ("lora", "full") and len(parts) >= 6:
            rows[parts[0]] = {"params": int(parts[2].replace(",", "")), "peak": float(parts[3].replace(",", "")),
                              "accounted": float(parts[5].replace(",", ""))}
    assert set(rows) == {"lora", "full"}
    assert rows["lora"]["params"] == rows["full"]["params"] > 1_000_000
    assert rows["lora"]["peak"] < rows["full"]["peak"]
    assert rows["lora"]["accounted"] < rows["full"]["accounted"]
    ratio = float(lines[-1].rsplit(" ", 1)[1])
    assert ratio == round(rows["lora"]["peak"] / rows["full"]["peak"], 2) or abs(ratio - rows["lora"]["peak"] / rows["full"]["peak"]) < 0.011


def test_smollm2_bench_gives_each_side_by_side_case_its_own_cpu_time(repo):
    """`bench_memory_smollm2.run_child` (what `--jobs` stands on): two children at once, one busy
    for ~0.4 CPU s and one asleep, each get their own CPU seconds, exit code and output."""
    import importlib.util
    from concurrent.futures import ThreadPoolExecutor

    spec = importlib.util.spec_from_file_location("bench_memory_smollm2", repo / "scripts" / "benchmarks" / "bench_memory_smollm2.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    busy = [sys.executable, "-c", "import time; t = time.process_time()\nwhile time.process_time() - t < 0.4: pass\nprint('busy')"]
    idle = [sys.executable, "-c", "import sys, time; time.sleep(0.5); print('idle'); sys.exit(3)"]
    with ThreadPoolExecutor(2) as pool:
        busy_result, idle_result = pool.map(lambda cmd: bench.run_child(cmd, dict(os.environ), str(repo)), [busy, idle])
    assert busy_result[0] == 0 and busy_result[1].strip() == "busy" and busy_result[3] >= 0.4
    assert idle_result[0] == 3 and idle_result[1].strip() == "idle" and idle_result[3] < 0.35  # interpreter start-up only


def test_smollm2_bench_removes_its_run_folders(repo, monkeypatch, tmp_path, capsys):
    """The benchmark's cases write full-mode checkpoints (~13 GB in all) under one temporary folder:
    it is removed when the command ends, also when a case fails (three left behind once filled a disk)."""
    import importlib.util
    import tempfile

    spec = importlib.util.spec_from_file_location("bench_memory_smollm2", repo / "scripts" / "benchmarks" / "bench_memory_smollm2.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    made = []
    monkeypatch.setattr(tempfile, "mkdtemp", lambda prefix: made.append(tmp_path / prefix) or (tmp_path / prefix).mkdir() or str(tmp_path / prefix))

    def case(method, mode, work, *args, **kwargs):
        (work / f"{method}_{mode}").mkdir()
        (work / f"{method}_{mode}" / "trainable.safetensors").write_bytes(b"0" * 1024)
        return {"case": f"{method} {mode}", "allocator": "glibc", "peak": 2.0 * 2**30 if mode == "full" else 2**30,
                "baseline": 0.5 * 2**30, "step_s": 1.0, "cpu_s": 1.0, "highest_phase": "update", "by_role": {}}

    monkeypatch.setattr(bench, "run_ours", case)
    assert bench.main(["--only", "sft", "--no-trl", "--levels", "0", "--allocator", "glibc"]) == 0
    assert "peak memory lora/full (smollm2, sft): 0.33" in capsys.readouterr().out
    assert len(made) == 1 and not made[0].exists()

    def failing(method, mode, work, *args, **kwargs):
        (work / "partial").mkdir(exist_ok=True)
        raise RuntimeError("a case failed")

    monkeypatch.setattr(bench, "run_ours", failing)
    with pytest.raises(RuntimeError, match="a case failed"):
        bench.main(["--only", "sft", "--no-trl", "--levels", "0", "--allocator", "glibc"])
    assert len(made) == 2 and not made[1].exists()
