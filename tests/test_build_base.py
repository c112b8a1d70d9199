"""Base building: a small, fast variant of the real build path (same code, fewer steps).

Loading never trains: an unbuilt base is an error from loading, and building is the explicit
step (`ensure_builtin_base`, which `align train` runs before its run and `align build-base` runs).
"""

from __future__ import annotations

import json
import os

import pytest
import torch

import align.build_base as build
import align.builtin_bases as bases
import align.models as models
import align.trainers.sft as sft
from align.cli import main
from align.config import ConfigError, load_recipe
from align.models import load_model_and_tokenizer

NAME = "builtin:tiny-arith"


def _must_not_train(*args, **kwargs):
    pytest.fail("loading trained a model")


@pytest.fixture
def fast_recipe(tmp_path, monkeypatch):
    """A 5-step build of the `test` size in an empty ALIGN_HOME: the shipped weights come from
    another recipe than this one, so they are not usable and nothing is built yet. Returns the
    cache folder of the build."""
    monkeypatch.setenv("ALIGN_HOME", str(tmp_path / "home"))
    fast = [o for o in build.BASE_RECIPES[NAME] if not o.startswith(("model=", "train.steps=", "data.num_train="))]
    # The recipe's 2 build threads stay, so that a thread count leaking out of the build shows.
    fast += ["model=scratch:test", "train.steps=5", "data.num_train=200"]
    assert "train.threads=2" in fast
    monkeypatch.setitem(build.BASE_RECIPES, NAME, fast)
    assert not build.shipped_base_usable(NAME) and not build.is_built(NAME)
    return tmp_path / "home" / "bases" / "tiny-arith"


def test_loading_an_unbuilt_base_is_one_error_line_and_trains_nothing(fast_recipe, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(sft, "train_sft", _must_not_train)
        m.setattr(build, "train_sft", _must_not_train)
        m.setattr(build, "build_into", _must_not_train)
        with pytest.raises(ConfigError) as err:
            load_model_and_tokenizer(NAME)
    message = str(err.value)
    assert "\n" not in message and "align build-base builtin:tiny-arith" in message
    assert "built by another recipe than the current one" in message  # why the shipped ones are not used
    assert not fast_recipe.exists()

    # Shipped weights that are missing say so.
    with monkeypatch.context() as m:
        m.setattr(bases, "shipped_base_dir", lambda name: fast_recipe.parent / "nothing-here")
        with pytest.raises(ConfigError, match="shipped weights are missing from .*align build-base"):
            models.resolve_model_path(NAME)

    # A trainer called from Python stops in its preflight, before its run folder is written.
    monkeypatch.setattr(build, "build_into", _must_not_train)
    out = fast_recipe.parent.parent / "run"
    cfg = load_recipe(None, ["model=builtin:tiny-arith", "data.task=arithmetic", "train.steps=1",
                             "eval.enabled=false", "tracking.wandb=false", f"output_dir={out}"])
    with pytest.raises(ConfigError, match="^model: builtin:tiny-arith is not built on this machine"):
        sft.train_sft(cfg)
    assert not out.exists() and not fast_recipe.exists()


def test_the_explicit_build_is_deterministic_cached_and_keeps_the_callers_threads(fast_recipe, monkeypatch):
    torch.set_num_threads(1)
    path = build.ensure_builtin_base(NAME)
    assert path == str(fast_recipe)
    assert torch.get_num_threads() == 1  # not the build's 2
    info = json.loads((fast_recipe / "BUILD_INFO.json").read_text())
    assert info["fingerprint"] == build.base_fingerprint(NAME)
    assert info["sha256"] == build.file_sha256(fast_recipe / "model.safetensors")
    assert set(info["eval_arithmetic"]) >= {"accuracy_greedy", "accuracy_sampled"}

    # Now loading finds the build, and a second ensure does not rebuild it; neither trains.
    stamp = (fast_recipe / "model.safetensors").stat().st_mtime_ns
    with monkeypatch.context() as m:
        m.setattr(sft, "train_sft", _must_not_train)
        m.setattr(build, "train_sft", _must_not_train)
        m.setattr(build, "build_into", _must_not_train)
        assert models.resolve_model_path(NAME) == path
        model, tokenizer = load_model_and_tokenizer(NAME)
        assert build.ensure_builtin_base(NAME) == path
        assert build.build_base(NAME) == path
    assert (fast_recipe / "model.safetensors").stat().st_mtime_ns == stamp
    assert tokenizer("Q: 1+2=? A:")["input_ids"][0] == tokenizer.bos_token_id
    comparison = build.compare_with_shipped(NAME, path)
    # The fast test recipe builds a smaller model than the shipped one.
    assert "a different model (other tensor names or shapes)" in comparison and f"model={path}" in comparison

    first = {k: v.clone() for k, v in model.state_dict().items()}
    again = build.build_base(NAME, force=True)  # same recipe, same weights
    rebuilt, _ = load_model_and_tokenizer(again)
    for k, v in rebuilt.state_dict().items():
        assert torch.equal(v, first[k]), k

    monkeypatch.setitem(build.BASE_RECIPES, NAME, [o for o in info["recipe"] if o != "train.steps=5"] + ["train.steps=4"])
    assert not build.is_built(NAME)  # a changed recipe invalidates the cache ...
    with pytest.raises(ConfigError, match="align build-base"):
        models.resolve_model_path(NAME)  # ... and loading does not rebuild it
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="multi-process launch"):  # the build would train as 2 processes
        build.ensure_builtin_base(NAME)


def test_align_train_builds_an_unbuilt_base_first_and_the_first_run_equals_later_ones(fast_recipe, tmp_path, repo, monkeypatch):
    builds = []
    real = build.build_into
    monkeypatch.setattr(build, "build_into", lambda *a, **k: builds.append(a) or real(*a, **k))
    torch.set_num_threads(1)
    run_dirs = []
    for name in ("first", "second"):
        # train.threads=0 leaves torch's thread count as the run finds it: the build's must not leak.
        assert main(["train", str(repo / "recipes" / "sft_full.yaml"), "data.num_train=64", "train.steps=3",
                     "train.batch_size=8", "train.log_every=1", "train.threads=0", "eval.enabled=false",
                     "tracking.wandb=false", f"output_dir={tmp_path / name}"]) == 0
        assert torch.get_num_threads() == 1
        run_dirs.append(tmp_path / name)
    assert len(builds) == 1 and build.is_built(NAME)  # built before the first run, only then

    def curve(run_dir):
        rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
        return [(r["loss"], r.get("grad_norm")) for r in rows if "loss" in r]

    assert curve(run_dirs[0]) and curve(run_dirs[0]) == curve(run_dirs[1])


def test_fingerprint_follows_the_recipe_and_its_own_model_size_only(monkeypatch):
    from align.tasks.base_model import MODEL_SIZES

    before = build.base_fingerprint(NAME)
    monkeypatch.setitem(MODEL_SIZES, "some-other-size", {**MODEL_SIZES["tiny-arith"], "num_hidden_layers": 4})
    assert build.base_fingerprint(NAME) == before  # adding a size rebuilds nothing
    monkeypatch.setitem(MODEL_SIZES, "tiny-arith", {**MODEL_SIZES["tiny-arith"], "num_hidden_layers": 3})
    assert build.base_fingerprint(NAME) != before  # changing its own size does
