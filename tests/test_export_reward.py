"""`align export-reward`: a reward run as a plain `AutoModelForSequenceClassification` whose scores
equal our reward role's (`SharedBase.scores`) on padded batches, for Llama-style and GPT-2 bases,
LoRA and full mode; the head's bias folded or refused; the readout that cannot be exported, and
bad RUN_DIRs, refused in one line with exit status 2.

Run: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_export_reward.py` (about 15 s).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from align.cli import main
from align.config import load_recipe
from align.data.loading import encode_completion, encode_prompt
from align.export import ExportError, export_reward
from align.logprobs import position_ids_from_mask
from align.models import load_model_and_tokenizer
from align.shared_base import SharedBase
from align.trainers.reward import train_reward
from tests.test_model_dropout import save_tiny_gpt2

FAST = ["method=reward", "data.task=preference", "data.num_train=32", "data.num_eval=8", "train.batch_size=8",
        "train.steps=2", "optimizer.lr=0.01", "eval.enabled=false", "tracking.wandb=false", "lora.rank=4",
        "reward.readout=last_token"]
ROWS = [("Q: 12+7=? A:", " 19"), ("Q: 85-22=? A:", " 6 i think"), ("Q: 3+4=? A:", " um so it is 17"), ("Q: 5-1=? A:", " 4")]


def _train(tmp_path, name, *overrides) -> str:
    return train_reward(load_recipe(None, FAST + [f"output_dir={tmp_path / name}", *overrides])).run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Reward runs: Llama-style scratch base (LoRA), tiny GPT-2 whose tokenizer pads with EOS (LoRA, full)."""
    tmp = tmp_path_factory.mktemp("runs")
    gpt2 = save_tiny_gpt2(tmp / "gpt2", pad_is_eos=True)
    return {
        "llama-lora": _train(tmp, "llama-lora", "model=scratch:test"),
        "gpt2-lora": _train(tmp, "gpt2-lora", f"model={gpt2}"),
        "gpt2-full": _train(tmp, "gpt2-full", f"model={gpt2}", "mode=full"),
    }


def _ours(run_dir: str, head_bias: float | None = None) -> torch.Tensor:
    """Our reward role's scores of ROWS, right-padded with the training tokenizer's pad id."""
    cfg = load_recipe(Path(run_dir) / "config.yaml")
    model, tokenizer = load_model_and_tokenizer(cfg.model)
    base = SharedBase(model, tokenizer, mode=cfg.mode, lora=cfg.lora)
    base.add_reward(Path(run_dir) / "reward")
    if head_bias is not None:
        with torch.no_grad():
            base.head("reward").bias.fill_(head_bias)
    seqs = [encode_prompt(tokenizer, p) + encode_completion(tokenizer, c) for p, c in ROWS]
    width = max(map(len, seqs))
    ids = torch.tensor([s + [tokenizer.pad_token_id] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    return base.scores("reward", ids, mask)


def _theirs(out_dir, padding_side: str = "right") -> torch.Tensor:
    """Scores of the exported model on ROWS, tokenised and padded by the exported tokenizer."""
    model = AutoModelForSequenceClassification.from_pretrained(str(out_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(out_dir))
    assert model.config.num_labels == 1 and model.config.pad_token_id == tokenizer.pad_token_id
    tokenizer.padding_side = padding_side
    seqs = [encode_prompt(tokenizer, p) + encode_completion(tokenizer, c) for p, c in ROWS]
    batch = tokenizer.pad({"input_ids": seqs}, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()  # a padded batch
    kwargs = {}
    if padding_side == "left":  # transformers counts positions from column 0 (align.export docstring)
        kwargs["position_ids"] = position_ids_from_mask(batch["attention_mask"])
    with torch.no_grad():
        return model(**batch, **kwargs).logits[:, 0]


@pytest.mark.parametrize("name", ["llama-lora", "gpt2-lora", "gpt2-full"])
def test_exported_scores_equal_the_reward_role(runs, tmp_path, name):
    run_dir = runs[name]
    # The Bradley-Terry loss never moves the head's bias (it cancels in r_c - r_r): still 0.
    assert float(load_file(str(Path(run_dir) / "reward" / "head.safetensors"))["bias"]) == 0.0
    assert main(["export-reward", run_dir, str(tmp_path / "out")]) == 0
    ours = _ours(run_dir)
    torch.testing.assert_close(_theirs(tmp_path / "out"), ours, rtol=0, atol=1e-5)
    torch.testing.assert_close(_theirs(tmp_path / "out", "left"), ours, rtol=0, atol=1e-5)
    info = json.loads((tmp_path / "out" / "align_export.json").read_text())
    assert info["bias"] == "zero" and info["readout"] == "last_token"
    # GPT-2 pads with EOS and our rows end with EOS: a pad token of its own keeps the EOS the last read.
    assert ("added_pad_token" in info) == name.startswith("gpt2")


def _with_head_bias(run_dir: str, tmp_path: Path, bias: float) -> str:
    copy = tmp_path / "biased"
    shutil.copytree(run_dir, copy)
    head_file = copy / "reward" / "head.safetensors"
    head = load_file(str(head_file))
    head["bias"] = torch.full_like(head["bias"], bias)
    save_file(head, str(head_file), metadata={"format": "pt"})
    return str(copy)


def test_a_head_bias_is_folded_into_gpt2s_final_layernorm(runs, tmp_path):
    run_dir = _with_head_bias(runs["gpt2-lora"], tmp_path, 0.75)
    export_reward(run_dir, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "align_export.json").read_text())["bias"] == "folded into LayerNorm.bias"
    torch.testing.assert_close(_theirs(tmp_path / "out"), _ours(run_dir, head_bias=0.75), rtol=0, atol=1e-5)


def test_a_head_bias_llama_cannot_hold_is_refused_or_dropped_on_request(runs, tmp_path, capsys):
    run_dir = _with_head_bias(runs["llama-lora"], tmp_path, 0.75)
    assert main(["export-reward", run_dir, str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--drop-bias" in err and "LlamaForSequenceClassification" in err
    export_reward(run_dir, tmp_path / "dropped", drop_bias=True)
    assert json.loads((tmp_path / "dropped" / "align_export.json").read_text())["score_shift"] == -0.75
    torch.testing.assert_close(_theirs(tmp_path / "dropped"), _ours(run_dir, head_bias=0.75) - 0.75, rtol=0, atol=1e-5)


def test_logprob_readout_and_bad_run_dirs_are_one_line_errors(tmp_path, capsys):
    logprob = _train(tmp_path, "logprob", "model=scratch:test", "train.steps=1", "reward.readout=last_token+logprob")
    cases = {
        logprob: "last_token+logprob",
        str(tmp_path / "missing"): "does not exist",
        str(tmp_path): "neither a reward-model run directory",
    }
    for run_dir, expected in cases.items():
        assert main(["export-reward", run_dir, str(tmp_path / "out")]) == 2, run_dir
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and expected in err, err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ExportError, match="not an empty directory"):
        export_reward(logprob, tmp_path)
