"""Oracle: our per-sequence log-probs and DPO losses equal TRL 1.16 `DPOTrainer`'s on one batch.

A real `trl.DPOTrainer` (DPOConfig, a tiny dataset, CPU, report_to=[]) is built around the same
tiny model and tokenizer, and its own code paths are called on the identical padded batch:
- `DPOTrainer.compute_loss(model, inputs)` (-> `_compute_loss`: the fused-LM-head policy forward,
  the reference forward, the loss) for the loss, and its logged `rewards/*`, `logps/*` metrics;
- `DPOTrainer.compute_ref_log_probs(model, inputs)` (the per-sequence log-probs TRL also uses for
  `precompute_ref_log_probs`) for per-sequence log-probs of any model.
Ours: `align.trainers.dpo.pair_logps` (the one log-prob path, `SharedBase.logprobs`) and
`dpo_loss_on_batch` on a SharedBase.

Two setups: full models (policy = perturbed copy, reference = `ref_model`), and LoRA (TRL's own
peft adapter, whose weights we copy into our SharedBase policy adapter; the reference is the base
with adapters disabled, in both). Runs in a few seconds.
"""

from __future__ import annotations

import copy

import pytest
import torch

from align.compat import checkpointing_args
from align.config import DPOSettings, RecipeConfig
from align.data.batching import collate_pairs
from align.data.loading import SkipCounter, pair_examples, rows_from_task
from align.losses import get_preference_loss
from align.models import load_model_and_tokenizer
from align.shared_base import SharedBase
from align.trainers.dpo import dpo_loss_on_batch, pair_logps

ROWS = [
    {"prompt": "Q: 12+7=? A:", "chosen": " 19", "rejected": " 18"},
    {"prompt": "Q: 85-22=? A:", "chosen": " 63", "rejected": " 6 i think"},
    {"prompt": "Q: 3+4=? A:", "chosen": " 7", "rejected": " um so it is 17"},
    {"prompt": "Q: 50-1=? A:", "chosen": " the answer is 49", "rejected": " 48"},
]
BETA = 0.1


def _perturb(model: torch.nn.Module, seed: int, scale: float = 0.05) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def _trainer(tmp_path, model, tokenizer, loss_type="sigmoid", **kw):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(
        output_dir=str(tmp_path / "trl"), report_to=[], use_cpu=True, beta=BETA, loss_type=loss_type,
        per_device_train_batch_size=len(ROWS), max_length=None, **checkpointing_args(False),
        dataset_num_proc=None, logging_steps=1, save_strategy="no",
        bf16=False,  # TRL defaults to bf16 autocast (even on CPU); compare in float32
    )
    return DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(ROWS), processing_class=tokenizer, **kw)


def _our_examples(tokenizer):
    return pair_examples(rows_from_task(ROWS, "oracle"), tokenizer, 64, "error", SkipCounter())


def _batches(trainer, tokenizer):
    """Our batch, TRL's batch from its own tokenisation of the dataset; they must be identical."""
    ours = collate_pairs(_our_examples(tokenizer), tokenizer.pad_token_id)
    trl_rows = [{k: trainer.train_dataset[i][k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for i in range(len(ROWS))]
    theirs = trainer.data_collator(trl_rows)
    for key in ("input_ids", "attention_mask", "completion_mask"):
        assert torch.equal(ours[key], theirs[key]), f"tokenisation differs from TRL's in {key}"
    return ours, theirs


def _cfg(loss_type="sigmoid"):
    return RecipeConfig(method="dpo", dpo=DPOSettings(loss_type=loss_type, beta=BETA))


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_full_models_logps_and_loss_equal_trl(tmp_path, loss_type):
    ref_model, tokenizer = load_model_and_tokenizer("scratch:test")
    policy = copy.deepcopy(ref_model)
    _perturb(policy, seed=1)
    trl_policy, trl_ref = copy.deepcopy(policy), copy.deepcopy(ref_model)
    trainer = _trainer(tmp_path, trl_policy, tokenizer, loss_type=loss_type, ref_model=trl_ref)
    ours, theirs = _batches(trainer, tokenizer)

    # per-sequence log-probs, policy and reference, through TRL's own fused-head forward
    trl_policy.eval(), trl_ref.eval()
    trl_pc, trl_pr = trainer.compute_ref_log_probs(trl_policy, theirs)
    trl_rc, trl_rr = trainer.compute_ref_log_probs(trl_ref, theirs)
    base = SharedBase(ref_model, tokenizer, mode="full")
    base.add_policy()
    base.add_reference()
    base.role_model("policy").load_state_dict(policy.state_dict())
    base.role_model("policy").eval()
    with torch.no_grad():
        our_p, lengths = pair_logps(base, "policy", ours)
        our_r, _ = pair_logps(base, "reference", ours)
    torch.testing.assert_close(our_p, torch.cat([trl_pc, trl_pr]), atol=1e-5, rtol=0)
    torch.testing.assert_close(our_r, torch.cat([trl_rc, trl_rr]), atol=1e-5, rtol=0)
    assert lengths.tolist() == theirs["completion_mask"].sum(-1).tolist()

    # the loss through TRL's compute_loss (models in eval mode: TRL logs its metrics under "eval"), and ours
    trl_loss = trainer.compute_loss(trainer.model, theirs)
    our_loss, stats, _ = dpo_loss_on_batch(base, ours, get_preference_loss(loss_type), _cfg(loss_type))
    assert float(our_loss.detach()) == pytest.approx(float(trl_loss.detach()), abs=1e-5)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected"):
        assert float(stats[key]) == pytest.approx(trainer._metrics["eval"][key][-1], abs=1e-5), key
    assert float(our_loss.detach()) != pytest.approx(0.6931, abs=1e-3)  # not the trivial policy == reference case


def test_lora_policy_and_base_reference_equal_trl_peft(tmp_path):
    from peft import get_peft_model_state_dict

    base_model, tokenizer = load_model_and_tokenizer("scratch:test")
    base = SharedBase(copy.deepcopy(base_model), tokenizer, mode="lora", lora={"rank": 4, "alpha": 32.0})
    base.add_policy()
    base.add_reference()
    peft_config = copy.deepcopy(base._lora_config)
    trainer = _trainer(tmp_path, copy.deepcopy(base_model), tokenizer, peft_config=peft_config)
    # A trained-looking adapter: random B (B = 0 would make policy == reference), copied into ours.
    _perturb_lora_b = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=_perturb_lora_b) * 0.3)
    state = get_peft_model_state_dict(trainer.model)
    ours_by_name = {n.replace(".policy.", ".default."): p for n, p in base.peft_model.named_parameters() if ".policy." in n}
    with torch.no_grad():
        for name, tensor in state.items():
            key = name.replace(".weight", ".default.weight")
            ours_by_name[key].copy_(tensor)
    ours, theirs = _batches(trainer, tokenizer)
    trainer.model.eval(), base.model.eval()

    unwrapped = trainer.model
    trl_rc, trl_rr = trainer.compute_ref_log_probs(unwrapped, theirs)  # adapters disabled: the reference
    with torch.no_grad():
        our_p, _ = pair_logps(base, "policy", ours)
        our_r, _ = pair_logps(base, "reference", ours)
    torch.testing.assert_close(our_r, torch.cat([trl_rc, trl_rr]), atol=1e-5, rtol=0)
    trl_loss = trainer.compute_loss(trainer.model, theirs)
    our_loss, stats, _ = dpo_loss_on_batch(base, ours, get_preference_loss("sigmoid"), _cfg())
    assert float(our_loss.detach()) == pytest.approx(float(trl_loss.detach()), abs=1e-5)
    assert float(stats["logps/chosen"]) == pytest.approx(trainer._metrics["eval"]["logps/chosen"][-1], abs=1e-5)
    assert float(our_p.chunk(2)[0].mean()) == pytest.approx(trainer._metrics["eval"]["logps/chosen"][-1], abs=1e-5)
    assert float(our_loss.detach()) != pytest.approx(0.6931, abs=1e-3)
