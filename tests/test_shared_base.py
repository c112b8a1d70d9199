"""SharedBase invariants: one base copy, role switching leaves flags and modes alone, one backward
reaches every trainable role, the reference stays the policy's start, saved roles round-trip.

Tiny random Llama and GPT-2 models (hidden 32, 2 layers, dropout 0), CPU, a few seconds each.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from align.shared_base import HEAD_FILE, SharedBase
from tests.helpers import completion_logprobs, role_logits

torch.set_num_threads(1)

VOCAB = 48
LORA = {"rank": 4, "alpha": 8.0, "targets": "all", "dropout": 0.0}


def tiny_model(kind: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if kind == "llama":
        config = LlamaConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            bos_token_id=1, eos_token_id=2, pad_token_id=0,
        )
        return LlamaForCausalLM(config)
    config = GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1, eos_token_id=2,
    )
    return GPT2LMHeadModel(config)


def batch(seed: int = 0, B: int = 3, T: int = 7):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, -2:] = 0  # right padding on one row
    completion = torch.zeros(B, T, dtype=torch.long)
    completion[:, 3:] = 1
    return ids, mask, completion * mask


def perturb(base: SharedBase, role: str, scale: float = 0.1, seed: int = 0) -> None:
    """Give a role non-zero adapter weights (LoRA B starts at 0, which hides gradient bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in base.role_parameters(role):
            param.add_(scale * torch.randn(param.shape, generator=g).to(param.dtype))


def snapshot(base: SharedBase):
    root = base.peft_model if base.peft_model is not None else base.model
    flags = {name: p.requires_grad for name, p in root.named_parameters()}
    modes = {name: m.training for name, m in root.named_modules()}
    for role in base.roles:
        head = base.head(role)
        if head is not None:
            flags[f"{role}.head"] = tuple(p.requires_grad for p in head.parameters())
            modes[f"{role}.head"] = head.training
        if base.mode == "full":
            model = base.role_model(role)
            flags[f"{role}.model"] = tuple(p.requires_grad for p in model.parameters())
            modes[f"{role}.model"] = tuple(m.training for m in model.modules())
    layers = [(layer._active_adapter, layer._disable_adapters) for layer in base._tuner_layers]
    return flags, modes, layers


def four_roles(kind: str, mode: str = "lora") -> SharedBase:
    """Policy, reference, a trainable reward (as in reward-model training) and value."""
    base = SharedBase(tiny_model(kind), None, mode=mode, lora=LORA)
    base.add_policy()
    base.add_reference()
    base.add_reward(trainable=True)
    base.add_value()
    return base


def storages(params) -> set[int]:
    return {p.untyped_storage().data_ptr() for p in params}


# ---------------------------------------------------------------------------- one copy


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_lora_mode_keeps_one_copy_of_the_base(kind):
    model = tiny_model(kind)
    before = storages(model.parameters())
    base = SharedBase(model, None, mode="lora", lora=LORA)
    base.add_policy()
    base.add_reference()
    base.add_reward()
    base.add_value()
    assert storages(base.base_parameters()) == before  # same storages, nothing duplicated
    assert len(base.base_parameters()) == len(list(tiny_model(kind).parameters()))
    for role in ("policy", "reward", "value"):
        assert storages(base.role_parameters(role)).isdisjoint(before)
    assert base.role_parameters("reference") == []
    assert all(not p.requires_grad for p in base.base_parameters())
    # Heads stay outside the peft model: no LoRA layer wraps them.
    assert all(p is not q for p in base.head_parameters() for q in base.model.parameters())


def test_full_mode_independent_copies_same_api():
    base = four_roles("llama", mode="full")
    copies = {role: storages(base.role_model(role).parameters()) for role in base.roles}
    assert copies["reference"] == storages(base.model.parameters())  # the frozen base itself
    for a in ("policy", "reference", "reward", "value"):
        for b in ("policy", "reference", "reward", "value"):
            if a < b:
                assert copies[a].isdisjoint(copies[b]), (a, b)
    assert base.trainable_parameters("reference") == []
    assert len(base.trainable_parameters("policy")) == len(list(base.model.parameters()))
    ids, mask, completion = batch()
    logps_B = completion_logprobs(base, "policy", ids, mask, completion)
    scores_B = base.scores("reward", ids, mask)
    values_BT = base.values("value", ids, mask)
    (logps_B.sum() + scores_B.sum() + values_BT.sum()).backward()
    for role in ("policy", "reward", "value"):
        assert all(p.grad is not None for p in base.trainable_parameters(role)), role
    assert all(p.grad is None for p in base.model.parameters())


# ---------------------------------------------------------------------------- role switching


def _forward_in_order(base: SharedBase, order, ids, mask, completion):
    out = {}
    for role in order:
        if role == "policy":
            out[role] = completion_logprobs(base, "policy", ids, mask, completion)
        elif role == "reward":
            out[role] = base.scores("reward", ids, mask)
        else:
            out[role] = base.values("value", ids, mask)
    return out


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("mode", ["lora", "full"])
def test_role_order_does_not_change_results_or_gradients(kind, mode):
    base = four_roles(kind, mode=mode)
    for i, role in enumerate(("policy", "reward", "value")):
        perturb(base, role, seed=i)
    ids, mask, completion = batch()
    results = []
    for order in (("policy", "reward", "value"), ("value", "reward", "policy")):
        for role in base.roles:
            for p in base.role_parameters(role):
                p.grad = None
        out = _forward_in_order(base, order, ids, mask, completion)
        # ONE backward through all three roles.
        loss = out["policy"].sum() + out["reward"].sum() + (out["value"] ** 2).sum()
        loss.backward()
        grads = {role: [p.grad.clone() for p in base.trainable_parameters(role)] for role in ("policy", "reward", "value")}
        results.append((out, grads))
    (out_a, grads_a), (out_b, grads_b) = results
    for role in ("policy", "reward", "value"):
        torch.testing.assert_close(out_a[role], out_b[role], rtol=0, atol=0)
        assert len(grads_a[role]) > 0
        for ga, gb in zip(grads_a[role], grads_b[role]):
            torch.testing.assert_close(ga, gb, rtol=0, atol=0)
        # Every trainable parameter of every role got a non-zero gradient from the one backward.
        assert all(g.abs().sum() > 0 for g in grads_a[role]), role


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_policy_and_value_grads_from_one_backward_interleaved(kind):
    """Forward policy, then switch to value, then reference, then back: one backward."""
    base = SharedBase(tiny_model(kind), None, lora=LORA)
    base.add_policy()
    base.add_reference()
    base.add_value()
    perturb(base, "policy")
    perturb(base, "value", seed=1)
    ids, mask, completion = batch()
    with base.role("policy") as model:
        logits = model(input_ids=ids, attention_mask=mask).logits
    values_BT = base.values("value", ids, mask)
    ref_B = completion_logprobs(base, "reference", ids, mask, completion)
    assert not ref_B.requires_grad
    (logits.float().logsumexp(-1).sum() + values_BT.sum()).backward()
    for role in ("policy", "value"):
        params = base.trainable_parameters(role)
        assert params and all(p.grad is not None and p.grad.abs().sum() > 0 for p in params), role


@pytest.mark.parametrize("start_mode", ["train", "eval"])
def test_flags_and_modes_unchanged_by_roles_and_adapter_loading(tmp_path, start_mode):
    # A trained reward model to load later as a frozen adapter.
    trainer = SharedBase(tiny_model("llama"), None, lora=LORA)
    trainer.add_reward()
    perturb(trainer, "reward")
    trainer.save_role("reward", tmp_path / "rm")

    base = SharedBase(tiny_model("llama"), None, lora=LORA)
    getattr(base.model, start_mode)()
    base.add_policy()
    base.add_reference()  # adapters disabled
    base.add_value()
    state = snapshot(base)
    flags, modes, _ = state
    assert flags["base_model.model.model.layers.0.self_attn.q_proj.lora_A.policy.weight"] is True
    assert flags["base_model.model.model.layers.0.self_attn.q_proj.lora_A.value.weight"] is True
    assert all(m == (start_mode == "train") for m in modes.values())

    ids, mask, completion = batch()
    for role in ("policy", "reference", "value", "reference", "policy"):
        with base.role(role):
            pass
        assert snapshot(base) == state, role
    completion_logprobs(base, "reference", ids, mask, completion)
    completion_logprobs(base, "policy", ids, mask, completion)
    base.values("value", ids, mask)
    assert snapshot(base) == state

    # Loading a frozen adapter (peft's load_adapter would call eval() and flip flags).
    base.add_reward(tmp_path / "rm")
    flags_after, modes_after, layers_after = snapshot(base)
    for name, flag in flags.items():
        assert flags_after[name] == flag, name
    for name, training in modes.items():
        assert modes_after[name] == training, name
    assert all(m == (start_mode == "train") for m in modes_after.values())  # new layers match too
    assert base.trainable_parameters("reward") == []
    state = snapshot(base)
    for role in ("reward", "policy", "reference", "value"):
        with base.role(role):
            pass
    base.scores("reward", ids, mask)
    assert snapshot(base) == state
    # Outside any role, the model is the plain base (adapters disabled).
    assert all(layer._disable_adapters for layer in base._tuner_layers)


def test_frozen_role_runs_in_eval_mode_inside_and_restores():
    base = SharedBase(tiny_model("llama"), None, lora=LORA)
    base.model.train()
    base.add_policy()
    base.add_reference()
    with base.role("reference") as model:
        assert not model.training
    with base.role("policy") as model:
        assert model.training
    assert base.model.training


# ---------------------------------------------------------------------------- reference


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("mode", ["lora", "full"])
def test_reference_is_untouched_base_after_policy_steps(kind, mode):
    model = tiny_model(kind)
    pristine = copy.deepcopy(model).eval()
    base = SharedBase(model, None, mode=mode, lora=LORA)
    base.add_policy()
    base.add_reference()
    ids, mask, completion = batch()
    optimizer = torch.optim.AdamW(base.trainable_parameters("policy"), lr=1e-2)
    for _ in range(3):
        loss = -completion_logprobs(base, "policy", ids, mask, completion).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        expected = pristine(input_ids=ids, attention_mask=mask, position_ids=_positions(mask)).logits
    assert torch.equal(role_logits(base, "reference", ids, mask), expected)  # bit for bit
    assert not torch.allclose(role_logits(base, "policy", ids, mask), expected)


def _positions(mask):
    from align.logprobs import position_ids_from_mask

    return position_ids_from_mask(mask)


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_reference_is_the_start_adapter_when_policy_starts_from_one(tmp_path, mode):
    # An "SFT run": a policy with non-zero adapter, saved.
    sft = SharedBase(tiny_model("llama"), None, mode=mode, lora=LORA)
    sft.add_policy()
    perturb(sft, "policy", scale=0.05 if mode == "full" else 0.3)
    sft.save_role("policy", tmp_path / "sft")

    model = tiny_model("llama")
    pristine = copy.deepcopy(model).eval()
    base = SharedBase(model, None, mode=mode, lora=LORA)
    base.add_policy(init_adapter=tmp_path / "sft")
    base.add_reference()
    assert not base.is_trainable("reference")
    ids, mask, completion = batch()
    start = role_logits(base, "policy", ids, mask).detach()
    assert torch.equal(role_logits(base, "reference", ids, mask), start)
    with torch.no_grad():
        plain = pristine(input_ids=ids, attention_mask=mask, position_ids=_positions(mask)).logits
    assert not torch.allclose(start, plain)  # disabling adapters would be the wrong reference

    optimizer = torch.optim.AdamW(base.trainable_parameters("policy"), lr=1e-2)
    for _ in range(3):
        loss = -completion_logprobs(base, "policy", ids, mask, completion).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert torch.equal(role_logits(base, "reference", ids, mask), start)
    assert not torch.allclose(role_logits(base, "policy", ids, mask), start)


# ---------------------------------------------------------------------------- reward and value


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("mode", ["lora", "full"])
def test_reward_round_trip_onto_fresh_base(tmp_path, kind, mode):
    trainer = SharedBase(tiny_model(kind), None, mode=mode, lora=LORA)
    trainer.add_reward()  # trainable, for reward-model training
    assert trainer.is_trainable("reward") and trainer.trainable_parameters("reward")
    perturb(trainer, "reward", scale=0.05)
    ids, mask, _ = batch()
    expected = trainer.scores("reward", ids, mask).detach()
    trainer.save_role("reward", tmp_path / "rm")
    assert (tmp_path / "rm" / HEAD_FILE).is_file()

    fresh = SharedBase(tiny_model(kind), None, mode=mode, lora=LORA)
    fresh.add_policy()
    fresh.add_reward(tmp_path / "rm")
    assert not fresh.is_trainable("reward") and fresh.trainable_parameters("reward") == []
    scores = fresh.scores("reward", ids, mask)
    assert not scores.requires_grad
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-6)


def test_frozen_reward_gets_no_grads_and_stays_fixed(tmp_path):
    trainer = SharedBase(tiny_model("llama"), None, lora=LORA)
    trainer.add_reward()
    perturb(trainer, "reward")
    trainer.save_role("reward", tmp_path / "rm")

    base = SharedBase(tiny_model("llama"), None, lora=LORA)
    base.add_policy()
    base.add_reward(tmp_path / "rm")
    base.add_value(init_from_reward=True)
    ids, mask, completion = batch()
    before = base.scores("reward", ids, mask)
    params = [*base.trainable_parameters("policy"), *base.trainable_parameters("value")]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(2):
        loss = -completion_logprobs(base, "policy", ids, mask, completion).mean()
        loss = loss + (base.values("value", ids, mask) - base.scores("reward", ids, mask)[:, None]).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(p.grad is None and not p.requires_grad for p in base.role_parameters("reward"))
    assert torch.equal(base.scores("reward", ids, mask), before)


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_value_from_reward_is_a_trainable_copy(tmp_path, mode):
    base = SharedBase(tiny_model("gpt2"), None, mode=mode, lora=LORA)
    base.add_reward(trainable=False)
    perturb(base, "reward", scale=0.05)
    base.add_value(init_from_reward=True)
    ids, mask, _ = batch()
    values_BT = base.values("value", ids, mask)
    last = mask.sum(1) - 1  # right padding in this batch
    torch.testing.assert_close(values_BT[torch.arange(3), last], base.scores("reward", ids, mask), rtol=0, atol=1e-6)
    assert storages(base.role_parameters("value")).isdisjoint(storages(base.role_parameters("reward")))
    assert base.trainable_parameters("value") and not base.trainable_parameters("reward")
    # Value role round-trip, and load_role in place keeps parameter identity (resume).
    base.save_role("value", tmp_path / "value")
    params_before = base.trainable_parameters("value")
    perturb(base, "value", seed=3)
    base.load_role("value", tmp_path / "value")
    assert all(a is b for a, b in zip(params_before, base.trainable_parameters("value")))
    torch.testing.assert_close(base.values("value", ids, mask), values_BT, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("mode", ["lora", "full"])
def test_logprob_readout_is_the_head_plus_weighted_completion_logprobs(kind, mode):
    base = SharedBase(tiny_model(kind), None, mode=mode, lora=LORA)
    base.add_policy()
    base.add_reward(readout="last_token+logprob")
    head = base.head("reward")
    assert head.readout == "last_token+logprob" and torch.equal(head.logprob_weight.detach(), torch.zeros(2))
    perturb(base, "reward", scale=0.05)
    with torch.no_grad():
        head.logprob_weight.copy_(torch.tensor([0.3, -0.7]))
    ids, mask, completion = batch()
    scores_B = base.scores("reward", ids, mask, completion)
    # by hand, from the public API: w . h_last + b + a_sum * sum log p + a_mean * mean log p
    last = mask.sum(1) - 1
    h_last = base.hidden_states("reward", ids, mask)[torch.arange(3), last]
    logp_sum = completion_logprobs(base, "reward", ids, mask, completion)
    logp_mean = completion_logprobs(base, "reward", ids, mask, completion, average=True)
    by_hand = h_last @ head.weight[0] + head.bias[0] + 0.3 * logp_sum - 0.7 * logp_mean
    torch.testing.assert_close(scores_B, by_hand, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(scores_B, h_last @ head.weight[0] + head.bias[0])  # the log-prob term counts
    with pytest.raises(ValueError, match="completion_mask"):
        base.scores("reward", ids, mask)
    # one backward reaches the log-prob weights and the role's adapter (or copy) through log p
    scores_B.sum().backward()
    assert head.logprob_weight.grad is not None and head.logprob_weight.grad.abs().sum() > 0
    lm_head = base.role_model("reward").get_output_embeddings()
    if mode == "full":  # FullFT trains the LM head it now reads (a last_token head leaves it frozen)
        assert lm_head.weight.requires_grad and lm_head.weight.grad is not None
    else:  # the shared base, the LM head included, stays frozen and gradient-free
        assert not lm_head.weight.requires_grad and lm_head.weight.grad is None
        assert all(p.grad is not None for p in base.trainable_parameters("reward"))
        assert all(p.grad is None for p in base.trainable_parameters("policy"))


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_logprob_readout_round_trips_and_value_takes_the_hidden_state_part(tmp_path, mode):
    trainer = SharedBase(tiny_model("llama"), None, mode=mode, lora=LORA)
    trainer.add_reward(readout="last_token+logprob")
    perturb(trainer, "reward", scale=0.05)
    ids, mask, completion = batch()
    expected = trainer.scores("reward", ids, mask, completion).detach()
    trainer.save_role("reward", tmp_path / "rm")

    fresh = SharedBase(tiny_model("llama"), None, mode=mode, lora=LORA)
    fresh.add_policy()
    fresh.add_reward(tmp_path / "rm")  # the readout comes from the saved head
    assert fresh.head("reward").readout == "last_token+logprob"
    torch.testing.assert_close(fresh.scores("reward", ids, mask, completion), expected, rtol=0, atol=1e-6)

    fresh.add_value(init_from_reward=True)
    value_head, reward_head = fresh.head("value"), fresh.head("reward")
    assert value_head.readout == "last_token" and value_head.logprob_weight is None
    last = mask.sum(1) - 1
    h_last = fresh.hidden_states("reward", ids, mask)[torch.arange(3), last]
    torch.testing.assert_close(fresh.values("value", ids, mask)[torch.arange(3), last],
                               h_last @ reward_head.weight[0] + reward_head.bias[0], rtol=1e-5, atol=1e-6)
    # a saved head of the other readout cannot be loaded over an existing role
    plain = SharedBase(tiny_model("llama"), None, mode=mode, lora=LORA)
    plain.add_reward(readout="last_token")
    with pytest.raises(ValueError, match="last_token\\+logprob head cannot be loaded"):
        plain.load_role("reward", tmp_path / "rm")
    with pytest.raises(ValueError, match="readout must be one of"):
        SharedBase(tiny_model("llama"), None, mode=mode, lora=LORA).add_reward(readout="mean")


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_last_token_score_left_and_right_padding(kind):
    base = SharedBase(tiny_model(kind), None, lora=LORA)
    base.add_reward()
    perturb(base, "reward")
    rows = [[5, 6, 7, 8, 9], [10, 11, 12], [13, 14, 15, 16]]
    T = max(len(r) for r in rows)
    right = torch.tensor([r + [0] * (T - len(r)) for r in rows])
    right_mask = torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in rows])
    left = torch.tensor([[0] * (T - len(r)) + r for r in rows])
    left_mask = torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in rows])
    right_scores = base.scores("reward", right, right_mask)
    left_scores = base.scores("reward", left, left_mask)
    single = torch.cat([base.scores("reward", torch.tensor([r]), torch.ones(1, len(r), dtype=torch.long)) for r in rows])
    torch.testing.assert_close(right_scores, single, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(left_scores, single, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- saving


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_saved_policy_loads_in_plain_peft(tmp_path, kind):
    from peft import PeftModel

    base = SharedBase(tiny_model(kind), None, lora=LORA)
    base.add_policy()
    base.add_reference()
    base.add_value()  # another adapter present must not leak into the saved policy
    perturb(base, "policy")
    perturb(base, "value", seed=1)
    base.save_role("policy", tmp_path / "policy")
    assert (tmp_path / "policy" / "adapter_config.json").is_file()
    assert (tmp_path / "policy" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "policy" / HEAD_FILE).exists()

    plain = PeftModel.from_pretrained(tiny_model(kind), str(tmp_path / "policy")).eval()
    ids, mask, _ = batch()
    with torch.no_grad():
        expected = plain(input_ids=ids, attention_mask=mask, position_ids=_positions(mask)).logits
    torch.testing.assert_close(role_logits(base, "policy", ids, mask), expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError):
        base.save_role("reference", tmp_path / "ref")  # the base itself: nothing to save


def test_full_mode_save_and_load_policy(tmp_path):
    base = SharedBase(tiny_model("gpt2"), None, mode="full")
    base.add_policy()
    perturb(base, "policy", scale=0.01)
    base.save_role("policy", tmp_path / "policy")
    ids, mask, _ = batch()
    expected = role_logits(base, "policy", ids, mask).detach()
    fresh = SharedBase(tiny_model("gpt2"), None, mode="full")
    fresh.load_role("policy", tmp_path / "policy")
    assert fresh.is_trainable("policy")
    torch.testing.assert_close(role_logits(fresh, "policy", ids, mask), expected, rtol=0, atol=1e-6)


def test_errors_are_clear(tmp_path):
    base = SharedBase(tiny_model("llama"), None, lora=LORA)
    with pytest.raises(KeyError):
        role_logits(base, "policy", *batch()[:2])
    base.add_policy()
    with pytest.raises(ValueError):
        base.add_policy()
    with pytest.raises(ValueError):
        base.scores("policy", *batch()[:2])  # no head
    with pytest.raises(FileNotFoundError):
        base.add_reward(tmp_path / "missing")
    with pytest.raises(ValueError):
        SharedBase(tiny_model("llama"), None, mode="half")


def test_generate_as_a_role_delegates_to_rollout():
    from align.rollout import generate
    from align.tasks.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    pristine = copy.deepcopy(model)
    base = SharedBase(model, tokenizer, lora=LORA)
    base.model.train()
    base.add_policy()
    base.add_reference()
    perturb(base, "policy", scale=0.5)
    prompts = ["Q: 1+2=? A:", "Q: 10+20=? A:"]
    state = snapshot(base)
    ref = base.generate("reference", prompts, max_new_tokens=4, do_sample=False, progress=False)
    plain = generate(pristine, tokenizer, prompts, max_new_tokens=4, do_sample=False, progress=False)
    assert torch.equal(ref.response_ids_BT, plain.response_ids_BT)
    policy = base.generate("policy", prompts, max_new_tokens=4, do_sample=False, progress=False)
    assert snapshot(base) == state and base.model.training
    # The policy's first greedy token is the argmax of its own logits after the prompt.
    first = role_logits(base, "policy", policy.prompt_ids_BP, policy.prompt_mask_BP)[:, -1].argmax(-1)
    assert torch.equal(policy.response_ids_BT[:, 0], first)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_bfloat16_base(kind):
    base = SharedBase(tiny_model(kind).to(torch.bfloat16), None, lora=LORA)
    base.add_policy()
    base.add_reference()
    base.add_reward(trainable=False)
    base.add_value()
    perturb(base, "policy")
    ids, mask, completion = batch()
    logps_B = completion_logprobs(base, "policy", ids, mask, completion)
    ref_B = completion_logprobs(base, "reference", ids, mask, completion)
    scores_B = base.scores("reward", ids, mask)
    values_BT = base.values("value", ids, mask)
    assert logps_B.dtype == ref_B.dtype == scores_B.dtype == values_BT.dtype == torch.float32
    assert torch.isfinite(logps_B).all() and torch.isfinite(values_BT).all()
    (logps_B.sum() + values_BT.sum()).backward()
    for role in ("policy", "value"):
        assert all(p.grad is not None for p in base.trainable_parameters(role))
    assert all(p.dtype == torch.bfloat16 for p in base.base_parameters())


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_activation_checkpointing_keeps_gradients_right(kind):
    """A checkpointed layer is recomputed during backward; the adapter active THEN must not matter."""
    grads = []
    for checkpointing in (False, True):
        base = SharedBase(tiny_model(kind), None, lora=LORA)
        base.model.train()
        base.add_policy()
        base.add_reference()
        base.add_value()
        perturb(base, "policy")
        perturb(base, "value", seed=1)
        if checkpointing:
            base.enable_activation_checkpointing()
            pristine = copy.deepcopy(base.model)  # a deepcopy must not drag the SharedBase along
            assert sum(1 for _ in pristine.modules()) == sum(1 for _ in base.model.modules())
        ids, mask, completion = batch()
        logps_B = completion_logprobs(base, "policy", ids, mask, completion)
        values_BT = base.values("value", ids, mask)
        completion_logprobs(base, "reference", ids, mask, completion)
        (logps_B.sum() + values_BT.pow(2).sum()).backward()
        grads.append([p.grad.clone() for role in ("policy", "value") for p in base.trainable_parameters(role)])
    for plain, checkpointed in zip(*grads):
        torch.testing.assert_close(checkpointed, plain)
