"""Base building: a small, fast variant of the real build path (same code, fewer steps)."""

from __future__ import annotations

import json

import torch

import align.build_base as build


def test_build_is_deterministic_cached_and_rebuilt_when_the_recipe_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGN_HOME", str(tmp_path / "home"))
    fast = [o for o in build.BASE_RECIPES["builtin:tiny-arith"] if not o.startswith(("model=", "train.steps=", "data.num_train=", "train.threads="))]
    fast += ["model=scratch:test", "train.steps=5", "data.num_train=200", "train.threads=1"]
    monkeypatch.setitem(build.BASE_RECIPES, "builtin:tiny-arith", fast)

    from align.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer("builtin:tiny-arith")  # builds on first use
    path = tmp_path / "home" / "bases" / "tiny-arith"
    info = json.loads((path / "BUILD_INFO.json").read_text())
    assert info["fingerprint"] == build.base_fingerprint("builtin:tiny-arith")
    assert set(info["eval_arithmetic"]) >= {"accuracy_greedy", "accuracy_sampled"}
    assert tokenizer("Q: 1+2=? A:")["input_ids"][0] == tokenizer.bos_token_id

    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert build.build_base("builtin:tiny-arith") == str(path)  # cached: not rebuilt
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp

    first = {k: v.clone() for k, v in model.state_dict().items()}
    again = build.build_base("builtin:tiny-arith", force=True)  # same recipe, same weights
    rebuilt, _ = load_model_and_tokenizer(again)
    for k, v in rebuilt.state_dict().items():
        assert torch.equal(v, first[k]), k

    monkeypatch.setitem(build.BASE_RECIPES, "builtin:tiny-arith", fast[:-3] + ["train.steps=4", "data.num_train=200", "train.threads=1"])
    assert not build.is_built("builtin:tiny-arith")  # a changed recipe invalidates the cache


def test_fingerprint_follows_the_recipe_and_its_own_model_size_only(monkeypatch):
    from align.tasks.base_model import MODEL_SIZES

    before = build.base_fingerprint("builtin:tiny-arith")
    monkeypatch.setitem(MODEL_SIZES, "some-other-size", {**MODEL_SIZES["tiny-arith"], "num_hidden_layers": 4})
    assert build.base_fingerprint("builtin:tiny-arith") == before  # adding a size rebuilds nothing
    monkeypatch.setitem(MODEL_SIZES, "tiny-arith", {**MODEL_SIZES["tiny-arith"], "num_hidden_layers": 3})
    assert build.base_fingerprint("builtin:tiny-arith") != before  # changing its own size does
