"""Memory accounting: the base counted once in LoRA mode, four times in full mode with four roles;
gradients and optimiser state; unique-storage parameter counts; the process peak."""

from __future__ import annotations

import torch
import torch.nn as nn
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from align.memory import count_parameters, memory_report, peak_bytes, reset_peak
from align.shared_base import SharedBase
from tests.helpers import completion_logprobs

torch.set_num_threads(1)

LORA = {"rank": 4, "alpha": 8.0, "targets": "all", "dropout": 0.0}


def tiny_llama() -> nn.Module:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        bos_token_id=1, eos_token_id=2,
    )
    return LlamaForCausalLM(config)


def model_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def four_roles(mode: str) -> SharedBase:
    base = SharedBase(tiny_llama(), None, mode=mode, lora=LORA)
    base.add_policy()
    base.add_reference()
    base.add_reward()
    base.add_value()
    return base


def test_lora_mode_counts_the_base_once():
    expected = model_bytes(tiny_llama())
    base = four_roles("lora")
    report = memory_report(base)
    assert report["base_weights"] == expected
    adapters = sum(p.numel() * 4 for role in ("policy", "reward", "value") for p in base.role_parameters(role)) - sum(
        p.numel() * 4 for p in base.head_parameters()
    )
    assert report["adapter_weights"] == adapters
    assert report["heads"] == 2 * (32 + 1) * 4  # reward and value heads, float32
    assert report["gradients"] == 0 and report["optimizer_state"] == 0
    assert report["total"] == sum(v for k, v in report.items() if k != "total")


def test_full_mode_counts_four_copies():
    lora = memory_report(four_roles("lora"))
    full = memory_report(four_roles("full"))
    assert full["base_weights"] == 4 * lora["base_weights"]  # base(=reference), policy, reward, value
    assert full["adapter_weights"] == 0
    assert full["heads"] == lora["heads"]


def test_gradients_and_optimizer_state():
    base = four_roles("lora")
    params = base.trainable_parameters("policy")
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    ids = torch.randint(3, 48, (2, 6))
    mask = torch.ones_like(ids)
    completion_logprobs(base, "policy", ids, mask, mask).sum().backward()
    optimizer.step()
    report = memory_report(base, optimizer)
    policy_bytes = sum(p.numel() * p.element_size() for p in params)
    assert report["gradients"] == policy_bytes
    # AdamW: exp_avg and exp_avg_sq per parameter, plus a scalar step tensor each.
    assert 2 * policy_bytes <= report["optimizer_state"] <= 2 * policy_bytes + 8 * len(params)


def test_count_parameters_unique_storage():
    model = GPT2LMHeadModel(GPT2Config(vocab_size=48, n_embd=32, n_layer=2, n_head=4, n_positions=32))
    trainable, total = count_parameters(model)
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # tied
    assert total == trainable == sum(p.numel() for p in model.parameters())
    module = nn.Module()
    module.a = nn.Linear(4, 4, bias=False)
    module.b = nn.Linear(4, 4, bias=False)
    module.b.weight = nn.Parameter(module.a.weight.data, requires_grad=False)  # same storage
    assert count_parameters(module) == (16, 16)
    module.a.weight.requires_grad_(False)
    assert count_parameters(module) == (0, 16)


def test_peak_bytes_is_the_process_peak_on_cpu():
    reset_peak()  # a no-op on CPU
    big = torch.ones(16 * 1024 * 1024, dtype=torch.float32)  # 64 MiB
    big.add_(1)
    peak = peak_bytes("cpu")
    assert isinstance(peak, int) and peak >= big.numel() * 4
    del big
    assert peak_bytes("cpu") >= peak  # a process peak never goes down
