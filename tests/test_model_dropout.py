"""The base model's own dropout is off in reward, DPO and PPO training unless the recipe keeps it
(`train.model_dropout`); LoRA dropout (`lora.dropout`) is never touched (`align.dropout`).

On a tiny GPT-2 made from a config (dropout 0.1 in attention, residual and embeddings): the first
DPO step's loss is ln 2 (policy == reference at the start), and `train.model_dropout=true` brings
back the old behaviour (policy in train mode with dropout vs the reference in eval mode).
Run: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_model_dropout.py` (about 20 s).
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from align.config import load_recipe
from align.dropout import disable_model_dropout, model_dropout_probabilities
from align.models import load_model_and_tokenizer
from align.shared_base import SharedBase

COMMON = ["data.num_train=64", "data.num_eval=16", "train.log_every=1", "optimizer.lr=0.01",
          "optimizer.warmup_steps=0", "eval.enabled=false", "tracking.wandb=false", "lora.rank=4"]


def save_tiny_gpt2(path, pad_is_eos: bool = False) -> str:
    """A random tiny GPT-2 (dropout 0.1, GPT-2's default) with the built-in tokenizer, saved as a
    local model folder. `pad_is_eos`: the tokenizer pads with EOS, as GPT-2's own does here."""
    _, tokenizer = load_model_and_tokenizer("scratch:test")
    if pad_is_eos:
        tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=64,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    assert config.attn_pdrop == config.resid_pdrop == config.embd_pdrop == 0.1
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    return save_tiny_gpt2(tmp_path_factory.mktemp("gpt2"))


def _metric(run_dir, key):
    return [r[key] for r in map(json.loads, open(os.path.join(run_dir, "metrics.jsonl"))) if key in r]


def _dropout_ps(model, lora: bool):
    return [m.p for n, m in model.named_modules() if isinstance(m, torch.nn.Dropout) and ("lora_dropout" in n) == lora]


# ---------------------------------------------------------------- the helper


def test_disable_model_dropout_keeps_lora_dropout_and_covers_float_attention_dropout():
    from peft import LoraConfig, get_peft_model

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=2, n_positions=32))
    peft_model = get_peft_model(gpt2, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.2, target_modules=["c_attn"],
                                                 fan_in_fan_out=True))
    peft_model.train()
    flags = [(p, p.requires_grad) for p in peft_model.parameters()]
    assert disable_model_dropout(peft_model) == 2 * 3 + 1  # attn, resid, mlp per block + embeddings
    assert model_dropout_probabilities(peft_model) == []
    assert _dropout_ps(peft_model, lora=True) == [0.2, 0.2]  # the recipe's LoRA dropout is untouched
    assert all(m.training for m in peft_model.modules()) and all(p.requires_grad == f for p, f in flags)

    # Llama keeps attention dropout as a float attribute (no nn.Dropout); TRL's helper misses it.
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2, attention_dropout=0.5,
                                         attn_implementation="eager"))
    assert model_dropout_probabilities(llama) == [0.5, 0.5]
    ids = torch.randint(0, 50, (2, 8))
    torch.manual_seed(1)
    assert not torch.equal(llama.train()(ids).logits, llama.eval()(ids).logits)
    disable_model_dropout(llama)
    assert model_dropout_probabilities(llama) == [] and llama.config.attention_dropout == 0.5  # config as saved
    torch.testing.assert_close(llama.train()(ids).logits, llama.eval()(ids).logits, rtol=0, atol=0)


# ---------------------------------------------------------------- DPO


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_dpo_first_step_loss_is_ln2_without_model_dropout(tmp_path, gpt2_dir, mode):
    from align.trainers.dpo import train_dpo

    dpo = ["method=dpo", f"model={gpt2_dir}", "data.task=preference", "train.batch_size=8", "dpo.beta=0.5",
           "train.steps=1", f"mode={mode}", "lora.dropout=0.3", *COMMON]
    result = train_dpo(load_recipe(None, dpo + [f"output_dir={tmp_path / 'off'}"]))
    assert _metric(result.run_dir, "loss")[0] == pytest.approx(math.log(2), abs=1e-6)
    policy = result.model.role_model("policy")
    assert model_dropout_probabilities(policy) == []
    if mode == "lora":  # lora.dropout stays the recipe's (B = 0 at the start, so ln 2 holds with it)
        assert _dropout_ps(policy, lora=True) and set(_dropout_ps(policy, lora=True)) == {0.3}

    kept = train_dpo(load_recipe(None, dpo + [f"output_dir={tmp_path / 'kept'}", "train.model_dropout=true"]))
    first = _metric(kept.run_dir, "loss")[0]
    assert abs(first - math.log(2)) > 1e-4  # the old behaviour: dropout in the policy only
    assert set(model_dropout_probabilities(kept.model.role_model("policy"))) == {0.1}


# ---------------------------------------------------------------- reward modelling


def test_reward_training_has_no_model_dropout_unless_kept(tmp_path, gpt2_dir):
    from align.trainers.reward import train_reward

    rm = ["method=reward", f"model={gpt2_dir}", "data.task=preference", "train.batch_size=8", "train.steps=1",
          "lora.dropout=0.2", *COMMON]
    result = train_reward(load_recipe(None, rm + [f"output_dir={tmp_path / 'off'}"]))
    base: SharedBase = result.model
    assert model_dropout_probabilities(base.model) == []
    assert set(_dropout_ps(base.model, lora=True)) == {0.2}
    # What that buys: a reward forward in train mode is the eval-mode function (here with no LoRA
    # dropout), so scores do not depend on the mode; with the model's dropout they do.
    ids = torch.randint(3, 100, (4, 10))
    mask = torch.ones_like(ids)

    def train_and_eval_scores(disable: bool):
        fresh = SharedBase(load_model_and_tokenizer(gpt2_dir)[0], mode="lora", lora={"rank": 4})
        if disable:
            disable_model_dropout(fresh.model)
        fresh.add_reward()
        fresh.model.train()
        train_B = fresh.scores("reward", ids, mask)
        fresh.model.eval()
        return train_B, fresh.scores("reward", ids, mask)

    torch.testing.assert_close(*train_and_eval_scores(disable=True), rtol=0, atol=0)
    assert not torch.allclose(*train_and_eval_scores(disable=False))

    kept = train_reward(load_recipe(None, rm + [f"output_dir={tmp_path / 'kept'}", "train.model_dropout=true"]))
    assert set(model_dropout_probabilities(kept.model.model)) == {0.1}


# ---------------------------------------------------------------- PPO


def test_ppo_ratio_is_one_without_model_dropout_and_not_with_it(tmp_path, gpt2_dir):
    from align.trainers.ppo import train_ppo

    ppo = ["method=ppo", f"model={gpt2_dir}", "data.task=arithmetic", "train.steps=1", "optimizer.lr=0",
           "ppo.rollout_batch_size=8", "ppo.minibatch_size=4", "rollout.max_new_tokens=6", "ppo.ppo_epochs=1",
           *[c for c in COMMON if not c.startswith("optimizer.lr")]]
    result = train_ppo(load_recipe(None, ppo + [f"output_dir={tmp_path / 'off'}"]))
    assert _metric(result.run_dir, "ratio") == [pytest.approx(1.0, abs=1e-6)]
    assert model_dropout_probabilities(result.model.model) == []
    # With the model's dropout kept, the update's forward runs in train mode (dropout on) while
    # the experience ran in eval mode: the ratio is no longer exactly 1.
    kept = train_ppo(load_recipe(None, ppo + [f"output_dir={tmp_path / 'kept'}", "train.model_dropout=true"]))
    assert abs(_metric(kept.run_dir, "ratio")[0] - 1.0) > 1e-4
    assert not any(m.training for m in kept.model.model.modules())  # eval mode again after the update


def test_dpo_loss_in_train_mode_equals_trl_on_a_model_with_dropout(tmp_path, gpt2_dir):
    """The oracle of tests/test_dpo_trl_oracle.py, in train mode on GPT-2 (dropout 0.1): our trainer's
    setup (model dropout off, policy in train mode) gives TRL's DPOTrainer loss (TRL disables
    dropout too). With a trained-looking LoRA B, so that policy != reference."""
    from peft import get_peft_model_state_dict

    from align.losses import get_preference_loss
    from align.trainers.dpo import dpo_loss_on_batch
    from tests.test_dpo_trl_oracle import _batches, _cfg, _trainer

    model, tokenizer = load_model_and_tokenizer(gpt2_dir)
    trl_model = GPT2LMHeadModel.from_pretrained(gpt2_dir)
    disable_model_dropout(model)  # what train_dpo does unless train.model_dropout
    base = SharedBase(model, tokenizer, mode="lora", lora={"rank": 4, "alpha": 32.0})
    base.add_policy()
    base.add_reference()
    trainer = _trainer(tmp_path, trl_model, tokenizer, peft_config=base._lora_config)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    ours_by_name = {n.replace(".policy.", ".default."): p for n, p in base.peft_model.named_parameters() if ".policy." in n}
    with torch.no_grad():
        for name, tensor in get_peft_model_state_dict(trainer.model).items():
            ours_by_name[name.replace(".weight", ".default.weight")].copy_(tensor)
    ours, theirs = _batches(trainer, tokenizer)
    trainer.model.train(), base.model.train()
    trl_loss = trainer.compute_loss(trainer.model, theirs)
    our_loss, _, _ = dpo_loss_on_batch(base, ours, get_preference_loss("sigmoid"), _cfg())
    assert our_loss.item() == pytest.approx(trl_loss.item(), abs=1e-5)
    assert our_loss.item() != pytest.approx(math.log(2), abs=1e-3)
