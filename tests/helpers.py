"""Helpers shared by several test files."""

from __future__ import annotations

import shutil
from pathlib import Path


def crash_after_checkpoint(run_dir, keep_step: int) -> Path:
    """Make a finished run look as if it was killed right after its checkpoint at `keep_step`:
    later checkpoints are deleted and `checkpoints/latest` points back. Returns the folder."""
    checkpoints = Path(run_dir) / "checkpoints"
    for later in checkpoints.glob("step-*"):
        if later.is_dir() and int(later.name.split("-", 1)[1]) > keep_step:
            shutil.rmtree(later)
    (checkpoints / "latest").write_text(f"step-{keep_step:06d}")
    return checkpoints


def completion_logprobs(base, role: str, input_ids_BT, attention_mask_BT, completion_mask_BT, average: bool = False):
    """Sum (or mean) of the completion tokens' log-probs (B,) under `role`: `SharedBase.logprobs`
    (the one log-prob path) reduced per sequence."""
    from align.logprobs import reduce_logprobs

    token_logps_BT = base.logprobs(role, input_ids_BT, attention_mask_BT, completion_mask_BT).logps_BT
    return reduce_logprobs(token_logps_BT, completion_mask_BT * attention_mask_BT, average=average)


def role_logits(base, role: str, input_ids_BT, attention_mask_BT):
    """The full logits (B, T, V) of `role`'s forward: what tests compare bit for bit."""
    import torch

    from align.logprobs import position_ids_from_mask

    grad = torch.enable_grad() if base.is_trainable(role) else torch.no_grad()
    with grad, base.role(role) as model:
        return model(input_ids=input_ids_BT, attention_mask=attention_mask_BT,
                     position_ids=position_ids_from_mask(attention_mask_BT), use_cache=False).logits


# A few sentences to train the tiny byte-level BPE on (digits, punctuation, a non-ASCII word).
_BPE_TEXTS = [
    "The quick brown fox jumps over the lazy dog.", "Q: 12+7=? A: 19", "Q: 85-22=? A: 63",
    "Hello world! Hello there, how are you today?", "naïve café: 3 apples and 14 pears.",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>",
]
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# Llama 3's tokenizer.json Split regex (what llama.cpp calls the `llama-bpe` pre-tokenizer).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def tiny_bpe_tokenizer(vocab_size: int = 300, pre_tokenizer: str = "gpt2"):
    """A byte-level BPE (`tokenizers`, trained on a few sentences) as a PreTrainedTokenizerFast with
    ChatML-like special tokens and chat template; no BOS added on encode. `pre_tokenizer`: `gpt2`
    (ByteLevel's own regex, GPT-2), `smollm` (single digits first, SmolLM2) or `llama-bpe` (Llama 3's
    Split regex, then ByteLevel without its own)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = {
        "gpt2": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False),
        "smollm": lambda: pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                   pre_tokenizers.ByteLevel(add_prefix_space=False)]),
        "llama-bpe": lambda: pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
                                                      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
    }[pre_tokenizer]()
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(_BPE_TEXTS, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>")
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def tiny_bpe_llama(tied: bool = True, seed: int = 0, tokenizer=None):
    """A tiny random LlamaForCausalLM (2 layers, hidden 64, 4 heads, 2 KV heads: GQA; norms drawn
    away from 1, so a norm read into the wrong place shows) over `tokenizer` (default
    `tiny_bpe_tokenizer()`). Returns (model in eval mode, tokenizer)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer if tokenizer is not None else tiny_bpe_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         rms_norm_eps=1e-5, tie_word_embeddings=tied, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    return model, tokenizer


def write_tiny_llama_gguf(path, tied: bool = True, seed: int = 0, ftype: str = "f32"):
    """`tiny_bpe_llama(tied, seed)` written to the GGUF file `path` (`align.gguf_export`, f32 unless
    `ftype="f16"`). Returns (model, tokenizer): what a reader of `path` should reproduce."""
    from align.gguf_export import write_llama_gguf

    model, tokenizer = tiny_bpe_llama(tied, seed)
    write_llama_gguf(model, tokenizer, path, ftype=ftype)
    return model, tokenizer
