"""Reward-model training: a LoRA adapter and a scalar head (the `reward` role) with Bradley-Terry.

Run: `align train recipes/rm_lora.yaml` (or `recipes/rm_full.yaml`, the full fine-tuning baseline,
which runs this same code with `mode: full`; 2 processes: `accelerate launch --config_file
recipes/accelerate/cpu_2proc.yaml -m align.cli train recipes/rm_lora.yaml`).

The reward model is the `reward` role of a SharedBase (`add_reward()`: a fresh trainable adapter
and a scalar head on the final hidden state of the last real token; full mode: a trainable copy
of the base and a head). With `reward.readout: last_token+logprob` the head also reads the
completion's sum and mean token log-prob under the reward role (weights start at 0; see
`align.role_helpers.ScalarHead`), which the built-in recipes use because the 2-layer base's last
hidden state does not carry answer correctness. One step, for every micro-batch of preference pairs:
    scores    r(prompt + chosen), r(prompt + rejected): one forward over the 2B rows   (2B,)
    loss      Bradley-Terry, -log sigmoid(r_c - r_r [- margin]), a mean over the micro-batch,
              rescaled by micro / global pairs so that the sum over micro-batches and processes
              is the mean over the GLOBAL batch (batch 8 == 4 x 2 accumulation == 2 processes x 4;
              `common.accumulated_step`, shared with DPO)
Gradients of the adapter and head are averaged over processes by an explicit all-reduce
(`common.all_reduce_gradients`; the head lives outside the model, so no DDP wrapper).
The base model's own dropout is removed first (`align.dropout`, as TRL's reward trainer does;
`train.model_dropout: true` keeps it), so training scores are the function that is evaluated and
served; `lora.dropout` stays the recipe's.

Logged per step: loss, pairwise accuracy (r_c > r_r), mean margin r_c - r_r, mean chosen and
rejected scores. Held-out pairs (`data.eval_file`, or the built-in task's eval split) are scored
before training, every `train.eval_every` steps and at the end (`eval/pairs/accuracy`, ...).
The run directory gets `reward/` (`SharedBase.save_role`: a plain peft adapter, or a full model,
plus `head.safetensors` and the tokenizer), which `SharedBase.add_reward(path)` or
`reward_models.learned.load_learned_reward(run_dir, base)` loads as the frozen reward role, and
`summary.json` with held-out accuracy before/after and the memory report (bytes of base weights,
adapters, heads, gradients and optimizer state, and the measured peak; also in metrics.jsonl).

Per-pair margins (`reward.margin: true`) are read from a `margin` column of the data files. The
head can have its own learning rate (`reward.head_lr`; default: the run's), same schedule.

Left out: ensembles, reward centering/normalisation of the head output, multi-objective heads.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from align.config import RecipeConfig
from align.data.batching import BatchStream, collate_pairs
from align.data.loading import PairExample, SkipCounter, load_examples
from align.losses import bradley_terry_loss
from align.memory import count_parameters, memory_report
from align.modes import eval_mode
from align.shared_base import SharedBase
from align.trainers.common import (
    TrainResult, accumulated_step, checkpoint_saver, end_of_step, finish_run, load_shared_base, make_optimizer,
    make_scheduler, peak_memory_bytes, resume_step, shard_if_asked, start_loop, start_run,
)

ROLE = "reward"


def pair_scores(base: SharedBase, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Reward-role scores of a `collate_pairs` batch: (chosen_B, rejected_B)."""
    scores_2B = base.scores(ROLE, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    chosen_B, rejected_B = scores_2B.chunk(2)
    return chosen_B, rejected_B


def _margins(examples: list[PairExample], rows: list[int], use: bool, device) -> torch.Tensor | None:
    """The pairs' `margin` column (`reward.margin`; 0 where a row has none), or None when off."""
    return torch.tensor([examples[r].margin for r in rows], dtype=torch.float32, device=device) if use else None


@torch.no_grad()
def eval_pairs(base: SharedBase, examples: list[PairExample], use_margins: bool, pad_id: int,
               batch_size: int = 64) -> dict[str, float]:
    """Held-out Bradley-Terry loss, pairwise accuracy and mean margin, in eval mode (restored)."""
    if not examples:
        return {}
    totals: dict[str, float] = {}
    with eval_mode(base.role_model(ROLE), base.head(ROLE)):  # dropout off; each module's mode restored
        for i in range(0, len(examples), batch_size):
            rows = list(range(i, min(i + batch_size, len(examples))))
            batch = {k: v.to(base.device) for k, v in collate_pairs([examples[r] for r in rows], pad_id).items()}
            chosen_B, rejected_B = pair_scores(base, batch)
            loss, stats = bradley_terry_loss(chosen_B, rejected_B, _margins(examples, rows, use_margins, base.device))
            for k, v in {"loss": loss, **stats}.items():
                totals[k] = totals.get(k, 0.0) + float(v) * len(rows)
    return {f"pairs/{k}": v / len(examples) for k, v in totals.items()}


def _merge_memory(*reports: dict[str, int]) -> dict[str, int]:
    """Per category the largest of several `memory_report`s (gradients exist between backward
    and the optimizer step, optimizer state after the first step)."""
    merged = {k: max(r.get(k, 0) for r in reports) for k in reports[0] if k != "total"}
    merged["total"] = sum(merged.values())
    return merged


def train_reward(cfg: RecipeConfig) -> TrainResult:
    # ---- setup ----------------------------------------------------------------------------------
    run = start_run(cfg)
    acc = run.accelerator
    base = load_shared_base(cfg, run)
    base.add_reward(readout=cfg.reward.readout)  # fresh: trainable adapter + head (full: trainable copy + head)
    reward_model, head, tokenizer = base.role_model(ROLE), base.head(ROLE), base.tokenizer
    reward_model.train()
    head.train()
    pad_id = tokenizer.pad_token_id

    skipped = SkipCounter()
    margin = cfg.reward.margin  # read per pair from the data's `margin` column (one preference loader)
    train_examples = load_examples(cfg.data, tokenizer, "pairs", "train", cfg.train.seed, skipped, read_margin=margin)
    eval_examples = load_examples(cfg.data, tokenizer, "pairs", "eval", cfg.train.seed, skipped, read_margin=margin)
    stream = BatchStream(len(train_examples), cfg.train.batch_size, cfg.train.seed)

    params = base.trainable_parameters(ROLE)
    trainable = sum(p.numel() for p in params)
    total = count_parameters(reward_model)[1] + sum(p.numel() for p in head.parameters())
    named_model = [(n, p) for n, p in reward_model.named_parameters() if p.requires_grad]
    named_params = named_model + [(f"reward_head.{n}", p) for n, p in head.named_parameters()]
    assert {id(p) for _, p in named_params} == {id(p) for p in params}, "reward role parameters and names disagree"
    # One AdamW; the head gets its own param group when `reward.head_lr` is set (same schedule).
    head_ids = {id(p) for p in head.parameters()}
    groups = [{"params": [p for p in params if id(p) not in head_ids]},
              {"params": [p for p in params if id(p) in head_ids]}]
    if cfg.reward.head_lr is not None:
        groups[1]["lr"] = cfg.reward.head_lr
    shard_if_asked(run, base.model, base.all_adapter_parameters())
    optimizer = make_optimizer(groups, cfg, run.derived["learning_rate"])
    scheduler = make_scheduler(optimizer, cfg, cfg.train.steps)

    optimizers, schedulers = {ROLE: optimizer}, {ROLE: scheduler}
    start_step = resume_step(run, named_params, optimizers, schedulers)
    save = checkpoint_saver(run, named_params, optimizers, schedulers, save_adapter=lambda d: base.save_role(ROLE, d))

    def evaluate_rm() -> dict[str, float]:
        return eval_pairs(base, eval_examples, margin, pad_id)

    memory_after_backward: dict[str, int] | None = None

    # ---- loop -----------------------------------------------------------------------------------
    headline = (
        f"reward model {cfg.mode}: {trainable:,} trainable of {total:,} parameters; {len(train_examples)} train pairs, "
        f"{len(eval_examples)} eval pairs ({skipped.total} skipped); lr {run.derived['learning_rate']:.3g}"
    )
    eval_before, bar = start_loop(run, start_step, evaluate_rm, "reward", headline)
    for step in range(start_step, cfg.train.steps):
        t0 = time.time()

        def micro_loss(micro_rows: list[int]):
            batch = {k: v.to(acc.device) for k, v in collate_pairs([train_examples[r] for r in micro_rows], pad_id).items()}
            chosen_B, rejected_B = pair_scores(base, batch)
            loss, stats = bradley_terry_loss(chosen_B, rejected_B, _margins(train_examples, micro_rows, margin, acc.device))
            return loss, stats, len(micro_rows), batch["attention_mask"].sum()

        def record_memory() -> None:  # gradients are alive here, once
            nonlocal memory_after_backward
            if memory_after_backward is None:
                memory_after_backward = memory_report(base, optimizer)

        metrics, global_tokens, grad_norm = accumulated_step(run, stream.batch(step), micro_loss, params, optimizer, scheduler,
                                                             after_backward=record_memory)
        metrics.update({"lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                        "tokens_per_s": global_tokens / max(time.time() - t0, 1e-9), **skipped.as_dict()})
        end_of_step(run, step + 1, metrics, evaluate_rm, save, bar, {"loss": ".4f", "accuracy": ".2f"})
    bar.close()

    # ---- save -----------------------------------------------------------------------------------
    def save_outputs(run_dir) -> None:
        tokenizer.save_pretrained(base.save_role(ROLE, run_dir / "reward"))

    def final_summary(eval_after: dict[str, float]) -> dict[str, Any]:
        memory: dict[str, Any] = _merge_memory(*[r for r in (memory_after_backward, memory_report(base, optimizer)) if r])
        memory.update(peak_measured=peak_memory_bytes(),
                      peak_kind="cuda_max_allocated" if torch.cuda.is_available() else "cpu_process_max_rss")
        run.tracker.log({f"memory/{k}": v for k, v in memory.items()}, step=cfg.train.steps)
        return {
            "pairwise_accuracy_before": eval_before.get("pairs/accuracy"),
            "pairwise_accuracy_after": eval_after.get("pairs/accuracy"),
            "margin_loss": cfg.reward.margin, "skipped_rows": skipped.total, "skipped": skipped.as_dict(),
            "memory_bytes": memory, "reward_dir": str(run.run_dir / "reward"),
        }

    return finish_run(run, save, save_outputs, evaluate_rm, eval_before, trainable, total, final_summary, model=base)
