"""Export a trained reward model as a plain `transformers` sequence-classification model, or a
trained policy as a plain causal LM (and a llama.cpp GGUF of it).

    align export-reward RUN_DIR OUT_DIR [--drop-bias]
    align export-policy RUN_DIR OUT_DIR [--gguf [--gguf-type f16|f32]]

Policies (`export_policy`): RUN_DIR is a sft, dpo, ppo or grpo run (`RUN/adapter/`, a peft adapter,
in LoRA mode; `RUN/model/` in full mode; the base named in `RUN/config.yaml`). OUT_DIR gets the base
with the adapter merged in (`merge_and_unload`), or the full-mode model, in the run's dtype, with the
tokenizer the run saved beside it: `AutoModelForCausalLM.from_pretrained(OUT_DIR)` gives the run's
policy logits (to float rounding of the merge). PPO's value adapter is not exported. `--gguf` adds
`OUT_DIR/model-f16.gguf` (or `-f32`), Llama architecture with a byte-level BPE tokenizer only
(`align.gguf_export`); a model it cannot hold is refused before OUT_DIR is written. Refused, in
one line: a missing RUN_DIR, a non-empty OUT_DIR, a reward run (use export-reward), a run with
neither adapter/ nor model/.

Reward models (`export_reward`):

RUN_DIR is a reward-model run (`align train recipes/rm_lora.yaml` writes `RUN/reward/`: a peft
adapter or, in full mode, a full model, plus `head.safetensors` and the tokenizer; the base model
is named in `RUN/config.yaml`) or its `reward/` folder. OUT_DIR gets a model that people who serve
reward models load with `AutoModelForSequenceClassification.from_pretrained(OUT_DIR)`, and the
tokenizer; its `logits[:, 0]` equal our reward role's scores (`SharedBase.scores`):
- the backbone is the base with the LoRA adapter merged in (or the full-mode reward model);
- the scalar head becomes the `score` layer (`num_labels=1`). transformers' `score` has no bias
  (LlamaForSequenceClassification, GPT2ForSequenceClassification, ...). Our head's bias gets no
  gradient from the Bradley-Terry loss (it cancels in r_chosen - r_rejected), so a trained reward
  head has b = 0 and nothing is lost. A non-zero b is folded into the bias of the final LayerNorm
  (GPT-2 and others: w . (h + b w / |w|^2) = w . h + b, exact); a final norm without a bias
  (Llama's RMSNorm) cannot hold it, and the export stops unless `--drop-bias` is given (scores
  are then ours minus b, recorded in `align_export.json`; pairwise preferences are unchanged);
- `pad_token_id` is set, so the model reads the last token that is not padding, as ours reads the
  last real one. transformers finds it by token id, so a pad id that a real row can end with
  would be skipped: our rows end with EOS, and when the tokenizer pads with EOS (GPT-2, Llama 3),
  a new `<|pad|>` token is added (one embedding row, never read) and the tokenizer pads with it.
  transformers numbers positions 0, 1, ... from the first column: pad on the right (the saved
  tokenizer does) or pass `position_ids` for left padding, and the scores match ours.

Refused, with one line saying why: the `last_token+logprob` readout (its score adds the
completion's log-probs under the reward model: more than one linear layer on a hidden state),
RUN_DIRs without a reward head, model types without a sequence-classification class.

Run its tests: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_export_reward.py tests/test_export_policy.py`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import yaml

from align.config import ConfigError
from align.gguf_export import GGUFExportError, gguf_refusal, write_llama_gguf
from align.models import DTYPES, load_model_and_tokenizer
from align.role_helpers import HEAD_FILE, read_head_state, readout_of_state
from reward_models.learned import resolve_reward_dir

EXPORT_FILE = "align_export.json"
PAD_TOKEN = "<|pad|>"
# Where transformers keeps the final norm of a decoder backbone (GPT-2, Llama/Qwen/Mistral, Phi, ...).
_FINAL_NORMS = ("ln_f", "norm", "final_layernorm", "final_layer_norm", "norm_f")


class ExportError(ConfigError):
    """A RUN_DIR that cannot be exported; the CLI prints it as one line (exit status 2)."""


def _reward_dir(run_dir: Path) -> Path:
    if not run_dir.exists():
        raise ExportError(f"{run_dir} does not exist")
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir} is not a directory")
    try:
        return resolve_reward_dir(run_dir)
    except FileNotFoundError as err:
        raise ExportError(str(err)) from None


def _run_settings(reward_dir: Path) -> dict[str, Any]:
    """mode, model and dtype of the run that trained `reward_dir`."""
    settings: dict[str, Any] = {"mode": None, "model": None, "dtype": "float32"}
    config_file = reward_dir.parent / "config.yaml"
    if config_file.is_file():
        recipe = yaml.safe_load(config_file.read_text()) or {}
        settings.update({k: recipe[k] for k in ("mode", "model", "dtype") if recipe.get(k) is not None})
    role_file = reward_dir / "align_role.json"
    if role_file.is_file():  # the mode the role was saved in wins over the recipe's
        settings["mode"] = json.loads(role_file.read_text()).get("mode") or settings["mode"]
    if settings["mode"] is None:
        settings["mode"] = "lora" if (reward_dir / "adapter_config.json").is_file() else "full"
    if settings["mode"] == "lora" and settings["model"] is None:
        raise ExportError(f"{config_file} not found: a LoRA reward model needs its run's config.yaml to name the base model")
    return settings


def _causal_lm(reward_dir: Path, settings: dict[str, Any]):
    """The reward role's causal LM (LoRA merged in) and the tokenizer it was trained with."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if settings["mode"] == "lora":
        from peft import PeftModel

        if not (reward_dir / "adapter_config.json").is_file():
            raise ExportError(f"{reward_dir} has no adapter_config.json (is it a full-mode save?)")
        base, tokenizer = load_model_and_tokenizer(settings["model"], settings["dtype"])
        model = PeftModel.from_pretrained(base, str(reward_dir)).merge_and_unload()
    else:
        if not any((reward_dir / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json")):
            raise ExportError(f"{reward_dir} has no model.safetensors (is it a LoRA-mode save without its adapter?)")
        model = AutoModelForCausalLM.from_pretrained(str(reward_dir), dtype=DTYPES[settings["dtype"]])
        tokenizer = None
    if (reward_dir / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(str(reward_dir))
    if tokenizer is None:
        raise ExportError(f"{reward_dir} has no tokenizer files")
    if tokenizer.pad_token_id is None:  # as align.models.load_tokenizer does for training
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer


def _final_norm(backbone: torch.nn.Module) -> torch.nn.Module | None:
    for name in _FINAL_NORMS:
        module = getattr(backbone, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    return None


def export_reward(run_dir: str | os.PathLike, out_dir: str | os.PathLike, drop_bias: bool = False) -> Path:
    """Write the reward model of `run_dir` to `out_dir` as a sequence-classification model and
    its tokenizer (module docstring). Returns `out_dir`."""
    from transformers import AutoModelForSequenceClassification

    reward_dir = _reward_dir(Path(run_dir))
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} exists and is not an empty directory; choose another OUT_DIR")
    head = read_head_state(reward_dir, torch.device("cpu"))
    readout = readout_of_state(head)
    if readout != "last_token":
        raise ExportError(
            f"{reward_dir}: reward.readout {readout} cannot be a sequence-classification model: its score adds the "
            f"completion's log-probs under the reward model to the head on the last hidden state (retrain with reward.readout=last_token)"
        )
    settings = _run_settings(reward_dir)
    causal, tokenizer = _causal_lm(reward_dir, settings)
    dtype = next(causal.parameters()).dtype

    # ---- a sequence-classification model around the same backbone weights
    config = causal.config
    config.num_labels = 1
    try:
        model = AutoModelForSequenceClassification.from_config(config, dtype=dtype)
    except ValueError as err:
        raise ExportError(f"model type {config.model_type!r} has no AutoModelForSequenceClassification class: {err}".split("\n")[0]) from None
    score = getattr(model, "score", None)
    if not isinstance(score, torch.nn.Linear) or score.out_features != 1:
        raise ExportError(f"{type(model).__name__} has no linear `score` layer to hold the reward head")
    model.base_model.load_state_dict(causal.base_model.state_dict())
    weight_H, bias = head["weight"].reshape(-1), float(head["bias"].reshape(()))
    info: dict[str, Any] = {"source": str(reward_dir.resolve()), "mode": settings["mode"], "base_model": settings["model"],
                            "readout": readout, "head_bias": bias, "bias": "zero", "score_shift": 0.0}
    with torch.no_grad():
        score.weight.copy_(weight_H.reshape(1, -1).to(dtype))
        norm = _final_norm(model.base_model)
        if score.bias is not None:
            score.bias.fill_(bias)
            info["bias"] = "score.bias"
        elif bias != 0.0 and norm is not None and getattr(norm, "bias", None) is not None:
            # w . (h + b w / |w|^2) = w . h + b: the final norm's bias feeds nothing but `score` here.
            norm.bias.add_((bias * weight_H / weight_H.square().sum()).to(norm.bias.dtype))
            info["bias"] = f"folded into {type(norm).__name__}.bias"
        elif bias != 0.0:
            if not drop_bias:
                raise ExportError(
                    f"{reward_dir}: the head's bias ({bias:g}) has no place in {type(model).__name__} (its score layer has no "
                    f"bias and its final {type(norm).__name__ if norm is not None else 'norm'} none to fold it into); "
                    f"pass --drop-bias to export scores shifted by {-bias:g} (pairwise preferences are unchanged)"
                )
            info.update(bias="dropped", score_shift=-bias)

    # ---- padding: the last non-pad token must be the last real one (rows end with EOS)
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
        old_rows = model.get_input_embeddings().weight.shape[0]
        if tokenizer.pad_token_id >= old_rows:
            model.resize_token_embeddings(tokenizer.pad_token_id + 1, mean_resizing=False)
            with torch.no_grad():
                embeddings = model.get_input_embeddings().weight
                embeddings[old_rows:] = embeddings[:old_rows].mean(0)  # never read: pads follow the last real token
        info["added_pad_token"] = PAD_TOKEN
    model.config.pad_token_id = tokenizer.pad_token_id
    tokenizer.padding_side = "right"  # transformers' positions count from column 0 (module docstring)

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    (out / EXPORT_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return out


# ---- policies ----------------------------------------------------------------------------------
# Methods whose run directory holds a policy (`align.trainers.common.save_policy`, SFT's own save).
POLICY_METHODS = ("sft", "dpo", "ppo", "grpo")


def _policy_run(run_dir: Path) -> tuple[dict[str, Any], Path, str]:
    """(recipe, saved policy folder, mode) of a policy run, or an ExportError saying why not."""
    if not run_dir.exists():
        raise ExportError(f"{run_dir} does not exist")
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir} is not a directory")
    config_file = run_dir / "config.yaml"
    recipe = (yaml.safe_load(config_file.read_text()) or {}) if config_file.is_file() else {}
    if recipe.get("method") == "reward" or (run_dir / "reward").is_dir():
        raise ExportError(f"{run_dir} is a reward-model run; export it with `align export-reward`")
    adapter, full = run_dir / "adapter", run_dir / "model"
    if (adapter / "adapter_config.json").is_file() and recipe.get("mode", "lora") == "lora":
        if recipe.get("model") is None:
            raise ExportError(f"{config_file} not found or names no model: a LoRA policy needs its run's base model")
        return recipe, adapter, "lora"
    if (full / "config.json").is_file():
        return recipe, full, "full"
    raise ExportError(f"{run_dir} has no adapter/ (LoRA) or model/ (full) policy: is it a finished "
                      f"{'/'.join(POLICY_METHODS)} run directory?")


def export_policy(run_dir: str | os.PathLike, out_dir: str | os.PathLike, gguf: bool = False,
                  gguf_type: str = "f16") -> Path:
    """Write the policy of a sft/dpo/ppo/grpo run to `out_dir` as a standalone causal LM and its
    tokenizer (the LoRA adapter merged into the base), plus `model-<gguf_type>.gguf` when `gguf`
    (Llama architecture only, `align.gguf_export`). Returns `out_dir`.

        align export-policy RUN_DIR OUT_DIR [--gguf [--gguf-type f16|f32]]
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = Path(run_dir)
    recipe, policy_dir, mode = _policy_run(run)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} exists and is not an empty directory; choose another OUT_DIR")
    dtype = recipe.get("dtype") or "float32"
    if mode == "lora":
        from peft import PeftModel

        base, tokenizer = load_model_and_tokenizer(recipe["model"], dtype)
        model = PeftModel.from_pretrained(base, str(policy_dir)).merge_and_unload()
    else:
        model, tokenizer = AutoModelForCausalLM.from_pretrained(str(policy_dir), dtype=DTYPES[dtype]), None
    if (policy_dir / "tokenizer_config.json").is_file():  # the tokenizer the run trained with (pad set)
        tokenizer = AutoTokenizer.from_pretrained(str(policy_dir))
    if tokenizer is None:
        raise ExportError(f"{policy_dir} has no tokenizer files")
    model.eval()
    # Refuse a GGUF that cannot be written before anything lands in OUT_DIR.
    refusal = gguf_refusal(model, tokenizer) if gguf else None
    if refusal:
        raise ExportError(refusal)

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    info: dict[str, Any] = {"source": str(run.resolve()), "kind": "policy", "method": recipe.get("method"),
                            "mode": mode, "base_model": recipe.get("model"), "dtype": dtype, "gguf": None}
    if gguf:
        name = f"model-{gguf_type}.gguf"
        try:
            write_llama_gguf(model, tokenizer, out / name, ftype=gguf_type)
        except GGUFExportError as err:
            raise ExportError(str(err)) from None
        info["gguf"] = {"file": name, "type": gguf_type}
    (out / EXPORT_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return out
