"""The memory defaults for real bases (issue: a fraction of the memory on a real model):
activation checkpointing by base size, freed CPU memory returned to the system, a prefill that keeps
only the last position's logits, and no frozen copy that nothing reads (full-mode GRPO at kl 0)."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import align.rollout
from align.cli import main
from align.config import load_recipe
from align.memory import _cpu_rss, return_freed_memory
from align.models import load_model_and_tokenizer
from align.rollout import generate
from align.shared_base import SharedBase
from align.trainers.common import CHECKPOINTING_MIN_PARAMETERS, activation_checkpointing_on

MIB = 2**20


def _llama(hidden: int, layers: int, vocab: int = 8000) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                                        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                                        max_position_embeddings=128, tie_word_embeddings=True))


def test_activation_checkpointing_defaults_to_the_base_size():
    cfg = load_recipe("recipes/grpo_lora.yaml", [])
    assert cfg.train.activation_checkpointing is None  # the tiny recipes leave it to the default
    tiny = load_model_and_tokenizer("builtin:tiny-arith")[0]
    big = _llama(512, 4)
    assert sum(p.numel() for p in tiny.parameters()) < CHECKPOINTING_MIN_PARAMETERS <= sum(p.numel() for p in big.parameters())
    assert not activation_checkpointing_on(cfg, tiny)
    assert activation_checkpointing_on(cfg, big)
    assert not activation_checkpointing_on(load_recipe("recipes/grpo_lora.yaml", ["train.activation_checkpointing=false"]), big)
    assert activation_checkpointing_on(load_recipe("recipes/grpo_lora.yaml", ["train.activation_checkpointing=true"]), tiny)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_tensors_leave_the_resident_set():
    assert return_freed_memory(4.0)
    start = _cpu_rss()
    keep = []
    for i in range(40):  # 240 MiB passes through, interleaved with small live tensors (fragmentation)
        x = torch.ones(6 * MIB // 4)
        keep.append(torch.ones(1024))
        del x
    assert _cpu_rss() - start < 64 * MIB
    assert not return_freed_memory(0)  # 0: glibc's own policy, nothing set


def test_the_prefill_keeps_only_the_last_logits(monkeypatch):
    model, tokenizer = load_model_and_tokenizer("builtin:tiny-arith")
    widths = []

    def record(module, args, kwargs, output):
        widths.append(output.logits.shape[1])

    handle = model.register_forward_hook(record, with_kwargs=True)
    try:
        out = generate(model, tokenizer, ["12+34=", "5+6="], max_new_tokens=3, do_sample=False)
    finally:
        handle.remove()
    assert widths and all(w == 1 for w in widths)  # the prefill too, not (batch, prompt, vocab)
    sampled = generate(model, tokenizer, ["12+34=", "5+6="], max_new_tokens=6, seed=3)
    monkeypatch.setattr(align.rollout, "_last_logits_only", lambda model: {})  # every position's logits, as before
    assert generate(model, tokenizer, ["12+34=", "5+6="], max_new_tokens=3, do_sample=False).texts == out.texts
    assert generate(model, tokenizer, ["12+34=", "5+6="], max_new_tokens=6, seed=3).texts == sampled.texts


def test_full_mode_policy_in_place_keeps_one_copy_and_no_reference():
    model = _llama(64, 2, vocab=300)
    base = SharedBase(model, mode="full")
    base.add_policy(in_place=True)
    policy = base.role_model("policy")
    assert policy is model and all(p.requires_grad for p in policy.parameters())
    with pytest.raises(ValueError, match="no frozen base left"):
        base.add_reference()
    copied = SharedBase(_llama(64, 2, vocab=300), mode="full")
    copied.add_policy()
    assert copied.role_model("policy") is not copied.model  # without in_place: a copy, as before


def test_full_mode_grpo_at_kl_zero_keeps_no_reference_copy(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "recipes/grpo_full.yaml", "train.steps=1", "eval.enabled=false", "rollout.kl_coef=0",
                 "train.threads=1", f"output_dir={out}"]) == 0
    by_role = json.loads((out / "summary.json").read_text())["memory_by_role"]
    assert "reference" not in by_role and by_role["policy"] > 0
    assert by_role["base"] == 0  # the policy IS the loaded base: no frozen copy beside it
