"""Base building: a small, fast variant of the real build path (same code, fewer steps)."""

from __future__ import annotations

import json
import random

import numpy as np
import torch

import align.build_base as build


def test_build_is_deterministic_cached_and_rebuilt_when_the_recipe_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGN_HOME", str(tmp_path / "home"))
    fast = [o for o in build.BASE_RECIPES["builtin:tiny-arith"] if not o.startswith(("model=", "train.steps=", "data.num_train=", "train.threads="))]
    # 2 build threads, so that a thread count leaking out of the build into its caller shows
    fast += ["model=scratch:test", "train.steps=5", "data.num_train=200", "train.threads=2"]
    monkeypatch.setitem(build.BASE_RECIPES, "builtin:tiny-arith", fast)

    from align.models import load_model_and_tokenizer

    # The build runs inside its caller (often a training run that has seeded itself and set its
    # threads): the caller's threads and RNG streams must come out of it unchanged.
    torch.set_num_threads(1)
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(7)
    states = torch.random.get_rng_state(), random.getstate(), np.random.get_state()
    expected = torch.rand(3), random.random(), np.random.rand()
    torch.random.set_rng_state(states[0]), random.setstate(states[1]), np.random.set_state(states[2])
    # The shipped weights come from another recipe than this fast one, so this builds on first use.
    model, tokenizer = load_model_and_tokenizer("builtin:tiny-arith")
    assert torch.get_num_threads() == 1
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1] and np.random.rand() == expected[2]
    path = tmp_path / "home" / "bases" / "tiny-arith"
    info = json.loads((path / "BUILD_INFO.json").read_text())
    assert info["fingerprint"] == build.base_fingerprint("builtin:tiny-arith")
    assert set(info["eval_arithmetic"]) >= {"accuracy_greedy", "accuracy_sampled"}
    assert tokenizer("Q: 1+2=? A:")["input_ids"][0] == tokenizer.bos_token_id

    assert info["sha256"] == build.file_sha256(path / "model.safetensors")
    comparison = build.compare_with_shipped("builtin:tiny-arith", str(path))
    # The fast test recipe builds a smaller model than the shipped one.
    assert "a different model (other tensor names or shapes)" in comparison and f"model={path}" in comparison

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
