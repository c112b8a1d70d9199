"""Where the toolkit keeps what it builds or fetches: `$ALIGN_HOME` (default `~/.cache/align`)."""

from __future__ import annotations

import os
from pathlib import Path


def align_home() -> Path:
    return Path(os.environ.get("ALIGN_HOME", Path.home() / ".cache" / "align"))
