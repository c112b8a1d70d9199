"""Atomic, exactly-resumable checkpoints in safetensors.

A checkpoint is a folder `checkpoints/step-NNNNNN/` holding:
- `trainable.safetensors`: every trainable parameter by name (adapters and heads, or the whole
  model in full mode);
- `optimizer.safetensors` + `optimizer.json`: optimizer tensors and its param groups / scalars;
- `state.json`: step, scheduler state, python/numpy RNG state, trainer extras (e.g. KL coef);
- `rng.safetensors`: torch CPU (and CUDA) RNG state;
- `adapter/`: the policy (or reward) adapter in plain peft format, where there is one.

It is written to a temporary folder and renamed into place, and `checkpoints/latest` (a text
file naming the folder) is replaced atomically after that, so a run killed during a save leaves
the previous checkpoint usable.
"""

from __future__ import annotations

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


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    named_params: list[tuple[str, torch.nn.Parameter]],
    optimizers: dict[str, torch.optim.Optimizer],
    schedulers: dict[str, Any],
    extra: dict[str, Any] | None = None,
    save_adapter: Callable[[Path], None] | None = None,
    keep: int = 2,
) -> Path:
    """Write checkpoint `step` atomically; keep the newest `keep` checkpoints."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
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
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    latest_tmp = root / ".latest.tmp"
    latest_tmp.write_text(final.name)
    os.replace(latest_tmp, root / "latest")
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
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    path = pointer.parent / pointer.read_text().strip()
    return path if path.is_dir() else None


def load_checkpoint(
    path: Path,
    named_params: list[tuple[str, torch.nn.Parameter]],
    optimizers: dict[str, torch.optim.Optimizer],
    schedulers: dict[str, Any],
) -> dict[str, Any]:
    """Restore parameters, optimizers, schedulers and RNG; return `{"step", "extra"}`."""
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
