"""GGUF files out: a Llama-architecture causal LM and its byte-level BPE tokenizer as one `.gguf`
file, in llama.cpp's conventions, so llama.cpp (and `transformers`' own GGUF reader, which the
tests use) loads it:

    write_llama_gguf(model, tokenizer, "out/model-f16.gguf", ftype="f16")   # or ftype="f32"

- architecture `llama`; hyperparameters under `llama.*` (context_length, embedding_length,
  block_count, feed_forward_length, rope.dimension_count, attention.head_count(_kv),
  attention.layer_norm_rms_epsilon, rope.freq_base, vocab_size);
- tensors under llama.cpp's names (`gguf.get_tensor_name_map`: token_embd, blk.N.attn_q/k/v/
  output, blk.N.ffn_gate/up/down, blk.N.attn_norm/ffn_norm, output_norm, and `output` only when
  the LM head is not tied to the embeddings). Q and K rows are permuted as llama.cpp's
  `convert_hf_to_gguf.py` does (its rotary embedding pairs neighbouring dimensions, transformers'
  pairs the two halves of each head); transformers' reader undoes it;
- `f16`: matrices in float16, norms (1-D) kept in float32, as llama.cpp's converter writes them;
  `f32`: everything in float32;
- the tokenizer as `tokenizer.ggml.model = "gpt2"`: tokens (byte-level spelling, ids beyond the
  tokenizer's length padded as `[PADn]`, UNUSED), token types (special added tokens CONTROL, other
  added tokens USER_DEFINED), merges, bos/eos/unk/pad ids, add_bos/add_eos, chat_template, and
  `tokenizer.ggml.pre` named after the pre-tokenizer (`gpt2`: plain ByteLevel; `smollm`: Digits +
  ByteLevel, SmolLM2; a Split regex transformers knows, e.g. `llama-bpe` for Llama 3).

Left out, refused with one line (`gguf_refusal` says why before anything is written): other
architectures, Llama configs with rope scaling or attention/MLP biases, tokenizers that are not
byte-level BPE (sentencepiece, and the built-in char-level WordLevel tokenizer of
`builtin:tiny-arith`: transformers' GGUF reader has no WordLevel kind to read it back as), and
quantized types (llama.cpp's `llama-quantize` makes those from the f16 file). Reading GGUF is
`align.gguf_io`.

Run its tests: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_export_policy.py`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from align.config import ConfigError

FTYPES = ("f16", "f32")


class GGUFExportError(ConfigError):
    """A model or tokenizer that cannot be written as GGUF; printed as one line."""


def _known_splits() -> dict[str, str]:
    """Split regex -> llama.cpp pre-tokenizer name, for the regexes transformers' reader knows."""
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS
    except ImportError:  # an older transformers: only the plain GPT-2 and SmolLM kinds below
        return {}
    # Several names share a regex; the names llama.cpp's convert_hf_to_gguf.py writes come first.
    preferred = [name for name in ("llama-bpe", "qwen2", "tekken", "gpt-4o") if name in GGUF_PRE_TOKENIZER_SPLITS]
    names: dict[str, str] = {}
    for name in preferred + list(GGUF_PRE_TOKENIZER_SPLITS):
        names.setdefault(GGUF_PRE_TOKENIZER_SPLITS[name], name)
    return names


def _pre_tokenizer_name(pre: dict[str, Any] | None) -> str | None:
    """llama.cpp's `tokenizer.ggml.pre` for a byte-level tokenizer.json pre-tokenizer, or None."""
    if pre is None:
        return None
    steps = pre["pretokenizers"] if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        # GPT-2's regex already isolates digit runs; splitting them further only removes merges
        # across digits, which a vocabulary trained this way never learned: llama.cpp's `smollm`.
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        return _known_splits().get((steps[0].get("pattern") or {}).get("Regex"))
    return None


def _tokenizer_json(tokenizer) -> dict[str, Any] | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return json.loads(backend.to_str()) if backend is not None else None


def gguf_refusal(model, tokenizer) -> str | None:
    """Why `write_llama_gguf` cannot write this model and tokenizer (one line), or None."""
    config = model.config
    if config.model_type != "llama":
        return f"only Llama-architecture GGUF export is supported, model_type {config.model_type}"
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        return f"GGUF export supports Llama with plain rotary embeddings, not rope_type {rope.get('rope_type', rope.get('type'))}"
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        return "GGUF export supports Llama without attention or MLP biases"
    spec = _tokenizer_json(tokenizer)
    kind = (spec or {}).get("model", {}).get("type")
    if kind != "BPE" or "ByteLevel" not in json.dumps((spec or {}).get("pre_tokenizer")):
        return (f"GGUF export supports byte-level BPE tokenizers (GPT-2 style, as SmolLM2 and Llama 3 use), "
                f"not this {kind or type(tokenizer).__name__} tokenizer")
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        return f"the tokenizer has {len(tokenizer)} tokens, more than the model's {rows} embedding rows"
    if _pre_tokenizer_name(spec.get("pre_tokenizer")) is None:
        return f"GGUF export does not know llama.cpp's name for this pre-tokenizer: {json.dumps(spec.get('pre_tokenizer'))[:200]}"
    return None


def _permute(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    # llama.cpp convert_hf_to_gguf.py LlamaModel.permute: within each head, rows (half 0, half 1)
    # become interleaved pairs, because ggml's rope rotates neighbouring dimensions.
    return weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _add_tokenizer(writer, tokenizer, spec: dict[str, Any], vocab_size: int) -> None:
    import gguf

    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    tokens, types = [], []
    for index in range(vocab_size):
        if index not in by_id:  # embedding rows the tokenizer never produces (a padded vocabulary)
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif index in added:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.NORMAL)
    merges = [" ".join(merge) if isinstance(merge, list) else merge for merge in spec["model"].get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer_name(spec["pre_tokenizer"]))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for name, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                      ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
        token_id = getattr(tokenizer, f"{name}_token_id", None)
        if token_id is not None:
            add(int(token_id))
    # Whether encoding adds BOS/EOS, as the tokenizer does it (its post-processor), not as it claims.
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    writer.add_add_bos_token(tokenizer.bos_token_id is not None and len(ids) > len(bare) and ids[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(tokenizer.eos_token_id is not None and len(ids) > len(bare) and ids[-1] == tokenizer.eos_token_id)
    if isinstance(getattr(tokenizer, "chat_template", None), str):
        writer.add_chat_template(tokenizer.chat_template)


def write_llama_gguf(model, tokenizer, path: str | os.PathLike, ftype: str = "f16") -> Path:
    """Write `model` (a LlamaForCausalLM) and its byte-level BPE `tokenizer` to the GGUF file
    `path` (module docstring); `ftype` is `f16` or `f32`. Returns `path`."""
    import gguf

    if ftype not in FTYPES:
        raise GGUFExportError(f"GGUF type {ftype!r} is not supported; choose one of {', '.join(FTYPES)}")
    refusal = gguf_refusal(model, tokenizer)
    if refusal:
        raise GGUFExportError(refusal)
    config = model.config
    n_head = config.num_attention_heads
    n_head_kv = getattr(config, "num_key_value_heads", None) or n_head
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    rope = getattr(config, "rope_parameters", None) or {}
    rope_theta = rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    vocab_size = model.get_input_embeddings().weight.shape[0]
    tied = bool(getattr(config, "tie_word_embeddings", False))

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "llama")  # writes general.architecture
    # The folder's name only: transformers' reader takes a name containing "mistral" for Mistral.
    writer.add_name(Path(getattr(config, "_name_or_path", "") or "align-export").name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_rope_dimension_count(head_dim)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    if head_dim != config.hidden_size // n_head:  # llama.cpp derives it otherwise
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(float(rope_theta))
    writer.add_vocab_size(vocab_size)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if ftype == "f16" else gguf.LlamaFileType.ALL_F32)
    _add_tokenizer(writer, tokenizer, _tokenizer_json(tokenizer), vocab_size)

    # ---- tensors under llama.cpp's names
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reads a missing `output` as tied to token_embd
        stem, suffix = hf_name.rsplit(".", 1)
        gguf_name = names.get_name(stem)
        if gguf_name is None:
            raise GGUFExportError(f"no llama.cpp name for tensor {hf_name}")
        weight = tensor.detach().to(torch.float32).cpu()
        if stem.endswith("self_attn.q_proj"):
            weight = _permute(weight, n_head)
        elif stem.endswith("self_attn.k_proj"):
            weight = _permute(weight, n_head_kv)
        array = weight.numpy()
        if ftype == "f16" and array.ndim > 1:
            array = array.astype(np.float16)
        writer.add_tensor(f"{gguf_name}.{suffix}", np.ascontiguousarray(array))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
