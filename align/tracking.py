"""Run directory, metrics.jsonl, samples.jsonl, summary.json, wandb, and progress bars.

Every run directory holds `config.yaml` (the resolved recipe), `metrics.jsonl` (one JSON object
per logging step, flat keys as the trainers name them), `samples.jsonl` (a few sampled
completions per evaluation and per RL iteration: step, kind, prompt, response, reward, gold,
length, stopped), `summary.json` (written at the end) and, where wandb is on, its offline files
under `wandb/`. `align report RUN_DIR` (align.report) reads these files; it needs no wandb.

wandb runs offline unless the user logged in (an API key in the environment or ~/.netrc) or set
`WANDB_MODE`; `tracking.wandb: false` turns it off; a wandb that cannot start (not installed,
no login, a broken service) prints one warning and the run goes on without it. Only the main
process writes. What wandb gets, all from this file (the trainers log flat keys, once):

    scalars      namespaced by `wandb_name` (the table below): train/, rollout/, reward/, eval/,
                 memory/, time/. Two step metrics ride along with every row: `train/step` (the
                 trainer's step: the optimizer step of SFT, reward and DPO, the iteration of PPO
                 and GRPO) and `train/samples_seen` (step x sequences per step: pairs, or sampled
                 completions for RL). `define_metric` plots train/, eval/, memory/ and time/
                 against train/step, rollout/ and reward/ against train/samples_seen.
    tables       `eval/samples` at every evaluation, `rollout/samples` at every RL iteration
                 (`tracking.samples` rows each): step, prompt, response, reward, gold, length,
                 stopped.
    histograms   per RL iteration: `rollout/hist/reward` (raw scores), `rollout/hist/advantage`
                 (per token for PPO, per completion for GRPO), `rollout/hist/kl_per_token` (the
                 recipe's KL estimator over response tokens, where the rollout has both the
                 policy's and the reference's log-probs).
    summary      summary.json flattened (with `time_split_s`: setup, training, evaluation,
                 finishing, measured between this tracker's calls) (`eval_after/accuracy_sampled`, ...), and the memory
                 breakdown as `memory/<category>_bytes` (memory_bytes: base, adapters, heads,
                 gradients, optimizer state) and `memory/role/<role>_bytes` (memory_by_role),
                 with one bar chart `memory/breakdown` (MiB per role and category).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from align.losses.policy import get_kl_estimator
from align.report import numeric_entries

# ---- wandb names --------------------------------------------------------------------------------

NAMESPACES = ("train", "rollout", "reward", "eval", "memory", "time")
# Flat metrics.jsonl keys that are about the sampled rollout rather than the update; every other
# key without a namespace of its own goes under train/.
ROLLOUT_KEYS = {"kl", "kl_coef", "entropy", "response_length", "no_stop_fraction", "zero_variance_fraction"}
RENAMED = {"peak_memory_bytes": "memory/peak_bytes", "tokens_per_s": "time/tokens_per_s"}


def wandb_name(key: str) -> str:
    """The wandb name of a metrics.jsonl key: kept when it starts with a namespace (`eval/...`,
    `reward/score`, `time/rollout`); `peak_memory_bytes` -> `memory/peak_bytes`; the rollout's own
    statistics (ROLLOUT_KEYS) -> `rollout/<key>`; `tokens_per_s` -> `time/tokens_per_s`; everything else -> `train/<key>` (`loss`,
    `loss/policy`, `grad_norm`, `lr`, DPO's `rewards/margins`, `skipped/<reason>`, ...)."""
    if key in RENAMED:
        return RENAMED[key]
    if key.split("/", 1)[0] in NAMESPACES and "/" in key:
        return key
    if key in ROLLOUT_KEYS:
        return f"rollout/{key}"
    return f"train/{key}"


def samples_per_step(config: dict[str, Any]) -> int:
    """Sequences one step consumes: sampled completions for PPO and GRPO, rows (pairs) otherwise."""
    method = config.get("method")
    if method == "ppo":
        return int(config["ppo"]["rollout_batch_size"])
    if method == "grpo":
        return int(config["grpo"]["prompts_per_iteration"]) * int(config["grpo"]["group_size"])
    return int(config.get("train", {}).get("batch_size", 1))


# ---- the run directory --------------------------------------------------------------------------

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


SAMPLE_COLUMNS = ["step", "prompt", "response", "reward", "gold", "length", "stopped"]


def _sample_row(row: dict[str, Any]) -> dict[str, Any]:
    """One sampled completion, typed: prompt and response text, reward and gold (float or None),
    length (tokens, int), stopped (ended with EOS, bool)."""
    def number(v):
        return None if v is None else float(_jsonable(v))

    return {"prompt": str(row["prompt"]), "response": str(row["response"]), "reward": number(row.get("reward")),
            "gold": number(row.get("gold")), "length": int(_jsonable(row.get("length", 0))),
            "stopped": bool(_jsonable(row.get("stopped", True)))}


def _read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


class Tracker:
    """Writes metrics to metrics.jsonl and wandb, samples to samples.jsonl and wandb tables;
    a no-op on non-main processes."""

    def __init__(self, run_dir: Path, config: dict[str, Any], tracking, is_main: bool, resume: bool) -> None:
        self.run_dir, self.is_main = Path(run_dir), is_main
        self._wandb = None
        self.num_samples = int(getattr(tracking, "samples", 8))
        self._pending: list[dict[str, Any]] = []  # sampled completions waiting for the next log
        self._clock, self._time_split = time.time(), {"setup": 0.0, "training": 0.0, "evaluation": 0.0, "finishing": 0.0}
        if not is_main:
            return
        self.samples_per_step = samples_per_step(config)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.samples_path = self.run_dir / "samples.jsonl"
        # On resume, rows from past the checkpoint are dropped (truncate_after): they are redone.
        self._resume_rows = _read_rows(self.metrics_path) if resume else []
        self._resume_samples = _read_rows(self.samples_path) if resume else []
        if tracking.wandb:
            self._wandb = _start_wandb(self.run_dir, config, tracking)

    # ---- scalars ----------------------------------------------------------------------------

    def truncate_after(self, step: int) -> None:
        """On resume: keep only metrics and samples rows up to `step` (the checkpoint's step)."""
        if not self.is_main:
            return
        kept = [r for r in self._resume_rows if r.get("step", 0) <= step]
        self.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        kept = [r for r in self._resume_samples if r.get("step", 0) <= step]
        self.samples_path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """One metrics.jsonl row (flat keys); wandb gets the namespaced names and the step
        metrics; sampled completions recorded since the last call go out with it."""
        if not self.is_main:
            return
        row = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        self._time_since_last(row)
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self._wandb is not None:
            self._wandb.log({**self._axes(step), **{wandb_name(k): v for k, v in row.items() if k != "step"}}, step=step)
        self._flush_samples(step)

    def _time_since_last(self, row: dict[str, Any]) -> None:
        """The run's wall time split by what the last interval ended with: a row of only `eval/`
        keys closes an evaluation (the one before training also covers setup: model loading), any
        other row closes training steps; `finish` closes the finishing (final save and evaluation
        fall in the last evaluation's interval). Measured here, so every trainer gets it."""
        now = time.time()
        elapsed, self._clock = now - self._clock, now
        only_eval = all(k == "step" or k.startswith("eval/") for k in row)
        if only_eval and not any(self._time_split.values()):
            self._time_split["setup"] += elapsed
        else:
            self._time_split["evaluation" if only_eval else "training"] += elapsed

    def _axes(self, step: int) -> dict[str, int]:
        return {"train/step": step, "train/samples_seen": step * self.samples_per_step}

    # ---- sampled completions ----------------------------------------------------------------

    def sample_sink(self, kind: str = "eval") -> list[dict[str, Any]] | None:
        """A list for an evaluation to append its sampled completions to (align.evaluation):
        recorded with the next `log` (the evaluation's own); None when nothing is kept."""
        if not self.is_main or self.num_samples <= 0:
            return None
        sink = _Sink(self.num_samples)
        self._pending.append({"kind": kind, "rows": sink, "step": None})
        return sink

    def add_samples(self, kind: str, rows: list[dict[str, Any]], step: int | None = None) -> None:
        """Record sampled completions (dicts: prompt, response, reward, gold, length, stopped)."""
        if self.is_main and self.num_samples > 0 and rows:
            self._pending.append({"kind": kind, "rows": list(rows)[: self.num_samples], "step": step})

    def _flush_samples(self, step: int) -> None:
        pending, self._pending = [p for p in self._pending if p["rows"]], []
        if not pending:
            return
        tables: dict[str, list[dict[str, Any]]] = {}
        with self.samples_path.open("a") as f:
            for p in pending:
                at = step if p["step"] is None else p["step"]
                for raw in p["rows"]:
                    row = {"step": at, "kind": p["kind"], **_sample_row(raw)}
                    f.write(json.dumps(row) + "\n")
                    tables.setdefault(p["kind"], []).append(row)
        if self._wandb is not None:
            import wandb

            self._wandb.log({**self._axes(step), **{
                f"{kind}/samples": wandb.Table(columns=SAMPLE_COLUMNS, data=[[r[c] for c in SAMPLE_COLUMNS] for r in rows])
                for kind, rows in tables.items()}}, step=step)

    # ---- RL iterations ----------------------------------------------------------------------

    def log_rollouts(self, step: int, prompts: list[str], samples, advantages=None, kl_estimator: str | None = None) -> None:
        """What one RL iteration sampled (an `align.experience.Samples` of this process): a few
        rollouts into samples.jsonl / `rollout/samples`, and histograms of rewards, advantages
        and per-token KL into wandb; recorded with the iteration's `log`."""
        if not self.is_main:
            return
        mask_BT = samples.response_mask_BT.bool()
        lengths = samples.response_mask_BT.sum(-1).tolist()
        gold = getattr(samples, "gold_scores", None)
        keep = min(self.num_samples, len(prompts))
        self.add_samples("rollout", [
            {"prompt": prompts[i], "response": samples.texts[i], "reward": float(samples.raw_scores_B[i]),
             "gold": None if gold is None else gold[i], "length": int(lengths[i]), "stopped": bool(samples.stopped_B[i])}
            for i in range(keep)], step)
        if self._wandb is None:
            return
        import wandb

        hists = {"rollout/hist/reward": samples.raw_scores_B.float().cpu().numpy()}
        if advantages is not None:
            # per token (B, T) over the response mask, or one per completion (B,)
            values = advantages[mask_BT] if advantages.shape == mask_BT.shape else advantages.flatten()
            hists["rollout/hist/advantage"] = values.float().cpu().numpy()
        if kl_estimator and samples.old_logps_BT is not None and samples.ref_logps_BT is not None:
            kl_BT = get_kl_estimator(kl_estimator)(samples.old_logps_BT.float(), samples.ref_logps_BT.float())
            hists["rollout/hist/kl_per_token"] = kl_BT[mask_BT].cpu().numpy()
        self._wandb.log({**self._axes(step), **{k: wandb.Histogram(v) for k, v in hists.items() if len(v)}}, step=step)

    # ---- the end ----------------------------------------------------------------------------

    def finish(self, summary: dict[str, Any]) -> None:
        if not self.is_main:
            return
        self._flush_samples(int(summary.get("steps", 0) or 0))
        self._time_split["finishing"] += time.time() - self._clock
        summary = {**summary, "time_split_s": {k: round(v, 3) for k, v in self._time_split.items()}}
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=_jsonable))
        if self._wandb is not None:
            for k, v in {**_flat(summary), **memory_fields(summary)}.items():
                self._wandb.summary[k] = v
            chart = _memory_chart(summary)
            if chart is not None:
                self._wandb.log({"memory/breakdown": chart})
            self._wandb.finish()


class _Sink(list):
    """A list that keeps its first `limit` items (an evaluation appends to it freely)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def append(self, item) -> None:
        if len(self) < self.limit:
            super().append(item)

    def extend(self, items) -> None:
        for item in items:
            self.append(item)


def _start_wandb(run_dir: Path, config: dict[str, Any], tracking):
    """wandb.init (offline unless logged in), the step metrics and namespaces; None, with one
    warning, when wandb cannot start: tracking must never stop a run."""
    try:
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        run = wandb.init(
            project=tracking.project,
            name=tracking.run_name or run_dir.name,
            group=tracking.group,
            job_type=getattr(tracking, "job_type", None),
            tags=list(tracking.tags) or None,
            config=config,
            dir=str(run_dir),
            mode=_wandb_mode(),
            id=run_dir.name.replace("/", "-"),
            resume="allow",
        )
        run.define_metric("train/step")
        run.define_metric("train/samples_seen")
        for namespace in NAMESPACES:
            axis = "train/samples_seen" if namespace in ("rollout", "reward") else "train/step"
            run.define_metric(f"{namespace}/*", step_metric=axis)
        return run
    except Exception as err:  # noqa: BLE001 - any failure of an optional logger
        print(f"warning: wandb did not start ({type(err).__name__}: {err}); metrics go to metrics.jsonl only",
              file=sys.stderr, flush=True)
        return None


def memory_fields(summary: dict[str, Any]) -> dict[str, float]:
    """The memory picture as flat run-summary fields: `memory/<category>_bytes` from
    summary['memory_bytes'], `memory/role/<role>_bytes` from summary['memory_by_role'], and the
    process peak."""
    out: dict[str, float] = {}
    for category, value in numeric_entries(summary.get("memory_bytes")).items():
        out[f"memory/{category}_bytes"] = value
    for role, value in numeric_entries(summary.get("memory_by_role")).items():
        out[f"memory/role/{role}_bytes"] = value
    if summary.get("peak_memory_bytes") is not None:
        out["memory/peak_bytes"] = float(summary["peak_memory_bytes"])
    return out


def _memory_chart(summary: dict[str, Any]):
    """One wandb bar chart: MiB per role (memory_by_role), else per category (memory_bytes)."""
    parts = numeric_entries(summary.get("memory_by_role")) or numeric_entries(summary.get("memory_bytes"))
    if not parts:
        return None
    import wandb

    table = wandb.Table(columns=["part", "MiB"], data=[[k, float(v) / 2**20] for k, v in parts.items() if k != "total"])
    return wandb.plot.bar(table, "part", "MiB", title="memory by role (MiB)")


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out
