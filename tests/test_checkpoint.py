"""Checkpoints (`align.checkpoint`): a killed save's `.tmp-*` folder is removed by the next save
or by a resume, files and folders are fsynced before the rename and the parent after it, and a
resumed run still continues the exact loss curve.

Run: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_checkpoint.py` (a few seconds).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from align import checkpoint
from align.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from tests.helpers import crash_after_checkpoint


def _stale(run_dir: Path) -> list[Path]:
    """What a save killed half-way leaves: a `.tmp-*` folder with part of a checkpoint, and a
    half-written `latest` pointer."""
    root = run_dir / "checkpoints"
    (root / ".tmp-xyz" / "adapter").mkdir(parents=True)
    (root / ".tmp-xyz" / "trainable.safetensors").write_bytes(b"partial")
    (root / ".latest.tmp").write_text("step-0000")
    return [root / ".tmp-xyz", root / ".latest.tmp"]


def _training_state(seed: int):
    torch.manual_seed(seed)
    layer = torch.nn.Linear(4, 2)
    named = list(layer.named_parameters())
    opt = torch.optim.AdamW(layer.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    layer(torch.randn(3, 4)).sum().backward()
    opt.step()
    sched.step()
    return layer, named, opt, sched


def test_next_save_removes_stale_temporaries_and_the_checkpoint_restores_exactly(tmp_path):
    layer, named, opt, sched = _training_state(0)
    save_checkpoint(tmp_path, 1, named, {"m": opt}, {"m": sched})
    stale = _stale(tmp_path)
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    path = save_checkpoint(tmp_path, 2, named, {"m": opt}, {"m": sched}, save_adapter=lambda d: d.mkdir())
    assert not any(p.exists() for p in stale)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step-000001", "step-000002"]
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))

    other, other_named, other_opt, other_sched = _training_state(1)
    state = load_checkpoint(latest_checkpoint(tmp_path), other_named, {"m": other_opt}, {"m": other_sched})
    assert state["step"] == 2 and path == latest_checkpoint(tmp_path)
    for (_, a), (_, b) in zip(named, other_named):
        assert torch.equal(a, b)
    mine, theirs = opt.state_dict(), other_opt.state_dict()
    as_json = lambda groups: json.loads(json.dumps(groups))  # noqa: E731 (betas come back as a list)
    assert as_json(mine["param_groups"]) == as_json(theirs["param_groups"]) and other_sched.state_dict() == sched.state_dict()
    for pid, pstate in mine["state"].items():
        assert pstate.keys() == theirs["state"][pid].keys()
        assert all(torch.equal(v, theirs["state"][pid][k]) for k, v in pstate.items())
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected


def test_resume_removes_stale_temporaries(tmp_path):
    _, named, opt, sched = _training_state(0)
    save_checkpoint(tmp_path, 1, named, {"m": opt}, {"m": sched})
    stale = _stale(tmp_path)
    load_checkpoint(latest_checkpoint(tmp_path), named, {"m": opt}, {"m": sched})
    assert not any(p.exists() for p in stale)
    assert (tmp_path / "checkpoints" / "step-000001" / "state.json").is_file()


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name fsynced descriptors")
def test_files_and_folders_are_fsynced_before_the_rename_and_the_parent_after(tmp_path, monkeypatch):
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src)))
        return real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "fsync", fsync)
    monkeypatch.setattr(checkpoint.os, "replace", replace)
    _, named, opt, sched = _training_state(0)

    def save_adapter(d: Path) -> None:
        d.mkdir()
        (d / "adapter_model.safetensors").write_bytes(b"weights")

    final = save_checkpoint(tmp_path, 1, named, {"m": opt}, {"m": sched}, save_adapter=save_adapter)
    root = str((tmp_path / "checkpoints").resolve())
    rename = next(i for i, (kind, src) in enumerate(events) if kind == "replace" and Path(src).parent == Path(root))
    tmp = events[rename][1]
    synced_before = {path for kind, path in events[:rename] if kind == "fsync"}
    for item in final.rglob("*"):  # every file and folder of the checkpoint, under its temporary name
        assert os.path.join(tmp, item.relative_to(final)) in synced_before, item
    assert tmp in synced_before
    after = [path for kind, path in events[rename + 1 :] if kind == "fsync"]
    assert after[0] == root  # the rename made durable before `latest` moves
    assert events[-1] == ("fsync", root) and ("replace", os.path.join(root, ".latest.tmp")) in events


def test_latest_naming_a_missing_folder_falls_back_to_the_newest_step(tmp_path):
    _, named, opt, sched = _training_state(0)
    for step in (1, 2):
        save_checkpoint(tmp_path, step, named, {"m": opt}, {"m": sched})
    (tmp_path / "checkpoints" / "latest").write_text("step-000009")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-000002"
    save_checkpoint(tmp_path, 2, named, {"m": opt}, {"m": sched})  # the same step again: replaced in place
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step-000001", "step-000002"]


def test_resumed_run_with_a_stale_temporary_continues_the_exact_loss_curve(tmp_path):
    from align.config import load_recipe
    from align.trainers.sft import train_sft

    fast = ["method=sft", "model=scratch:test", "data.task=arithmetic", "data.num_train=64", "train.batch_size=8",
            "train.log_every=1", "optimizer.lr=0.01", "eval.enabled=false", "tracking.wandb=false", "lora.rank=4",
            "train.steps=4"]

    def losses(name, *extra):
        run_dir = train_sft(load_recipe(None, fast + [f"output_dir={tmp_path / name}", *extra])).run_dir
        return [r["loss"] for r in map(json.loads, open(os.path.join(run_dir, "metrics.jsonl"))) if "loss" in r]

    unbroken = losses("unbroken")
    losses("crashed", "train.save_every=2")
    stale = _stale(tmp_path / "crashed")
    crash_after_checkpoint(tmp_path / "crashed", 2)
    resumed = losses("crashed", "train.save_every=2", "resume=true")
    assert not any(p.exists() for p in stale)
    assert resumed == pytest.approx(unbroken, abs=1e-6)
