"""`train.cpu_allocator` (align.allocator): which allocator `auto` picks, the restart's
environment, one error line for a named allocator that is missing, and, end to end, that
`align train` runs with the allocator it resolved and that the allocator changes no metric.

Run: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_allocator.py`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from align import allocator
from align.config import ConfigError, load_recipe


def _install(directory, *names):
    """A library folder holding empty files of these names (resolve looks for the files only)."""
    directory.mkdir()
    for name in names:
        (directory / name).write_bytes(b"")
    return [directory]


def test_auto_prefers_tcmalloc_then_jemalloc_then_glibc(tmp_path, monkeypatch):
    monkeypatch.setattr(allocator, "_nvidia_driver", lambda: False)
    monkeypatch.setattr(sys, "platform", "linux")
    both = _install(tmp_path / "both", "libjemalloc.so.2", "libtcmalloc_minimal.so.4")
    assert allocator.resolve("auto", both) == ("tcmalloc", str(tmp_path / "both" / "libtcmalloc_minimal.so.4"))
    je = _install(tmp_path / "je", "libjemalloc.so.2")
    assert allocator.resolve("auto", je) == ("jemalloc", str(tmp_path / "je" / "libjemalloc.so.2"))
    assert allocator.resolve("auto", _install(tmp_path / "none")) == ("glibc", None)
    assert allocator.resolve("glibc", both) == ("glibc", None)
    assert allocator.resolve("jemalloc", both)[0] == "jemalloc"  # named: taken even where tcmalloc is there
    monkeypatch.setattr(allocator, "_nvidia_driver", lambda: True)
    assert allocator.resolve("auto", both) == ("glibc", None)  # a GPU machine keeps its allocator


def test_a_named_allocator_that_is_missing_is_one_error_line(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    with pytest.raises(ConfigError, match="tcmalloc is not installed here.*libtcmalloc-minimal4") as err:
        allocator.resolve("tcmalloc", [tmp_path])
    assert "\n" not in str(err.value)
    monkeypatch.setattr(sys, "platform", "darwin")
    assert allocator.resolve("auto") == ("glibc", None)
    with pytest.raises(ConfigError, match="Linux only"):
        allocator.resolve("jemalloc")


def test_restart_env_puts_the_library_first_and_marks_the_restart():
    env = allocator.restart_env("/lib/libtcmalloc_minimal.so.4", {"LD_PRELOAD": "/opt/libfoo.so", "A": "1"})
    assert env["LD_PRELOAD"] == "/lib/libtcmalloc_minimal.so.4 /opt/libfoo.so" and env["A"] == "1"
    assert env[allocator.RESTART_MARK] == "1"
    assert allocator.restart_env("/x.so", {})["LD_PRELOAD"] == "/x.so"


def test_the_setting_validates(repo):
    assert load_recipe(repo / "recipes" / "sft_lora.yaml").train.cpu_allocator == "auto"
    with pytest.raises(ConfigError, match="train.cpu_allocator"):
        load_recipe(repo / "recipes" / "sft_lora.yaml", ["train.cpu_allocator=mimalloc"])


@pytest.mark.slow
def test_align_train_runs_with_the_resolved_allocator_and_the_same_metrics(repo, tmp_path):
    """`align train` as a user starts it: with auto it runs under what `resolve("auto")` names here
    (tcmalloc or jemalloc where installed: the restart happened; glibc elsewhere), with glibc under
    glibc; both log the same metrics, bit for bit (the allocator moves memory, not numbers)."""
    expected = allocator.resolve("auto")[0]
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.RESTART_MARK)}
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    runs = {}
    for setting in ("auto", "glibc"):
        out = tmp_path / setting
        proc = subprocess.run([sys.executable, "-m", "align.cli", "train", "recipes/ppo_lora.yaml", "train.steps=2",
                               "eval.enabled=false", "tracking.wandb=false", f"train.cpu_allocator={setting}",
                               f"output_dir={out}"], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[setting] = out
    assert json.loads((runs["auto"] / "summary.json").read_text())["cpu_allocator"] == expected
    assert json.loads((runs["glibc"] / "summary.json").read_text())["cpu_allocator"] == "glibc"

    def metrics(run):
        rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
        return [{k: v for k, v in r.items() if not any(w in k for w in ("time", "per_s", "peak", "memory"))} for r in rows]

    assert metrics(runs["auto"]) == metrics(runs["glibc"]) and len(metrics(runs["glibc"])) >= 2
