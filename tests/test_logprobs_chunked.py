"""The chunked head path of `align.logprobs.token_logprobs`: log-probs, entropies and gradients equal
the one-piece path on models with a large vocabulary (made from configs), frozen head (LoRA) and
trainable tied head (full fine-tuning), at a temperature, and through soft-capped (Gemma-2) and
scaled (Cohere, Granite) heads; the default budget keeps small batches in one piece.

Run: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_logprobs_chunked.py` (about 20 s).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from align.logprobs import (
    DEFAULT_LOGPROB_CHUNK_BYTES, LogitTransform, chunk_rows, chunked_head_logprobs, logit_transform, position_ids_from_mask,
    token_logprobs,
)

torch.set_num_threads(1)
VOCAB = 32000  # a large vocabulary: one chunk of 7 rows is 0.9 MB of logits, the batch's ~90 rows 11 MB
SMALL_CHUNK = 7 * 4 * VOCAB  # 7 target tokens per chunk


def llama(seed: int = 0, vocab: int = VOCAB, tied: bool = True):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                        tie_word_embeddings=tied)).train()


def batch(vocab: int = VOCAB, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (4, 30), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :6] = 0  # left padding
    mask[2, -4:] = 0  # right padding
    target = (torch.rand(4, 30, generator=g) > 0.25).long()
    return ids, mask, target


def logps_and_grads(model, chunk_bytes, temperature=1.0, trainable=lambda name: True):
    model.zero_grad(set_to_none=True)
    for name, p in model.named_parameters():
        p.requires_grad_(trainable(name))
    ids, mask, target = batch(model.config.vocab_size)
    out = token_logprobs(model, ids, mask, target, temperature=temperature, with_entropy=True, chunk_bytes=chunk_bytes)
    weights_BT = torch.linspace(-1.0, 2.0, ids.shape[1])  # an upstream gradient that differs per token
    (out.logps_BT * weights_BT).sum().backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("head", ["frozen", "trainable"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_equals_one_piece_with_gradients(head, temperature):
    """LoRA freezes the head (d log p / d h is kept from the forward); full fine-tuning trains the
    tied embedding/head (each chunk's logits are recomputed in the backward). Both to 1e-5."""
    model = llama()
    trainable = (lambda n: "embed_tokens" not in n) if head == "frozen" else (lambda n: True)
    plain, plain_grads = logps_and_grads(model, 0, temperature, trainable)  # 0: one piece
    chunked, chunked_grads = logps_and_grads(model, SMALL_CHUNK, temperature, trainable)
    assert int(batch()[2].sum()) > 4 * chunk_rows(SMALL_CHUNK, VOCAB)  # several chunks really ran
    torch.testing.assert_close(chunked.logps_BT, plain.logps_BT, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chunked.entropy_BT, plain.entropy_BT, atol=1e-5, rtol=1e-5)
    assert chunked.logps_BT.requires_grad and not chunked.entropy_BT.requires_grad
    assert plain_grads.keys() == chunked_grads.keys() and len(plain_grads) > 0
    assert ("model.embed_tokens.weight" in chunked_grads) == (head == "trainable")
    for name in plain_grads:
        torch.testing.assert_close(chunked_grads[name], plain_grads[name], atol=1e-5, rtol=1e-5, msg=name)


def test_chunk_function_with_bias_untied_and_no_grad():
    """The autograd function alone: an untied head with a bias, every input trainable, against
    log_softmax of the full logits; under no_grad it saves nothing and gives the same values."""
    g = torch.Generator().manual_seed(0)
    head = nn.Linear(16, 5000, bias=True)
    with torch.no_grad():
        head.bias.copy_(torch.randn(5000, generator=g))
    hidden = torch.randn(23, 16, generator=g, requires_grad=True)
    labels = torch.randint(0, 5000, (23,), generator=g)
    upstream = torch.randn(23, generator=g)
    logps, entropy = chunked_head_logprobs(head, hidden, labels, LogitTransform(), 1.3, rows=4)
    (logps * upstream).sum().backward()
    ours = [hidden.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone()]
    hidden.grad = head.weight.grad = head.bias.grad = None
    logp_NV = torch.log_softmax(head(hidden) / 1.3, -1)
    expected = logp_NV.gather(-1, labels[:, None])[:, 0]
    (expected * upstream).sum().backward()
    torch.testing.assert_close(logps, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(entropy, -(logp_NV.exp() * logp_NV).sum(-1), atol=1e-5, rtol=1e-5)
    for got, want in zip(ours, [hidden.grad, head.weight.grad, head.bias.grad]):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        again, _ = chunked_head_logprobs(head, hidden, labels, LogitTransform(), 1.3, rows=4)
    assert again.grad_fn is None
    torch.testing.assert_close(again, logps.detach())


def gemma2(vocab: int = 3000):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    model = Gemma2ForCausalLM(Gemma2Config(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=64, final_logit_softcapping=2.0,
        pad_token_id=0, eos_token_id=1, bos_token_id=2)).train()
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)  # logits well past the cap, so capping matters
    return model


def cohere(vocab: int = 3000):
    from transformers import CohereConfig, CohereForCausalLM

    torch.manual_seed(0)
    return CohereForCausalLM(CohereConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                          logit_scale=0.3, pad_token_id=0, eos_token_id=1, bos_token_id=2)).train()


def granite(vocab: int = 3000):
    from transformers import GraniteConfig, GraniteForCausalLM

    torch.manual_seed(0)
    return GraniteForCausalLM(GraniteConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                            logits_scaling=4.0, pad_token_id=0, eos_token_id=1, bos_token_id=2)).train()


@pytest.mark.parametrize("build", [gemma2, cohere, granite], ids=["gemma2-softcap", "cohere-scale", "granite-scaling"])
def test_transformed_heads_go_through_the_chunks_as_the_model_samples(build):
    """The log-probs (and gradients) of the chunked path are those of the model's OWN logits
    (what generation samples from), soft-capped or scaled, at a temperature."""
    model = build()
    transform = logit_transform(model)
    assert transform is not None and not transform.identity
    ids, mask, target = batch(model.config.vocab_size)
    upstream_BT = torch.linspace(-1.0, 2.0, ids.shape[1])[1:]
    logits_BTV = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    logp_BTV = torch.log_softmax(logits_BTV[:, :-1].float() / 0.8, -1)
    keep = (target[:, 1:] * mask[:, 1:] * mask[:, :-1]).bool()
    expected = torch.where(keep, logp_BTV.gather(-1, ids[:, 1:, None])[..., 0], 0.0)
    (expected * upstream_BT).sum().backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    out = token_logprobs(model, ids, mask, target, temperature=0.8, with_entropy=True, chunk_bytes=5 * 4 * model.config.vocab_size)
    (out.logps_BT[:, 1:] * upstream_BT).sum().backward()
    torch.testing.assert_close(out.logps_BT[:, 1:], expected, atol=1e-5, rtol=1e-5)
    entropy = torch.where(keep, -(logp_BTV.exp() * logp_BTV).sum(-1), 0.0)
    torch.testing.assert_close(out.entropy_BT[:, 1:], entropy.detach(), atol=1e-5, rtol=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want[name], atol=1e-5, rtol=1e-4, msg=name)


def test_unknown_transforms_take_the_full_forward():
    model = llama(vocab=100)
    assert logit_transform(model) == LogitTransform()
    model.config.logits_scaling = 2.0  # a llama that says it scales: not a known head, so the full forward
    assert logit_transform(model) is None


def test_default_budget_keeps_small_batches_in_one_piece_and_shared_base_passes_its_setting():
    """The default (32 MiB of float32 logits) chunks only batches whose target logits exceed it:
    at Qwen2.5's vocabulary 55 tokens a chunk; the built-in base's ~70-token vocabulary never."""
    from align.shared_base import SharedBase

    assert DEFAULT_LOGPROB_CHUNK_BYTES == 32 * 2**20
    assert chunk_rows(DEFAULT_LOGPROB_CHUNK_BYTES, 151_936) == 55
    assert chunk_rows(DEFAULT_LOGPROB_CHUNK_BYTES, 100) > 80_000
    assert chunk_rows(0, VOCAB) > 10**12  # 0: never chunk
    base = SharedBase(llama(vocab=VOCAB), None, lora={"rank": 4})
    base.add_policy()
    assert base.logprob_chunk_bytes == DEFAULT_LOGPROB_CHUNK_BYTES
    ids, mask, target = batch()
    plain = base.logprobs("policy", ids, mask, target).logps_BT
    base.logprob_chunk_bytes = SMALL_CHUNK
    calls = []
    import align.logprobs as logprobs

    original = logprobs._ChunkedHeadLogProbs.forward
    try:
        logprobs._ChunkedHeadLogProbs.forward = staticmethod(lambda *a: calls.append(1) or original(*a))
        chunked = base.logprobs("policy", ids, mask, target).logps_BT
    finally:
        logprobs._ChunkedHeadLogProbs.forward = staticmethod(original)
    assert calls, "the shared base's setting did not reach token_logprobs"
    torch.testing.assert_close(chunked, plain, atol=1e-5, rtol=1e-5)
