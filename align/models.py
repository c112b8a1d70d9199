"""Model and tokenizer loading: built-in bases, Hugging Face ids and local paths, one code path.
Loading never trains: building a base is an explicit step (`align build-base`, or `align train`
before its run; `align.build_base.ensure_builtin_base`), and nothing here imports it.

`scratch:<size>` (`tiny-arith` or `test`) is a deterministic random init of that size with the
built-in tokenizer: what the base is pretrained from, and a fast model for tests.
`builtin:tiny-arith` names the toolkit's own tiny Llama-style base. Its weights ship inside the
package (`align/tasks/bases/tiny-arith/`, 2.3 MB, sha256 in its BUILD_INFO.json), so every
machine starts from exactly the base the figures of docs/results.md were measured on: rebuilding it from
its recipe is not bit-reproducible across CPUs (see `align.build_base`). Where the bases live and
whether one is loadable is `align.builtin_bases`. When the shipped files
are missing, or were built by another recipe than the current one, it loads the build from the
current recipe under `$ALIGN_HOME/bases/` (default `~/.cache/align/bases/`) if there is one, and
otherwise stops with one error line saying to run `align build-base` (`align train` runs that
build itself before it starts). The first load on a machine also evaluates the base once (no
training) and warns when it is outside its expected quality band
(`align.base_quality.check_base_quality`).
`builtin:smollm2-135m-instruct` is a real pretrained chat model, fetched once into `$ALIGN_HOME`
(`align.fetched_bases`; loading never fetches). A local `.gguf` file is read dequantized in the
recipe's dtype (`align.gguf_io`).
Anything else is handed to `transformers.AutoModelForCausalLM.from_pretrained`: a hub id (needs a
network) or a local folder.
"""

from __future__ import annotations

import torch

from align.base_quality import check_base_quality
from align.builtin_bases import loadable_base_path, scratch_model_dir
from align.fetched_bases import FETCHED_BASES, fetched_base_path
from align.gguf_io import is_gguf_path, load_gguf, load_gguf_tokenizer
from align.tasks import BUILTIN_BASES

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model_path(name: str) -> str:
    """A loadable path for `name`: the shipped built-in base, else a current build in the cache
    (never a new one: a ConfigError says to run `align build-base`)."""
    if name in FETCHED_BASES:
        return fetched_base_path(name)  # never fetches: `align fetch-base` / `align train` do
    if name.startswith("builtin:"):
        if name not in BUILTIN_BASES:
            raise ValueError(f"unknown built-in base {name!r}; known: {sorted(BUILTIN_BASES)}")
        path = loadable_base_path(name)
        check_base_quality(name, path)  # evaluates once per machine; trains nothing
        return path
    if name.startswith("scratch:"):
        # A random init of a built-in size with the built-in tokenizer (base building, tests).
        return scratch_model_dir(name.split(":", 1)[1])
    return name


def _quiet_transformers() -> None:
    # Loading bars and deprecation chatter from transformers/peft would drown our own output.
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    path = resolve_model_path(name)
    tokenizer = load_gguf_tokenizer(path) if is_gguf_path(path) else AutoTokenizer.from_pretrained(path)
    return _pad_with_eos(tokenizer)


def _pad_with_eos(tokenizer):
    if tokenizer.pad_token_id is None:
        # Many causal LMs ship without a pad token; padding positions are always masked out.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model_and_tokenizer(name: str, dtype: str = "float32"):
    """Load a causal LM and its tokenizer from a built-in name, hub id or local path."""
    from transformers import AutoModelForCausalLM

    _quiet_transformers()
    path = resolve_model_path(name)
    if is_gguf_path(path):  # dequantized in `dtype` into an ordinary model (align.gguf_io)
        model, tokenizer = load_gguf(path, dtype)  # load_gguf reads the tokenizer too: not read a second time
        tokenizer = _pad_with_eos(tokenizer)
    else:
        tokenizer = load_tokenizer(path)  # the resolved folder: a built-in base is checked once, not twice
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype])
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
