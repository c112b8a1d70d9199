"""Atomic, exactly-resumable checkpoints in safetensors.

A checkpoint is a folder `checkpoints/step-NNNNNN/` holding:
- `trainable.safetensors`: every trainable parameter by name (adapters and heads, or the whole
  model in full mode);
- `optimizer.safetensors` + `optimizer.json`: optimizer tensors and its param groups / scalars;
- `state.json`: step, scheduler state, python/numpy RNG state, trainer extras (e.g. KL coef);
- `rng.safetensors`: torch CPU (and CUDA) RNG state;
- `adapter/`: the policy (or reward) adapter in plain peft format, where there is one.

It is written to a temporary folder `checkpoints/.tmp-*`, whose files and folders are fsynced, and
renamed into place (then the `checkpoints` folder is fsynced, so the rename itself is durable);
`checkpoints/latest` (a text file naming the folder) is replaced the same way after that. A run
killed during a save leaves the previous checkpoint usable, and a `.tmp-*` folder that the next
save or a resume removes (`remove_stale_temporaries`). If `latest` names a folder that is gone,
the newest `step-*` folder is used (every one of them was complete when it was renamed in).
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file


def _flatten_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {"param_groups": state_dict["param_groups"], "state": {}}
    for pid, pstate in state_dict["state"].items():
        for k, v in pstate.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars["state"].setdefault(str(pid), {})[k] = v
    return tensors, scalars


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], scalars: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    for pid, extra in scalars["state"].items():
        state.setdefault(int(pid), {}).update(extra)
    return {"state": state, "param_groups": scalars["param_groups"]}


def trainable_state(named_params: list[tuple[str, torch.nn.Parameter]]) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().contiguous() for name, p in named_params}


TMP_PREFIX = ".tmp-"
LATEST_TMP = ".latest.tmp"


def _fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder's fsync makes new entries and renames in it durable).
    Windows cannot open a folder, and a few file systems refuse to fsync one: skipped there."""
    if os.name == "nt" and path.is_dir():
        return
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as err:
        if not (path.is_dir() and err.errno in (errno.EINVAL, errno.EBADF, errno.ENOTSUP)):
            raise
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every file under `root`, then every folder, deepest first, `root` last."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            _fsync_path(Path(folder) / name)
        _fsync_path(Path(folder))


def remove_stale_temporaries(run_dir: str | os.PathLike) -> list[Path]:
    """Remove what a killed save left in `run_dir/checkpoints`: `.tmp-*` folders (and the
    `.latest.tmp` pointer). Only one save runs at a time in a run directory, so at the start of
    a save or a resume every one of them is stale. Returns what was removed."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    stale = sorted(p for p in root.iterdir() if p.name.startswith(TMP_PREFIX) or p.name == LATEST_TMP)
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale


KEEP_CHECKPOINTS = 2  # a run keeps its newest 2 checkpoints (save_checkpoint's `keep`)


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    named_params: list[tuple[str, torch.nn.Parameter]],
    optimizers: dict[str, torch.optim.Optimizer],
    schedulers: dict[str, Any],
    extra: dict[str, Any] | None = None,
    save_adapter: Callable[[Path], None] | None = None,
    keep: int = KEEP_CHECKPOINTS,
) -> Path:
    """Write checkpoint `step` atomically and durably; keep the newest `keep` checkpoints."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(run_dir)
    final = root / f"step-{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=root))
    save_file(trainable_state(named_params), str(tmp / "trainable.safetensors"))
    opt_scalars = {}
    for name, opt in optimizers.items():
        tensors, scalars = _flatten_optimizer(opt.state_dict())
        save_file(tensors, str(tmp / f"optimizer-{name}.safetensors"))
        opt_scalars[name] = scalars
    (tmp / "optimizer.json").write_text(json.dumps(opt_scalars))
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"cuda{i}"] = s
    save_file(rng, str(tmp / "rng.safetensors"))
    np_state = np.random.get_state()
    state = {
        "step": step,
        "schedulers": {k: s.state_dict() for k, s in schedulers.items()},
        "python_rng": [np_state_to_json(random.getstate())],
        "numpy_rng": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "extra": extra or {},
    }
    (tmp / "state.json").write_text(json.dumps(state))
    if save_adapter is not None:
        save_adapter(tmp / "adapter")
    _fsync_tree(tmp)  # contents on disk before the rename can make them visible
    if final.exists():  # the same step saved again (e.g. a resumed run's last step)
        old_copy = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=root))
        os.replace(final, old_copy / final.name)  # set aside (stale if killed here); removed below
        os.replace(tmp, final)
        shutil.rmtree(old_copy, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_path(root)  # the rename itself
    latest_tmp = root / LATEST_TMP
    with open(latest_tmp, "w") as f:
        f.write(final.name)
        f.flush()
        os.fsync(f.fileno())
    os.replace(latest_tmp, root / "latest")
    _fsync_path(root)
    old = sorted(p for p in root.glob("step-*") if p.is_dir())
    for p in old[:-keep]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def np_state_to_json(state: Any) -> Any:
    if isinstance(state, tuple):
        return [np_state_to_json(s) for s in state]
    return state


def _json_to_python_state(obj: Any) -> Any:
    if isinstance(obj, list):
        return tuple(_json_to_python_state(s) for s in obj)
    return obj


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The folder `checkpoints/latest` names; if that folder is gone, the newest `step-*`."""
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    path = pointer.parent / pointer.read_text().strip()
    if path.is_dir():
        return path
    steps = sorted(p for p in pointer.parent.glob("step-*") if p.is_dir() and (p / "state.json").is_file())
    return steps[-1] if steps else None


def load_checkpoint(
    path: Path,
    named_params: list[tuple[str, torch.nn.Parameter]],
    optimizers: dict[str, torch.optim.Optimizer],
    schedulers: dict[str, Any],
) -> dict[str, Any]:
    """Restore parameters, optimizers, schedulers and RNG; return `{"step", "extra"}`.

    Resuming also removes the temporaries of a killed save next to `path`. (With several
    processes each one does; none can be saving yet: the first save after a resume comes after
    a training step, whose collectives wait for every process to finish loading.)"""
    remove_stale_temporaries(path.parent.parent)
    weights = load_file(str(path / "trainable.safetensors"))
    params = dict(named_params)
    missing = sorted(set(params) - set(weights))
    if missing:
        raise RuntimeError(f"checkpoint {path} lacks trainable parameters, e.g. {missing[0]}")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(weights[name].to(p.device, p.dtype))
    opt_scalars = json.loads((path / "optimizer.json").read_text())
    for name, opt in optimizers.items():
        tensors = load_file(str(path / f"optimizer-{name}.safetensors"))
        opt.load_state_dict(_unflatten_optimizer(tensors, opt_scalars[name]))
    state = json.loads((path / "state.json").read_text())
    for name, sched in schedulers.items():
        sched.load_state_dict(state["schedulers"][name])
    rng = load_file(str(path / "rng.safetensors"))
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available():
        cuda = [rng[k] for k in sorted(k for k in rng if k.startswith("cuda"))]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    random.setstate(_json_to_python_state(state["python_rng"][0]))
    kind, keys, *rest = state["numpy_rng"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    return {"step": state["step"], "extra": state["extra"]}
