"""Helpers shared by several test files."""

from __future__ import annotations

import shutil
from pathlib import Path


def crash_after_checkpoint(run_dir, keep_step: int) -> Path:
    """Make a finished run look as if it was killed right after its checkpoint at `keep_step`:
    later checkpoints are deleted and `checkpoints/latest` points back. Returns the folder."""
    checkpoints = Path(run_dir) / "checkpoints"
    for later in checkpoints.glob("step-*"):
        if later.is_dir() and int(later.name.split("-", 1)[1]) > keep_step:
            shutil.rmtree(later)
    (checkpoints / "latest").write_text(f"step-{keep_step:06d}")
    return checkpoints
