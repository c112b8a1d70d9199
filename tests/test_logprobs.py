"""The one log-prob path (`align.logprobs.token_logprobs`, `SharedBase.logprobs`) against hand
computations, against log_softmax of the model's own logits, and on a soft-capped (Gemma-2-style)
model, where the sampled distribution is not softmax(lm_head(hidden))."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from align.logprobs import (
    gather_logprobs,
    position_ids_from_mask,
    reduce_logprobs,
    sequence_logprob_sums,
    token_logprobs,
    transforms_logits,
)
from align.tensors import last_token_index

torch.set_num_threads(1)


def test_gather_logprobs_by_hand():
    # logits (1, 2, 3): row 0 = [0, ln 2, ln 3] -> softmax = [1/6, 2/6, 3/6]; row 1 uniform.
    logits = torch.tensor([[[0.0, math.log(2.0), math.log(3.0)], [1.0, 1.0, 1.0]]])
    labels = torch.tensor([[2, 0]])
    expected = torch.tensor([[math.log(3 / 6), math.log(1 / 3)]])
    torch.testing.assert_close(gather_logprobs(logits, labels), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_gather_logprobs_matches_log_softmax(dtype):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 5, 11, generator=g) * 4).to(dtype)
    labels = torch.randint(0, 11, (3, 5), generator=g)
    reference = torch.log_softmax(logits.to(torch.float64), -1).gather(-1, labels[..., None])[..., 0]
    got = gather_logprobs(logits, labels)
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(got.double(), reference, atol=1e-5, rtol=1e-5)
    # 2-D input (N, V) too
    torch.testing.assert_close(gather_logprobs(logits[0], labels[0]).double(), reference[0], atol=1e-5, rtol=1e-5)


def test_gather_logprobs_gradient_matches():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 7, generator=g, requires_grad=True)
    labels = torch.randint(0, 7, (2, 4), generator=g)
    gather_logprobs(logits, labels).sum().backward()
    grad_ours = logits.grad.clone()
    logits.grad = None
    torch.log_softmax(logits, -1).gather(-1, labels[..., None]).sum().backward()
    torch.testing.assert_close(grad_ours, logits.grad)


def test_reduce_sum_and_mean():
    token_logps_BT = torch.tensor([[0.0, -1.0, -2.0, -3.0], [0.0, -4.0, 0.0, 0.0]])
    mask_BT = torch.tensor([[1, 0, 1, 1], [0, 1, 0, 0]])  # position 0 never counts
    torch.testing.assert_close(reduce_logprobs(token_logps_BT, mask_BT), torch.tensor([-5.0, -4.0]))
    torch.testing.assert_close(reduce_logprobs(token_logps_BT, mask_BT, average=True), torch.tensor([-2.5, -4.0]))


def test_positions_and_last_token():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert last_token_index(mask).tolist() == [2, 4, 4]
    assert position_ids_from_mask(mask).tolist() == [[0, 1, 2, 1, 1], [1, 1, 0, 1, 2], [0, 1, 2, 3, 4]]
    with pytest.raises(ValueError):
        last_token_index(torch.zeros(1, 3, dtype=torch.long))


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
    )
    return LlamaForCausalLM(config).eval()


def test_token_logprobs_on_a_model_shift_mask_and_padding():
    model = tiny_llama()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    mask = torch.ones_like(ids)
    completion = torch.tensor([[0, 0, 1, 1, 1]])
    logits = model(input_ids=ids).logits
    # logits at t predict token t + 1: tokens 2..4 are scored by logits 1..3; the rest are 0
    expected_T = torch.log_softmax(logits[0, 1:4], -1).gather(-1, ids[0, 2:5, None])[:, 0]
    with torch.no_grad():
        got = token_logprobs(model, ids, mask, completion).logps_BT
        torch.testing.assert_close(got[0, 2:], expected_T, atol=1e-5, rtol=1e-5)
        assert got[0, :2].abs().sum() == 0
        torch.testing.assert_close(reduce_logprobs(got, completion), expected_T.sum()[None], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(reduce_logprobs(got, completion, average=True), expected_T.mean()[None], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sequence_logprob_sums(got, completion), reduce_logprobs(got, completion))
        # Left padding gives the same answer (position ids come from the mask).
        left_ids = torch.tensor([[0, 0, 5, 6, 7, 8, 9]])
        left_mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1]])
        left_completion = torch.tensor([[0, 0, 0, 0, 1, 1, 1]])
        left = token_logprobs(model, left_ids, left_mask, left_completion).logps_BT
        torch.testing.assert_close(left[:, 2:], got, atol=1e-5, rtol=1e-5)
        assert left[0, :4].abs().sum() == 0
        # A target marked on padding never counts (the attention mask wins).
        assert token_logprobs(model, left_ids, left_mask, torch.ones_like(left_ids)).logps_BT[0, :3].abs().sum() == 0


def test_temperature_and_entropy_are_those_of_the_scaled_distribution():
    model = tiny_llama(1)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 40, (3, 8), generator=g)
    mask = torch.ones_like(ids)
    target = (torch.rand(3, 8, generator=g) > 0.4).long()
    with torch.no_grad():
        logits_BTV = model(input_ids=ids).logits[:, :-1] / 0.7
        out = token_logprobs(model, ids, mask, target, temperature=0.7, with_entropy=True)
    logp_BTV = torch.log_softmax(logits_BTV, -1)
    keep = target[:, 1:].bool()
    expected = torch.where(keep, logp_BTV.gather(-1, ids[:, 1:, None])[..., 0], 0.0)
    torch.testing.assert_close(out.logps_BT[:, 1:], expected, atol=1e-5, rtol=1e-5)
    entropy = torch.where(keep, -(logp_BTV.exp() * logp_BTV).sum(-1), 0.0)
    torch.testing.assert_close(out.entropy_BT[:, 1:], entropy, atol=1e-5, rtol=1e-5)
    assert out.logps_BT[:, 0].abs().sum() == 0 and out.entropy_BT[:, 0].abs().sum() == 0


def test_gradients_reach_the_model_and_equal_the_full_logits_path():
    model = tiny_llama(2).train()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    target = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 0, 0]])
    token_logprobs(model, ids, mask, target).logps_BT.sum().backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    picked = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
    (picked * target[:, 1:]).sum().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(ours[name], p.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_soft_capped_logits_are_trained_as_they_are_sampled():
    """Gemma-2 soft-caps its logits (cap * tanh(z / cap)) after the LM head. Generation samples from
    the capped logits, so the log-probs that PPO trains must be the capped ones too."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from align.rollout import generate
    from align.shared_base import SharedBase

    torch.manual_seed(0)
    config = Gemma2Config(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, head_dim=8, max_position_embeddings=64, final_logit_softcapping=2.0,
                          pad_token_id=0, eos_token_id=1, bos_token_id=2)
    model = Gemma2ForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)  # logits well past the cap, so capping changes the distribution
    assert transforms_logits(model)
    base = SharedBase(model, mode="lora", lora={"rank": 4})
    base.add_policy()
    base.add_reference()
    with torch.no_grad():  # a policy that differs from the reference
        for p in base.trainable_parameters("policy"):
            p.add_(0.05 * torch.randn_like(p))

    class Tok:  # the few tokenizer calls generate() makes, on integer "text"
        pad_token_id, eos_token_id = 0, 1

        def __call__(self, prompts, **kw):
            rows = [[int(t) for t in p.split()] for p in prompts]
            width = max(len(r) for r in rows)
            return {"input_ids": torch.tensor([[0] * (width - len(r)) + r for r in rows]),
                    "attention_mask": torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])}

        def decode(self, ids, skip_special_tokens=True):
            return " ".join(str(i) for i in ids)

    with base.role("policy") as policy_model:
        rollout = generate(policy_model, Tok(), ["5 6 7", "8 9"], max_new_tokens=6, temperature=0.8,
                           generator=torch.Generator().manual_seed(0))
    ids_BL, mask_BL = rollout.sequences()
    P = rollout.prompt_ids_BP.shape[1]
    target_BL = torch.cat([torch.zeros_like(rollout.prompt_mask_BP), rollout.response_mask_BT], dim=1)
    trained_BL = base.logprobs("policy", ids_BL, mask_BL, target_BL, temperature=0.8).logps_BT.detach()
    with torch.no_grad(), base.role("policy") as policy_model:
        outputs = policy_model(input_ids=ids_BL, attention_mask=mask_BL, position_ids=position_ids_from_mask(mask_BL))
        sampled_BLV = torch.log_softmax(outputs.logits[:, :-1] / 0.8, -1)  # what generate() samples from
        uncapped_BLV = torch.log_softmax(policy_model.lm_head(policy_model.model(
            input_ids=ids_BL, attention_mask=mask_BL, position_ids=position_ids_from_mask(mask_BL)).last_hidden_state)[:, :-1] / 0.8, -1)
    keep = target_BL[:, 1:].bool()
    sampled = torch.where(keep, sampled_BLV.gather(-1, ids_BL[:, 1:, None])[..., 0], 0.0)
    uncapped = torch.where(keep, uncapped_BLV.gather(-1, ids_BL[:, 1:, None])[..., 0], 0.0)
    torch.testing.assert_close(trained_BL[:, 1:], sampled, atol=1e-5, rtol=1e-5)
    assert (trained_BL[:, 1:] - uncapped).abs().max() > 0.1  # the head-only shortcut would train another distribution
    assert trained_BL[:, :P].abs().sum() == 0
