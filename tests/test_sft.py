"""SFT trainer on a tiny random model (`scratch:test`): what trains, what must not, exactness.

Each run is a few steps on the built-in arithmetic task; together they take well under a minute.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from align.config import ConfigError, load_recipe
from align.models import load_model_and_tokenizer
from align.trainers.sft import train_sft
from tests.helpers import crash_after_checkpoint

FAST = [
    "model=scratch:test", "data.task=arithmetic", "data.num_train=64", "data.num_eval=16",
    "train.batch_size=8", "train.log_every=1", "optimizer.lr=0.01", "optimizer.warmup_steps=0",
    "eval.enabled=false", "tracking.wandb=false", "lora.rank=4",
]


def run(tmp_path, name, *overrides):
    cfg = load_recipe(None, FAST + [f"output_dir={tmp_path / name}", *overrides])
    return train_sft(cfg)


def losses(run_dir):
    rows = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl"))]
    return [r["loss"] for r in rows if "loss" in r]


def test_lora_changes_adapters_and_leaves_base_bit_identical(tmp_path):
    base, _ = load_model_and_tokenizer("scratch:test")
    before = {k: v.clone() for k, v in base.state_dict().items()}
    result = run(tmp_path, "lora", "train.steps=3")
    model = result.model
    after = {k.replace("base_model.model.", "").replace(".base_layer", ""): v for k, v in model.state_dict().items() if "lora_" not in k}
    assert set(after) == set(before)
    for k, v in before.items():
        assert torch.equal(after[k], v), f"base weight {k} changed"
    lora_b = [v for k, v in model.state_dict().items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # B starts at zero, so it trained
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)


def test_full_mode_changes_base_weights(tmp_path):
    base, _ = load_model_and_tokenizer("scratch:test")
    result = run(tmp_path, "full", "train.steps=2", "mode=full")
    trained = result.model.state_dict()
    changed = [k for k, v in base.state_dict().items() if not torch.equal(trained[k], v)]
    assert len(changed) == len(base.state_dict())


def test_metrics_summary_config_and_adapter_files(tmp_path):
    result = run(tmp_path, "files", "train.steps=2", "eval.enabled=true", "eval.num_prompts=4", "eval.max_new_tokens=4")
    d = result.run_dir
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "adapter/adapter_config.json", "adapter/adapter_model.safetensors"):
        assert os.path.exists(os.path.join(d, name)), name
    summary = json.load(open(os.path.join(d, "summary.json")))
    for key in ("method", "mode", "lora_rank", "lora_targets", "trainable_parameters", "total_parameters",
                "wall_time_s", "peak_memory_bytes", "eval_before", "eval_after"):
        assert key in summary, key
    assert summary["method"] == "sft" and summary["mode"] == "lora" and summary["lora_rank"] == 4
    assert 0 < summary["trainable_parameters"] < summary["total_parameters"]
    assert "accuracy_sampled" in summary["eval_before"] and "accuracy_greedy" in summary["eval_after"]
    rows = [json.loads(l) for l in open(os.path.join(d, "metrics.jsonl"))]
    assert rows[0]["step"] == 0 and "eval/accuracy_sampled" in rows[0]  # eval_before, as in every trainer
    assert {"step", "loss", "lr", "grad_norm", "tokens_per_s"} <= set(rows[1])


def test_saved_adapter_loads_in_plain_peft_with_same_logits(tmp_path):
    from peft import PeftModel

    result = run(tmp_path, "peft", "train.steps=2")
    base, tok = load_model_and_tokenizer("scratch:test")
    loaded = PeftModel.from_pretrained(base, os.path.join(result.run_dir, "adapter")).eval()
    ids = tok(["Q: 12+7=? A: 19"], return_tensors="pt")["input_ids"]
    result.model.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, result.model(ids).logits, atol=1e-6)


def test_gradient_accumulation_invariance(tmp_path):
    one = losses(run(tmp_path, "b8", "train.steps=3").run_dir)
    two = losses(run(tmp_path, "b4x2", "train.steps=3", "train.grad_accum=2").run_dir)
    assert one == pytest.approx(two, abs=1e-5)


def test_resume_continues_the_exact_loss_curve(tmp_path):
    unbroken = losses(run(tmp_path, "unbroken", "train.steps=6").run_dir)
    # A run that checkpointed at step 3 and was then killed: drop everything after step 3.
    crashed = run(tmp_path, "crashed", "train.steps=6", "train.save_every=3").run_dir
    ckpts = crash_after_checkpoint(crashed, 3)
    ckpt = load_file(os.path.join(ckpts, "step-000003", "trainable.safetensors"))
    assert ckpt and all("lora_" in k for k in ckpt)
    resumed = losses(run(tmp_path, "crashed", "train.steps=6", "train.save_every=3", "resume=true").run_dir)
    assert len(resumed) == 6  # metrics rows after the checkpoint were replaced, not duplicated
    assert resumed == pytest.approx(unbroken, abs=1e-6)


def test_rslora_scales_by_alpha_over_sqrt_rank_and_loads_with_plain_peft(tmp_path):
    """lora.rslora: the update is scaled by alpha / sqrt(r) (peft's use_rslora), adapter_config.json
    says so, and plain peft loads the saved adapter with the same scaling and the same outputs."""
    from peft import PeftModel

    result = run(tmp_path, "rslora", "train.steps=2", "lora.rank=4", "lora.alpha=8", "lora.rslora=true")
    model = result.model.eval()
    scalings = {m.scaling["default"] for m in model.modules() if isinstance(getattr(m, "scaling", None), dict) and m.scaling}
    assert scalings == {8 / 4 ** 0.5}  # alpha / sqrt(r) = 4.0, not alpha / r = 2
    adapter = os.path.join(result.run_dir, "adapter")
    assert json.load(open(os.path.join(adapter, "adapter_config.json")))["use_rslora"] is True
    base, _ = load_model_and_tokenizer("scratch:test")
    loaded = PeftModel.from_pretrained(base, adapter).eval()
    assert {m.scaling["default"] for m in loaded.modules() if isinstance(getattr(m, "scaling", None), dict) and m.scaling} == scalings
    ids = torch.randint(3, 40, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
        with loaded.disable_adapter():
            assert not torch.allclose(loaded(input_ids=ids).logits, model(input_ids=ids).logits)  # the adapter trained
    assert load_recipe(None, FAST + ["output_dir=x"]).lora.rslora is False  # 1/r stays the default
    with pytest.raises(ConfigError, match="lora.rslora"):
        load_recipe(None, FAST + ["output_dir=x", "lora.rslora=3"])


def test_chunked_completion_nll_equals_the_whole_logits_path_with_gradients():
    """A micro-batch whose logits exceed `train.logprob_chunk_mib` takes the chunked head path:
    the same loss and gradients as the whole (B, T, V) logits, up to float rounding."""
    from align.data.batching import IGNORE_INDEX
    from align.trainers.sft import CompletionNLL

    torch.manual_seed(0)
    model, _ = load_model_and_tokenizer("scratch:test")
    input_ids = torch.randint(3, 90, (3, 12))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[2, 9:] = 0
    labels = input_ids.clone()
    labels[:, :5] = IGNORE_INDEX  # the prompt
    labels[attention_mask == 0] = IGNORE_INDEX
    results = []
    for chunk_bytes in (0, 4 * 100 * 7):  # never chunk; 7 rows of a 100-token vocabulary at a time
        model.zero_grad()
        nll = CompletionNLL(model, chunk_bytes)(input_ids, attention_mask, labels)
        nll.backward()
        results.append((nll.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (whole, whole_grads), (chunked, chunked_grads) = results
    assert CompletionNLL(model, 4 * 100 * 7).vocab == 100
    assert torch.allclose(whole, chunked, atol=1e-5, rtol=1e-5)
    for name, grad in whole_grads.items():
        assert torch.allclose(grad, chunked_grads[name], atol=1e-5, rtol=1e-4), name
