"""`lora.targets: all+embeddings`: LoRA adapters on the input embeddings and the LM head as well,
on the ONE frozen base (issue 13, the DPO gap). Untied Llama: both get adapters; tied GPT-2 (the
head's weight is the embedding's): the embeddings only. Tiny random models, CPU, seconds."""

from __future__ import annotations

import pytest
import torch

from align.config import ConfigError, load_recipe
from align.lora import embedding_target_modules, embeddings_tied, resolve_target_modules
from align.shared_base import SharedBase
from tests.helpers import role_logits
from tests.test_shared_base import _positions, batch, storages, tiny_model

LORA = {"rank": 2, "alpha": 8.0, "targets": "all+embeddings", "dropout": 0.0}
EXPECTED = {"llama": ["model.embed_tokens", "lm_head"], "gpt2": ["transformer.wte"]}


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_targets_add_the_embeddings_and_the_untied_head(kind):
    model = tiny_model(kind)
    assert embeddings_tied(model) == (kind == "gpt2")
    assert embedding_target_modules(model) == EXPECTED[kind]
    names = resolve_target_modules(model, "all+embeddings")
    assert names == resolve_target_modules(model, "all") + EXPECTED[kind]


def train_policy(base: SharedBase, steps: int = 3) -> None:
    """A few AdamW steps on the policy's log-likelihood of a fixed batch (any loss will do)."""
    ids, mask, completion = batch()
    optimizer = torch.optim.AdamW(base.role_parameters("policy"), lr=1e-2)
    for _ in range(steps):
        logps = base.logprobs("policy", ids, mask, completion).logps_BT
        optimizer.zero_grad()
        (-logps.sum()).backward()
        optimizer.step()


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_adapters_on_embeddings_and_head_train_on_one_frozen_base(kind):
    model = tiny_model(kind)
    before_storages = storages(model.parameters())
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    base = SharedBase(model, None, mode="lora", lora=LORA)
    base.add_policy()
    base.add_reference()
    # One copy of the base: the same storages, nothing duplicated, all frozen.
    assert storages(base.base_parameters()) == before_storages
    assert len(base.base_parameters()) == len(before)
    assert all(not p.requires_grad for p in base.base_parameters())
    # Adapters wrap the embeddings (and the untied head), and they are the policy's parameters.
    wrapped = {name.removeprefix("base_model.model.") for name, m in base.peft_model.named_modules() if hasattr(m, "lora_A")}
    for name in EXPECTED[kind]:
        assert name in wrapped, (name, sorted(wrapped))
    if kind == "gpt2":
        assert "lm_head" not in wrapped  # tied: the head keeps the frozen shared weight
    policy_ids = {id(p) for p in base.role_parameters("policy")}
    embedding_adapter = [p for n, p in base.peft_model.named_parameters() if "lora_embedding_" in n]
    assert embedding_adapter and all(id(p) in policy_ids for p in embedding_adapter)

    ids, mask, _ = batch()
    reference_before = role_logits(base, "reference", ids, mask)
    assert torch.equal(role_logits(base, "policy", ids, mask), reference_before)  # identity at init
    train_policy(base)
    # Gradients reached the embedding adapter (and the head's, untied) and moved them.
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in embedding_adapter)
    if kind == "llama":
        head_adapter = [p for n, p in base.peft_model.named_parameters() if n.startswith("base_model.model.lm_head.lora_")]
        assert head_adapter and all(p.grad is not None and p.grad.abs().sum() > 0 for p in head_adapter)
    # The base is bit-identical; the reference (adapters off) did not move; the policy did.
    after = dict(model.named_parameters())
    for name, value in before.items():
        key = name if name in after else next(k for k in after if k.replace(".base_layer", "") == name)
        assert torch.equal(after[key], value), name
    assert torch.equal(role_logits(base, "reference", ids, mask), reference_before)
    assert not torch.equal(role_logits(base, "policy", ids, mask), reference_before)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_saved_adapter_loads_in_plain_peft(tmp_path, kind):
    from peft import PeftModel

    base = SharedBase(tiny_model(kind), None, lora=LORA)
    base.add_policy()
    base.add_reference()
    train_policy(base)
    base.save_role("policy", tmp_path / "policy")
    plain = PeftModel.from_pretrained(tiny_model(kind), str(tmp_path / "policy")).eval()
    ids, mask, _ = batch()
    with torch.no_grad():
        expected = plain(input_ids=ids, attention_mask=mask, position_ids=_positions(mask)).logits
    torch.testing.assert_close(role_logits(base, "policy", ids, mask), expected, rtol=0, atol=1e-6)


def test_recipe_accepts_the_new_targets_and_rejects_unknown_ones():
    cfg = load_recipe("recipes/dpo_lora.yaml", ["lora.targets=all+embeddings"])
    assert cfg.lora.targets == "all+embeddings"
    with pytest.raises(ConfigError, match="lora.targets"):
        load_recipe("recipes/dpo_lora.yaml", ["lora.targets=embeddings"])


def test_embedding_alpha_scales_only_the_embedding_and_head_adapters(tmp_path):
    from peft import PeftModel

    lora = {**LORA, "embedding_alpha": 1.0}
    base = SharedBase(tiny_model("llama"), None, lora=lora)
    base.add_policy()
    scaling = {n.removeprefix("base_model.model."): m.scaling["policy"] for n, m in base.peft_model.named_modules()
               if isinstance(getattr(m, "scaling", None), dict) and "policy" in m.scaling}
    assert scaling["model.embed_tokens"] == scaling["lm_head"] == pytest.approx(1.0 / LORA["rank"])
    assert scaling["model.layers.0.self_attn.q_proj"] == pytest.approx(LORA["alpha"] / LORA["rank"])
    train_policy(base)
    base.save_role("policy", tmp_path / "policy")
    plain = PeftModel.from_pretrained(tiny_model("llama"), str(tmp_path / "policy")).eval()
    ids, mask, _ = batch()
    with torch.no_grad():
        expected = plain(input_ids=ids, attention_mask=mask, position_ids=_positions(mask)).logits
    torch.testing.assert_close(role_logits(base, "policy", ids, mask), expected, rtol=0, atol=1e-6)
    with pytest.raises(ConfigError, match="lora.embedding_alpha"):
        load_recipe("recipes/dpo_lora.yaml", ["lora.embedding_alpha=1"])  # targets all: nothing to scale
    assert load_recipe("recipes/dpo_lora.yaml", ["lora.targets=all+embeddings", "lora.embedding_alpha=1"]).lora.embedding_alpha == 1.0
