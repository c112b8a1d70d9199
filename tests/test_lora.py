"""LoRA target presets on Llama-style and GPT-2-style models, B = 0 at init, the LR rule."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from align.config import LoraSettings
from align.lora import effective_learning_rate, peft_lora_config, resolve_target_modules


def llama():
    return LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=2))


def gpt2():
    return GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=2, n_positions=32))


def suffixes(names):
    return sorted({".".join(n.split(".")[-2:]) for n in names})


def test_llama_presets():
    m = llama()
    assert suffixes(resolve_target_modules(m, "attention")) == ["self_attn.k_proj", "self_attn.o_proj", "self_attn.q_proj", "self_attn.v_proj"]
    assert suffixes(resolve_target_modules(m, "mlp")) == ["mlp.down_proj", "mlp.gate_proj", "mlp.up_proj"]
    assert len(resolve_target_modules(m, "all")) == 2 * 7
    assert not any("lm_head" in n for n in resolve_target_modules(m, "all"))


def test_gpt2_presets_tell_attention_and_mlp_c_proj_apart():
    m = gpt2()
    assert suffixes(resolve_target_modules(m, "attention")) == ["attn.c_attn", "attn.c_proj"]
    assert suffixes(resolve_target_modules(m, "mlp")) == ["mlp.c_fc", "mlp.c_proj"]
    assert len(resolve_target_modules(m, "all")) == 2 * 4


@pytest.mark.parametrize("make", [llama, gpt2])
def test_adapters_start_as_identity_and_head_is_not_wrapped(make):
    torch.manual_seed(0)
    model = make().eval()
    ids = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        before = model(ids).logits
    peft_model = get_peft_model(model, peft_lora_config(model, LoraSettings(rank=4, alpha=32, targets="all"))).eval()
    with torch.no_grad():
        after = peft_model(ids).logits
    assert torch.equal(before, after)  # B = 0: the adapter is the identity at init
    wrapped = [n for n, _ in peft_model.named_modules() if n.endswith("lora_A")]
    assert wrapped and not any("lm_head" in n for n in wrapped)
    layer = next(m for n, m in peft_model.named_modules() if n.endswith(wrapped[0].rsplit(".", 1)[0]) and hasattr(m, "scaling"))
    assert layer.scaling["default"] == pytest.approx(32 / 4)  # alpha / r


def test_unknown_preset_and_lr_rule():
    with pytest.raises(ValueError, match="lora.targets must be one of"):
        resolve_target_modules(llama(), "embeddings")
    assert effective_learning_rate(1e-4, lora_enabled=True, apply_rule=True) == pytest.approx(1e-3)
    assert effective_learning_rate(1e-4, lora_enabled=True, apply_rule=False) == pytest.approx(1e-4)
    assert effective_learning_rate(1e-4, lora_enabled=False, apply_rule=True) == pytest.approx(1e-4)
    assert effective_learning_rate(1e-4, True, True, "dpo", "measured") == pytest.approx(1.5e-4)
    assert effective_learning_rate(1e-4, True, True, "grpo", "measured") == pytest.approx(1e-3)
    assert effective_learning_rate(1e-4, False, True, "dpo", "measured") == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="lr_rule_ratios"):
        effective_learning_rate(1e-4, True, True, "dpo", "sqrt")


def test_measured_lr_ratios_are_the_atlas_measurements(repo):
    """MEASURED_LR_RATIOS are the per-method ratios in results/atlas/lr_rule.csv (written by
    scripts/studies/atlas.py from the parity studies), to 2 significant digits: re-measuring a study and
    forgetting the table here fails."""
    import csv

    from align.lora import MEASURED_LR_RATIOS

    names = {"sft": "sft", "reward model": "reward", "dpo": "dpo", "ppo": "ppo", "grpo": "grpo"}
    measured = {names[r["method"]]: float(r["measured_ratio"]) for r in csv.DictReader(open(repo / "results/atlas/lr_rule.csv"))
                if r["method"] in names}
    assert set(measured) == set(MEASURED_LR_RATIOS)
    for method, ratio in measured.items():
        assert MEASURED_LR_RATIOS[method] == float(f"{ratio:.2g}"), method


def test_recipe_with_measured_lr_rule(repo):
    from align.config import load_recipe

    cfg = load_recipe(repo / "recipes/dpo_lora.yaml", ["optimizer.lr_rule=true", "optimizer.lr_rule_ratios=measured", "optimizer.lr=2e-4"])
    assert cfg.derived()["learning_rate"] == pytest.approx(3e-4)
    with pytest.raises(Exception, match="lr_rule_ratios"):
        load_recipe(repo / "recipes/dpo_lora.yaml", ["optimizer.lr_rule_ratios=ten"])
