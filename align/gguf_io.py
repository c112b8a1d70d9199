"""GGUF files in: a local `.gguf` model, loaded dequantized in the recipe's dtype, or converted once
into a plain transformers folder (safetensors, tokenizer, chat template).

What it does:
- `is_gguf_path(name)`: whether a recipe's `model:` names a GGUF file (by its `.gguf` suffix);
- `load_gguf(path, dtype)` -> (model, tokenizer): transformers' own GGUF reader (any architecture
  it knows: Llama, Qwen2, Mistral, Phi-3, GPT-2, ...), dequantized to `dtype`. transformers marks a
  model read that way as "quantized with gguf" and refuses to `save_pretrained` it, which would
  break full-mode checkpoints and exports, so the weights are moved into a fresh model of the
  same config: an ordinary model, saved and trained like any other;
- `gguf_config(path)`: the model's config from the file's metadata alone (preflight builds the
  model on the meta device from it);
- `convert_gguf(path, out_dir, dtype)`: `load_gguf`, then `save_pretrained` of model and
  tokenizer (the chat template included) into `out_dir`; returns what was converted.

The `gguf` package (pure Python, a dependency) does the reading; where it is missing the load
stops with one line naming it. What it leaves out: writing GGUF (`align.gguf_export`), obtaining
a GGUF file (`align.fetched_bases`).

Run its tests: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_gguf_models.py`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from align.config import ConfigError

def is_gguf_path(name: str) -> bool:
    return name.lower().endswith(".gguf")


def require_gguf() -> None:
    """One ConfigError line when the `gguf` package (transformers' GGUF reader needs it) is missing."""
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError("reading a .gguf model needs the `gguf` package: pip install gguf")


def _split(path: str | Path) -> tuple[str, str]:
    path = Path(path).resolve()
    return str(path.parent), path.name


def gguf_config(path: str | Path) -> Any:
    """The transformers config stored in the GGUF file's metadata (no tensor is read)."""
    from transformers import AutoConfig

    require_gguf()
    folder, name = _split(path)
    return AutoConfig.from_pretrained(folder, gguf_file=name)


def load_gguf_tokenizer(path: str | Path) -> Any:
    from transformers import AutoTokenizer

    require_gguf()
    folder, name = _split(path)
    return AutoTokenizer.from_pretrained(folder, gguf_file=name)


def load_gguf(path: str | Path, dtype: str = "float32") -> tuple[Any, Any]:
    """(model, tokenizer) of a GGUF file, dequantized to `dtype` ("float32", "bfloat16", "float16").

    A file transformers cannot read (not GGUF, an architecture its reader does not know, a
    truncated download) is one ConfigError line naming the file and the reason."""
    import torch
    from transformers import AutoModelForCausalLM

    require_gguf()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the reader's per-tensor bar would drown the run's own output
    folder, name = _split(path)
    torch_dtype = getattr(torch, dtype)
    try:
        tokenizer = load_gguf_tokenizer(path)
        read = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch_dtype)
    except Exception as err:  # noqa: BLE001 - the reader raises many kinds (struct.error on a cut file): one line
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise ConfigError(f"model: {path} could not be read as a GGUF model ({type(err).__name__}: {reason})") from None
    config = read.config
    if hasattr(config, "quantization_config"):  # the "quantized with gguf" flag: the weights are plain floats now
        delattr(config, "quantization_config")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    # assign=True takes the dequantized tensors themselves: no second copy of the weights.
    model.load_state_dict(read.state_dict(), strict=True, assign=True)
    read_buffers = dict(read.named_buffers())
    for buffer_name, buffer in list(model.named_buffers()):  # non-persistent ones (rotary inv_freq) are not in a state dict
        if buffer.is_meta:
            owner, _, leaf = buffer_name.rpartition(".")
            model.get_submodule(owner).register_buffer(leaf, read_buffers[buffer_name], persistent=False)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    model.generation_config = read.generation_config
    del read
    model.eval()
    return model, tokenizer


def convert_gguf(path: str | Path, out_dir: str | Path, dtype: str = "float32") -> dict[str, Any]:
    """Write the GGUF model at `path` as a transformers folder (model.safetensors, config, tokenizer
    with its chat template) in `out_dir`; returns {architecture, parameters, dtype}."""
    model, tokenizer = load_gguf(path, dtype)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return {
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": dtype,
    }
