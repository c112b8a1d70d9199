"""`align export-policy`: a policy run (sft, dpo, ppo; LoRA and full mode) as a standalone transformers
causal LM whose logits equal the run's policy (base + adapter through peft); `--gguf` writes a
Llama GGUF that transformers' GGUF reader loads back with the same logits (f32: 1e-5; f16: the
model with its matrices rounded to float16) and a tokenizer that encodes to the same ids; tied and
untied LM heads, grouped-query attention (the Q/K row permutation); bad RUN_DIRs, reward runs and
models GGUF cannot hold refused in one line with exit status 2.

Run: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_export_policy.py`.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from align.cli import TRAINERS, main
from align.config import load_recipe
from align.export import ExportError, export_policy
from align.gguf_export import GGUFExportError, write_llama_gguf
from align.models import load_model_and_tokenizer
from tests.helpers import tiny_bpe_llama, tiny_bpe_tokenizer, write_tiny_llama_gguf

FAST = ["data.num_train=32", "data.num_eval=8", "train.batch_size=8", "train.steps=2", "optimizer.lr=0.01",
        "optimizer.warmup_steps=0", "eval.enabled=false", "tracking.wandb=false", "lora.rank=4"]
SFT = ["method=sft", "data.task=arithmetic"]
DPO = ["method=dpo", "data.task=preference"]
# PPO saves a value adapter beside the policy's (RUN/value/): the export takes the policy only.
PPO = ["method=ppo", "data.task=arithmetic", "optimizer.schedule=constant", "ppo.rollout_batch_size=8",
       "ppo.minibatch_size=4", "rollout.max_new_tokens=6", "ppo.ppo_epochs=1"]
TEXT = "Q: 12+7=? A: 19 <|im_start|>user\nnaïve café, 85-22<|im_end|>"


def _train(tmp, name, method, *overrides) -> str:
    cfg = load_recipe(None, FAST + method + [f"output_dir={tmp / name}", *overrides])
    module_name, function_name = TRAINERS[cfg.method]
    return getattr(importlib.import_module(module_name), function_name)(cfg).run_dir


def _save_tiny_bpe_llama(path: Path) -> str:
    """The tiny GQA Llama over the tiny byte-level BPE (untied head), as a local model folder."""
    model, tokenizer = tiny_bpe_llama(tied=False)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    bpe_llama = _save_tiny_bpe_llama(tmp / "bpe-llama")
    return {
        "sft-lora": _train(tmp, "sft-lora", SFT, "model=scratch:test"),
        "sft-full": _train(tmp, "sft-full", SFT, "model=scratch:test", "mode=full"),
        "dpo-lora": _train(tmp, "dpo-lora", DPO, "model=scratch:test"),
        "ppo-lora": _train(tmp, "ppo-lora", PPO, "model=scratch:test"),
        "bpe-sft-lora": _train(tmp, "bpe-sft-lora", SFT, f"model={bpe_llama}"),
        "reward": _train_reward(tmp),
    }


def _train_reward(tmp) -> str:
    return _train(tmp, "reward", ["method=reward", "data.task=preference"], "model=scratch:test", "train.steps=1")


def _run_policy(run_dir: str):
    """The run's policy as a user of the run directory loads it: base + adapter via peft, or model/."""
    cfg = load_recipe(Path(run_dir) / "config.yaml")
    if cfg.mode == "full":
        return AutoModelForCausalLM.from_pretrained(str(Path(run_dir) / "model")).eval()
    from peft import PeftModel

    base, _ = load_model_and_tokenizer(cfg.model)
    return PeftModel.from_pretrained(base, str(Path(run_dir) / "adapter")).eval()


def _ids(tokenizer, text: str = TEXT) -> torch.Tensor:
    return torch.tensor([tokenizer(text)["input_ids"]])


@pytest.mark.parametrize("name", ["sft-lora", "sft-full", "dpo-lora", "ppo-lora"])
def test_exported_policy_has_the_runs_logits(runs, tmp_path, name):
    out = tmp_path / "out"
    assert main(["export-policy", runs[name], str(out)]) == 0
    exported = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert not any("lora_" in key for key in exported.state_dict())  # merged, no peft left
    if name.startswith("ppo"):
        assert (Path(runs[name]) / "value").is_dir()  # the value adapter beside the policy's is left out
    ids = _ids(tokenizer, "Q: 12+7=? A: 19")
    with torch.no_grad():
        policy = _run_policy(runs[name])
        torch.testing.assert_close(exported(ids).logits, policy(ids).logits, rtol=0, atol=1e-4)
        if name.endswith("lora"):  # the adapter trained: the export is not just the base
            with policy.disable_adapter():
                assert not torch.allclose(exported(ids).logits, policy(ids).logits, atol=1e-4)
    info = json.loads((out / "align_export.json").read_text())
    assert info["kind"] == "policy" and info["mode"] == name.split("-")[1] and info["base_model"] == "scratch:test"
    assert info["method"] == name.split("-")[0] and info["source"] == str(Path(runs[name]).resolve()) and info["gguf"] is None


def _fp16_rounded(model):
    """`model` with every matrix rounded to float16 (what an f16 GGUF holds; norms stay float32)."""
    import copy

    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for param in rounded.parameters():
            if param.ndim > 1:
                param.copy_(param.half().float())
    return rounded


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("ftype", ["f32", "f16"])
def test_gguf_reads_back_with_the_same_logits_and_token_ids(tmp_path, tied, ftype):
    model, tokenizer = write_tiny_llama_gguf(tmp_path / "m.gguf", tied=tied, seed=1, ftype=ftype)
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="m.gguf").eval()
    loaded_tokenizer = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="m.gguf")
    assert loaded.config.tie_word_embeddings is tied and loaded.config.num_key_value_heads == 2
    for text in (TEXT, "The quick brown fox, 314 apples!", "  spaces\n\nand tabs\t"):
        assert loaded_tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"], text
    assert (loaded_tokenizer.bos_token, loaded_tokenizer.eos_token, loaded_tokenizer.pad_token) == ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
    messages = [{"role": "user", "content": "What is 2+2?"}]
    assert loaded_tokenizer.apply_chat_template(messages, tokenize=False) == tokenizer.apply_chat_template(messages, tokenize=False)
    ids = _ids(tokenizer)
    with torch.no_grad():
        theirs = loaded(ids).logits
        if ftype == "f32":
            torch.testing.assert_close(theirs, model(ids).logits, rtol=0, atol=1e-5)
        else:
            torch.testing.assert_close(theirs, _fp16_rounded(model)(ids).logits, rtol=0, atol=1e-5)
            assert (theirs - model(ids).logits).abs().max() < 2e-3  # float16 rounding (3e-4 here), no more


@pytest.mark.parametrize("pre_tokenizer", ["gpt2", "smollm", "llama-bpe"])
def test_gguf_tokenizer_round_trip_per_pre_tokenizer(tmp_path, pre_tokenizer):
    """tokenizer.ggml.pre names the pre-tokenizer, so the reader splits text as the merges were learned."""
    from gguf import GGUFReader

    from align.gguf_export import gguf_refusal

    model, tokenizer = tiny_bpe_llama(tokenizer=tiny_bpe_tokenizer(pre_tokenizer=pre_tokenizer))
    assert gguf_refusal(model, tokenizer) is None
    write_llama_gguf(model, tokenizer, tmp_path / "m.gguf", ftype="f32")
    field = GGUFReader(str(tmp_path / "m.gguf")).fields["tokenizer.ggml.pre"]
    assert bytes(field.parts[field.data[0]]).decode() == pre_tokenizer
    loaded = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="m.gguf")
    for text in (TEXT, "I'll pay 1234 dollars , ok?\n\n  Yes!", "x  2024-01-02\t\tdone"):
        assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"], text


def test_gguf_q_and_k_rows_are_in_llama_cpps_order(tmp_path):
    """The raw file holds llama.cpp's interleaved rotary layout (not transformers' halves): a file
    written without the permutation would read back with the same shapes and wrong logits."""
    from gguf import GGUFReader

    model, _ = write_tiny_llama_gguf(tmp_path / "m.gguf", tied=False, ftype="f32")
    tensors = {t.name: np.asarray(t.data) for t in GGUFReader(str(tmp_path / "m.gguf")).tensors}
    assert "output.weight" in tensors and "blk.1.ffn_gate.weight" in tensors and "output_norm.weight" in tensors
    for name, heads in (("q_proj", 4), ("k_proj", 2)):
        hf = getattr(model.model.layers[0].self_attn, name).weight.detach()
        raw = torch.from_numpy(tensors[f"blk.0.attn_{name[0]}.weight"].copy())
        assert raw.shape == hf.shape and not torch.equal(raw, hf)
        half = hf.shape[0] // heads // 2  # head h, pair i: rows (h, 2i) and (h, 2i+1) are HF rows (h, i) and (h, half + i)
        torch.testing.assert_close(raw.reshape(heads, half, 2, -1), hf.reshape(heads, 2, half, -1).transpose(1, 2))


def test_export_policy_gguf_of_a_bpe_llama_run(runs, tmp_path):
    out = tmp_path / "out"
    assert main(["export-policy", runs["bpe-sft-lora"], str(out), "--gguf", "--gguf-type", "f32"]) == 0
    info = json.loads((out / "align_export.json").read_text())
    assert info["gguf"] == {"file": "model-f32.gguf", "type": "f32"}
    exported = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    from_gguf = AutoModelForCausalLM.from_pretrained(str(out), gguf_file="model-f32.gguf").eval()
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    gguf_tokenizer = AutoTokenizer.from_pretrained(str(out), gguf_file="model-f32.gguf")
    assert gguf_tokenizer(TEXT)["input_ids"] == tokenizer(TEXT)["input_ids"]
    ids = _ids(tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(exported(ids).logits, _run_policy(runs["bpe-sft-lora"])(ids).logits, rtol=0, atol=1e-4)
        torch.testing.assert_close(from_gguf(ids).logits, exported(ids).logits, rtol=0, atol=1e-5)
    assert main(["export-policy", runs["bpe-sft-lora"], str(tmp_path / "f16"), "--gguf"]) == 0  # f16 by default
    assert (tmp_path / "f16" / "model-f16.gguf").stat().st_size < (out / "model-f32.gguf").stat().st_size


def test_bad_run_dirs_and_unwritable_ggufs_are_one_line_errors(runs, tmp_path, capsys):
    (tmp_path / "empty-run").mkdir()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    cases = [
        ([str(tmp_path / "missing"), str(tmp_path / "out")], "does not exist"),
        ([runs["reward"], str(tmp_path / "out")], "export-reward"),
        ([str(tmp_path / "empty-run"), str(tmp_path / "out")], "has no adapter/ (LoRA) or model/ (full) policy"),
        ([runs["sft-lora"], str(tmp_path / "taken")], "not an empty directory"),
        # scratch:test is a Llama with the built-in char-level WordLevel tokenizer
        ([runs["sft-lora"], str(tmp_path / "out"), "--gguf"], "byte-level BPE"),
    ]
    for args, expected in cases:
        assert main(["export-policy", *args]) == 2, args
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and expected in err, err
    assert not (tmp_path / "out").exists()  # a refused GGUF leaves no half-written OUT_DIR
    with pytest.raises(ExportError, match="does not exist"):
        export_policy(tmp_path / "missing", tmp_path / "out")


def test_gguf_refuses_non_llama_models(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = tiny_bpe_tokenizer()
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2))
    with pytest.raises(GGUFExportError, match="^only Llama-architecture GGUF export is supported, model_type gpt2$"):
        write_llama_gguf(model, tokenizer, tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()
