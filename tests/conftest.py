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
