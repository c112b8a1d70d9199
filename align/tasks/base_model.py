"""Configs of the tiny built-in Llama-style models.

What it does: `tiny_llama_config(vocab_size, size)` returns a `transformers.LlamaConfig` for
- "tiny-arith": the shipped base (0.55M parameters: 2 layers, hidden 128, 4 heads, MLP 512,
  context 64), sized so that a few CPU minutes of pretraining on
  `align.tasks.arithmetic.pretrain_corpus` learn the arithmetic world (measured: 3000 steps of
  batch 32 at LR 1e-3, 2-4 minutes on one core, reach 0.95-0.99 greedy and about 0.63 sampled
  accuracy on eval problems over 3 seeds x 3 CPU kernel sets; `scripts/studies/base_robustness.py`). A
  4-layer model learned no faster per step and costs twice as much per step on CPU;
- "test": a much smaller model (2 layers, hidden 32) for fast unit and integration tests.

What it leaves out: the weights and the pretraining loop (the toolkit's SFT trainer in full mode
builds the base; see `align.tasks.BUILTIN_BASES` for the suggested corpus size and schedule).

Run: `python -c "from align.tasks.base_model import tiny_llama_config as c; print(c(100))"`.
"""

from __future__ import annotations

from align.tasks.tokenizer import BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, SPECIAL_TOKENS

MODEL_SIZES: dict[str, dict] = {
    "tiny-arith": dict(
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
    ),
    "test": dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
    ),
}


def tiny_llama_config(vocab_size: int, size: str = "tiny-arith", **overrides):
    """A `LlamaConfig` of a built-in size; `overrides` replace any field."""
    from transformers import LlamaConfig

    if size not in MODEL_SIZES:
        raise ValueError(f"size must be one of {sorted(MODEL_SIZES)}, got {size!r}")
    fields = dict(
        vocab_size=vocab_size,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        attention_dropout=0.0,
        # Special token ids of the built-in tokenizer (ids 0..3 in SPECIAL_TOKENS order).
        pad_token_id=SPECIAL_TOKENS.index(PAD_TOKEN),
        bos_token_id=SPECIAL_TOKENS.index(BOS_TOKEN),
        eos_token_id=SPECIAL_TOKENS.index(EOS_TOKEN),
        **MODEL_SIZES[size],
    )
    fields.update(overrides)
    return LlamaConfig(**fields)
