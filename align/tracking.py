"""Run directory, metrics.jsonl, summary.json, wandb, and progress bars.

Every run directory holds `config.yaml` (the resolved recipe), `metrics.jsonl` (one JSON object
per logging step), `summary.json` (written at the end) and, where wandb is on, its offline files
under `wandb/`. wandb runs offline unless the user logged in (an API key in the environment or
~/.netrc) or set `WANDB_MODE`; `tracking.wandb: false` turns it off. Only the main process writes.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm


def new_run_dir(method: str, mode: str, root: str = "runs") -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{method}-{mode}-{stamp}"
    path, k = base, 1
    while path.exists():
        path, k = Path(f"{base}-{k}"), k + 1
    return path


def progress(iterable=None, total: int | None = None, desc: str = "", initial: int = 0):
    """A tqdm bar that is silent when stderr is not a terminal (CI, pipes, log files)."""
    return tqdm(iterable, total=total, desc=desc, initial=initial, disable=None, dynamic_ncols=True, leave=False)


def _wandb_mode() -> str:
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path.home() / ".netrc"
    if netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return "online"
    return "offline"


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class Tracker:
    """Writes metrics to metrics.jsonl and wandb; no-op on non-main processes."""

    def __init__(self, run_dir: Path, config: dict[str, Any], tracking, is_main: bool, resume: bool) -> None:
        self.run_dir, self.is_main = Path(run_dir), is_main
        self._wandb = None
        if not is_main:
            return
        self.metrics_path = self.run_dir / "metrics.jsonl"
        if resume and self.metrics_path.exists():
            # Drop rows from past the checkpoint we resume from; they are about to be redone.
            self._resume_rows = [json.loads(l) for l in self.metrics_path.read_text().splitlines() if l.strip()]
        else:
            self._resume_rows = []
        if tracking.wandb:
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            self._wandb = wandb.init(
                project=tracking.project,
                name=tracking.run_name or self.run_dir.name,
                group=tracking.group,
                tags=list(tracking.tags) or None,
                config=config,
                dir=str(self.run_dir),
                mode=_wandb_mode(),
                id=self.run_dir.name.replace("/", "-"),
                resume="allow",
            )

    def truncate_after(self, step: int) -> None:
        """On resume: keep only metrics rows up to `step` (the checkpoint's step)."""
        if not self.is_main:
            return
        kept = [r for r in self._resume_rows if r.get("step", 0) <= step]
        self.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if not self.is_main:
            return
        row = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in row.items() if k != "step"}, step=step)

    def finish(self, summary: dict[str, Any]) -> None:
        if not self.is_main:
            return
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=_jsonable))
        if self._wandb is not None:
            for k, v in _flat(summary).items():
                self._wandb.summary[k] = v
            self._wandb.finish()


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out
