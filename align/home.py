"""Where the toolkit keeps what it builds or fetches (`$ALIGN_HOME`, default `~/.cache/align`), and
the sha256 that checks what lands there."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def align_home() -> Path:
    return Path(os.environ.get("ALIGN_HOME", Path.home() / ".cache" / "align"))


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
