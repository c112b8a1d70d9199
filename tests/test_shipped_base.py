"""The shipped built-in base: its weights come from the current recipe, are loaded as they are
(loading never builds or trains), damage is an error, and a base outside its quality band is
warned about (an evaluation, not a training run)."""

from __future__ import annotations

import json
import shutil

import pytest

import align.base_quality as quality_check
import align.build_base as build
import align.builtin_bases as bases
import align.models as models
from align.config import ConfigError
from align.tasks import BUILTIN_BASES

NAME = "builtin:tiny-arith"


def test_shipped_weights_match_their_sha256_and_the_current_recipe():
    folder = bases.shipped_base_dir(NAME)
    info = json.loads((folder / "BUILD_INFO.json").read_text())
    assert info["sha256"] == bases.file_sha256(folder / "model.safetensors")
    # A changed base recipe must come with re-shipped weights (align build-base, then copy).
    assert info["fingerprint"] == bases.base_fingerprint(NAME)
    assert info["recipe"] == bases.BASE_RECIPES[NAME]
    assert bases.shipped_base_usable(NAME)
    # The shipped base itself is inside the band it promises every user.
    base, quality = BUILTIN_BASES[NAME], info["eval_arithmetic"]
    assert quality["accuracy_greedy_4x256"] >= base.min_greedy_accuracy
    low, high = base.sampled_accuracy_range
    assert low <= quality["accuracy_sampled_4x256"] <= high


def _must_not_train(*args, **kwargs):
    pytest.fail("must not build or train")


def test_builtin_name_loads_the_shipped_folder_without_building(monkeypatch):
    monkeypatch.setattr(build, "build_into", _must_not_train)
    monkeypatch.setattr(models, "check_base_quality", lambda name, path: {})
    assert models.resolve_model_path(NAME) == str(bases.shipped_base_dir(NAME))
    assert build.ensure_builtin_base(NAME) == str(bases.shipped_base_dir(NAME))  # nothing to build


def test_damaged_shipped_weights_are_an_error(tmp_path, monkeypatch):
    copy = tmp_path / "tiny-arith"
    shutil.copytree(bases.shipped_base_dir(NAME), copy)
    with open(copy / "model.safetensors", "r+b") as fh:
        fh.seek(-4, 2)
        fh.write(b"\x00\x01\x02\x03")
    monkeypatch.setattr(bases, "shipped_base_dir", lambda name: copy)
    with pytest.raises(ConfigError, match="damaged"):  # the CLI prints it as one error line
        bases.shipped_base_usable(NAME)


def test_missing_shipped_weights_are_not_built_on_load(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGN_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(bases, "shipped_base_dir", lambda name: tmp_path / "nothing-here")
    monkeypatch.setattr(build, "build_into", _must_not_train)
    assert not bases.shipped_base_usable(NAME)
    with pytest.raises(ConfigError, match="shipped weights are missing .* run `align build-base builtin:tiny-arith`"):
        models.resolve_model_path(NAME)  # `align train` builds it first; loading only says so


def test_a_base_outside_its_band_is_warned_about_once_per_machine(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ALIGN_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(quality_check, "_QUALITY_CHECKED", {})
    path = models.resolve_model_path("scratch:test")  # a random init: far outside any band
    monkeypatch.setattr(build, "train_sft", _must_not_train)  # the check evaluates; it never trains
    monkeypatch.setattr(build, "build_into", _must_not_train)
    calls = []
    real = quality_check.evaluate_base
    monkeypatch.setattr(quality_check, "evaluate_base", lambda p: calls.append(p) or real(p))

    quality = quality_check.check_base_quality(NAME, path)
    err = capsys.readouterr().err
    assert "warning: the base builtin:tiny-arith" in err and "outside its expected band" in err
    assert quality["accuracy_greedy_4x256"] < BUILTIN_BASES[NAME].min_greedy_accuracy
    assert len(calls) == 1

    monkeypatch.setattr(quality_check, "_QUALITY_CHECKED", {})  # a new process: the cached result is read
    quality_check.check_base_quality(NAME, path)
    assert len(calls) == 1 and "outside its expected band" in capsys.readouterr().err


def test_a_base_inside_its_band_is_quiet(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ALIGN_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(quality_check, "_QUALITY_CHECKED", {})
    shipped = str(bases.shipped_base_dir(NAME))
    info = json.loads((bases.shipped_base_dir(NAME) / "BUILD_INFO.json").read_text())
    monkeypatch.setattr(quality_check, "evaluate_base", lambda p: info["eval_arithmetic"])
    quality_check.check_base_quality(NAME, shipped)
    assert "warning" not in capsys.readouterr().err
