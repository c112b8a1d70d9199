"""Shared test setup: one torch thread (2-core machines), an isolated ALIGN_HOME, no wandb."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Built models are cached once per test session (CI's fresh clone builds them once).
os.environ.setdefault("ALIGN_HOME", str(Path(__file__).resolve().parent.parent / ".cache" / "align-tests"))

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture(scope="module")
def parity():
    """scripts/studies/parity.py imported as the module `parity` (the study definitions and helpers)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("parity", REPO / "scripts" / "studies" / "parity.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["parity"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sweep(parity):
    """scripts/studies/sweep.py, the engine every study runs on: the very module parity.py imported
    (so its Study and Configuration are the classes of parity's STUDIES)."""
    import sys

    return sys.modules["sweep"]


@pytest.fixture(scope="module")
def tokenizer():
    """The built-in task's tokenizer."""
    from align.tasks.tokenizer import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="module")
def tiny_model(tokenizer):
    """A random tiny Llama (the `test` size) over the built-in tokenizer, in eval mode."""
    from transformers import LlamaForCausalLM

    from align.tasks.base_model import tiny_llama_config

    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config(len(tokenizer), "test")).eval()


def parity_smoke(repo: Path, tmp_path: Path, method: str) -> tuple[list[dict], Path, Path]:
    """`scripts/studies/parity.py METHOD --smoke` into tmp_path: its table rows, the one run's summary.json,
    and the output folder, after checking the run succeeded and wrote its table and plots."""
    import csv
    import subprocess
    import sys

    out, runs = tmp_path / "out", tmp_path / "runs"
    proc = subprocess.run(
        [sys.executable, "scripts/studies/parity.py", method, "--smoke", "--jobs", "1", "--runs-dir", str(runs), "--out", str(out)],
        cwd=repo, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = list(csv.DictReader(open(out / "table.csv")))
    assert len(rows) == 1 and int(rows[0]["trainable_parameters"]) > 0
    for name in ("table.md", "metric_vs_lr.png", "curves.png", "study.json"):
        assert (out / name).stat().st_size > 0, name
    (run,) = runs.glob("*/summary.json")
    assert run.parent.name.startswith(rows[0]["configuration"])
    return rows, run, out
