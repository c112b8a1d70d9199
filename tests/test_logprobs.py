"""Log-prob helpers against hand computations and against log_softmax + gather."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from align.logprobs import (
    completion_logprobs,
    gather_logprobs,
    last_token_index,
    position_ids_from_mask,
    reduce_logprobs,
    sequence_logprobs,
    token_logprobs,
)

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


def test_sequence_logprobs_shift_and_mask_by_hand():
    # V = 2; logits at t predict token t+1. Position 0 has no prediction.
    logits_BTV = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [5.0, 5.0]]])
    labels_BT = torch.tensor([[1, 1, 0]])
    mask_BT = torch.tensor([[1, 1, 1]])
    # t=1: p(1) under [0, 0] = 1/2; t=2: p(0) under [ln 3, 0] = 3/4
    expected = torch.tensor([[0.0, math.log(0.5), math.log(0.75)]])
    torch.testing.assert_close(sequence_logprobs(logits_BTV, labels_BT, mask_BT), expected)
    masked = sequence_logprobs(logits_BTV, labels_BT, torch.tensor([[0, 0, 1]]))
    torch.testing.assert_close(masked, torch.tensor([[0.0, 0.0, math.log(0.75)]]))


def test_sequence_logprobs_matches_log_softmax_gather():
    g = torch.Generator().manual_seed(2)
    logits_BTV = torch.randn(3, 6, 9, generator=g)
    labels_BT = torch.randint(0, 9, (3, 6), generator=g)
    mask_BT = (torch.rand(3, 6, generator=g) > 0.3).long()
    full = torch.log_softmax(logits_BTV[:, :-1], -1).gather(-1, labels_BT[:, 1:, None])[..., 0]
    expected = torch.cat([torch.zeros(3, 1), full], dim=1) * mask_BT * (torch.arange(6) > 0)
    torch.testing.assert_close(sequence_logprobs(logits_BTV, labels_BT, mask_BT), expected)


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


def test_completion_logprobs_on_a_model_and_padding():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
    )
    model = LlamaForCausalLM(config).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    mask = torch.ones_like(ids)
    completion = torch.tensor([[0, 0, 1, 1, 1]])
    logits = model(input_ids=ids).logits
    expected = torch.log_softmax(logits[0, 1:4], -1).gather(-1, ids[0, 2:5, None]).sum()
    with torch.no_grad():
        got = completion_logprobs(model, ids, mask, completion)
        torch.testing.assert_close(got, expected[None].detach(), atol=1e-5, rtol=1e-5)
        mean = completion_logprobs(model, ids, mask, completion, average=True)
        torch.testing.assert_close(mean, got / 3)
        # Left padding gives the same answer (position ids come from the mask).
        left_ids = torch.tensor([[0, 0, 5, 6, 7, 8, 9]])
        left_mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1]])
        left_completion = torch.tensor([[0, 0, 0, 0, 1, 1, 1]])
        torch.testing.assert_close(completion_logprobs(model, left_ids, left_mask, left_completion), got, atol=1e-5, rtol=1e-5)
        per_token = token_logprobs(model, left_ids, left_mask, left_completion)
        assert per_token[0, :4].abs().sum() == 0
