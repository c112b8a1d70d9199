"""`scripts/benchmarks/bench_memory.py --quick`: the table's format, the last line, and LoRA's peak below full's.

Runs the benchmark as a user would (a subprocess; it starts one process per case itself) on its
6M-parameter config: about a minute on 2 CPU cores, most of it importing torch five times.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys


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
