"""Direct Preference Optimization (and IPO, hinge/SLiC, SimPO) on a SharedBase, LoRA or full.

Run: `align train recipes/dpo_lora.yaml` (or `recipes/dpo_full.yaml`; 2 processes:
`accelerate launch --config_file recipes/accelerate/cpu_2proc.yaml -m align.cli train recipes/dpo_lora.yaml`).

Roles (see `align.shared_base`): the policy is a trainable LoRA adapter on the ONE frozen base; the
reference is that base with adapters off, or a frozen copy of `dpo.init_adapter` when the policy
starts from a saved adapter. `mode: full` gives the policy its own full copy and runs this same code.

One step, for every micro-batch of pairs (chosen rows then rejected rows, one forward each role):
    policy logps   sum of log pi(token) over completion tokens, with gradients        (2B,)
    ref logps      the same under the reference role, no gradients; or read from a table
                   computed once before training (`dpo.precompute_reference`)            (2B,)
    loss           PREFERENCE_LOSSES[dpo.loss_type], a mean over the micro-batch, rescaled by
                   micro / global batch so that the sum over micro-batches and processes is the
                   mean over the GLOBAL batch: batch 8 == 4 x 2 accumulation == 2 processes x 4
                   (`common.accumulated_step`, shared with the reward trainer).
Gradients of the policy parameters are averaged over processes by an explicit all-reduce
(`common.all_reduce_gradients`; no DDP wrapper: role switching inside a DDP forward is not what
DDP is built for).
The policy trains in train mode and the reference runs in eval mode, so the base model's own
dropout is removed first (`align.dropout`, as TRL's `disable_dropout`; `train.model_dropout: true`
keeps it): with it, policy != reference at step 0 and the first loss is not ln 2. `lora.dropout`
stays the recipe's.

Log-probs come from the toolkit's one log-prob path (`SharedBase.logprobs`, `align.logprobs`): only
positions that predict a completion token go through the LM head; models whose head scales or
soft-caps logits take the model's full forward.

Left out: reference-model syncing (TR-DPO), multiple epochs over a precomputed table stored on
disk, packing, and losses that need per-token log-probs (TRL's nca_pair, ld_alpha).
"""

from __future__ import annotations

import time

import torch

from align.config import RecipeConfig
from align.data.batching import BatchStream, collate_pairs, shard
from align.data.loading import SkipCounter, load_examples
from align.logprobs import sequence_logprob_sums
from align.losses import REFERENCE_FREE_LOSSES, get_preference_loss
from align.memory import count_parameters, memory_by_role, memory_report
from align.modes import eval_mode
from align.shared_base import SharedBase
from align.trainers.common import (
    TrainResult, accumulated_step, add_policy_and_reference, checkpoint_saver, end_of_step, evaluate, finish_run,
    load_shared_base, make_optimizer, make_scheduler, resume_step, save_policy, shard_if_asked, start_loop, start_run,
)

def pair_logps(base: SharedBase, role: str, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs (2B,) under `role` and completion lengths (2B,) of a
    `collate_pairs` batch, from the one log-prob path (`SharedBase.logprobs`)."""
    input_ids_BT, attention_mask_BT = batch["input_ids"], batch["attention_mask"]
    completion_mask_BT = batch["completion_mask"] * attention_mask_BT
    token_logps_BT = base.logprobs(role, input_ids_BT, attention_mask_BT, completion_mask_BT).logps_BT
    return sequence_logprob_sums(token_logps_BT, completion_mask_BT), completion_mask_BT[:, 1:].sum(-1)


def _to(batch: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def reference_table(base: SharedBase, examples, rows: list[int], pad_id: int, batch_size: int) -> dict[int, tuple[float, float]]:
    """{row: (ref chosen logp, ref rejected logp)} for `rows`, computed once under the reference role."""
    table: dict[int, tuple[float, float]] = {}
    for i in range(0, len(rows), batch_size):
        part = rows[i : i + batch_size]
        logps_2B, _ = pair_logps(base, "reference", _to(collate_pairs([examples[r] for r in part], pad_id), base.device))
        chosen_B, rejected_B = logps_2B.double().chunk(2)
        table.update({r: (c, rj) for r, c, rj in zip(part, chosen_B.tolist(), rejected_B.tolist())})
    return table


def dpo_loss_on_batch(base: SharedBase, batch, loss_fn, cfg: RecipeConfig, ref_logps_2B: torch.Tensor | None = None):
    """Policy forward (with grad), reference forward (no grad) unless given or the loss is
    reference-free (SimPO: no reference forward at all), then the loss.

    Returns (mean loss over the micro-batch, stats dict, number of pairs)."""
    logps_2B, lengths_2B = pair_logps(base, "policy", batch)
    if ref_logps_2B is None and cfg.dpo.loss_type not in REFERENCE_FREE_LOSSES:
        ref_logps_2B, _ = pair_logps(base, "reference", batch)  # a frozen role: no_grad
    chosen_B, rejected_B = logps_2B.chunk(2)
    ref_chosen_B = ref_rejected_B = None
    if ref_logps_2B is not None:
        ref_chosen_B, ref_rejected_B = ref_logps_2B.to(logps_2B.dtype).chunk(2)
    chosen_len_B, rejected_len_B = lengths_2B.to(logps_2B.dtype).chunk(2)
    loss, stats = loss_fn(
        chosen_B, rejected_B, ref_chosen_B, ref_rejected_B, beta=cfg.dpo.beta,
        label_smoothing=cfg.dpo.label_smoothing, chosen_lengths_B=chosen_len_B, rejected_lengths_B=rejected_len_B,
        simpo_gamma=cfg.dpo.simpo_gamma,
    )
    if ref_chosen_B is not None:
        stats = {**stats, "ref_logps/chosen": ref_chosen_B.mean().detach(), "ref_logps/rejected": ref_rejected_B.mean().detach()}
    return loss, stats, chosen_B.shape[0]


@torch.no_grad()
def eval_pairs(base: SharedBase, examples, ref_table, loss_fn, cfg: RecipeConfig, pad_id: int, batch_size: int = 64) -> dict[str, float]:
    """Held-out preference metrics: loss and implicit-reward accuracy of the policy on eval pairs."""
    totals: dict[str, float] = {}
    for i in range(0, len(examples), batch_size):
        part = list(range(i, min(i + batch_size, len(examples))))
        batch = _to(collate_pairs([examples[r] for r in part], pad_id), base.device)
        ref_2B = None  # a reference-free loss has no table
        if ref_table:
            ref_2B = torch.tensor([ref_table[r][0] for r in part] + [ref_table[r][1] for r in part], device=base.device)
        with eval_mode(base.role_model("policy")):  # dropout off; each module's mode restored
            loss, stats, n = dpo_loss_on_batch(base, batch, loss_fn, cfg, ref_2B)
        for k, v in {"loss": loss, **stats}.items():
            totals[k] = totals.get(k, 0.0) + float(v) * n
    return {f"pairs/{k}": v / max(len(examples), 1) for k, v in totals.items()}


def train_dpo(cfg: RecipeConfig) -> TrainResult:
    # ---- setup ----------------------------------------------------------------------------------
    run = start_run(cfg)
    acc = run.accelerator
    base = load_shared_base(cfg, run)
    add_policy_and_reference(base, "dpo.init_adapter", cfg.dpo.init_adapter)
    policy_model, tokenizer = base.role_model("policy"), base.tokenizer
    policy_model.train()
    trainable, total = count_parameters(policy_model)
    loss_fn = get_preference_loss(cfg.dpo.loss_type)
    pad_id = tokenizer.pad_token_id

    skipped = SkipCounter()
    train_examples = load_examples(cfg.data, tokenizer, "pairs", "train", cfg.train.seed, skipped)
    eval_examples = load_examples(cfg.data, tokenizer, "pairs", "eval", cfg.train.seed, skipped)
    stream = BatchStream(len(train_examples), cfg.train.batch_size, cfg.train.seed)

    params = base.trainable_parameters("policy")
    trainable_ids = {id(p) for p in params}
    named_params = [(n, p) for n, p in policy_model.named_parameters() if id(p) in trainable_ids]
    shard_if_asked(run, base.model, base.all_adapter_parameters())
    optimizer = make_optimizer(params, cfg, run.derived["learning_rate"])
    scheduler = make_scheduler(optimizer, cfg, cfg.train.steps)

    optimizers, schedulers = {"policy": optimizer}, {"policy": scheduler}
    start_step = resume_step(run, named_params, optimizers, schedulers)
    save = checkpoint_saver(run, named_params, optimizers, schedulers, save_adapter=lambda d: base.save_role("policy", d))

    micro_batches_per_step = cfg.train.grad_accum
    micro_size = cfg.train.batch_size // (micro_batches_per_step * run.world)
    # Reference log-probs: once, before training, for exactly the rows this process will train on
    # (the reference never changes, so this equals computing them on the fly), and for eval pairs.
    train_ref = None
    uses_reference = cfg.dpo.loss_type not in REFERENCE_FREE_LOSSES
    if cfg.dpo.precompute_reference and uses_reference:
        my_rows = sorted({r for s in range(start_step, cfg.train.steps) for r in shard(stream.batch(s), run.rank, run.world)})
        t0 = time.time()
        train_ref = reference_table(base, train_examples, my_rows, pad_id, max(micro_size, 1))
        run.print(f"precomputed reference log-probs of {len(my_rows)} pairs in {time.time() - t0:.1f}s")
    if not cfg.eval.enabled:
        eval_examples = []
    eval_ref = {}
    if eval_examples and uses_reference:
        eval_ref = reference_table(base, eval_examples, list(range(len(eval_examples))), pad_id, 64)

    def evaluate_policy() -> dict[str, float]:
        """Held-out pairs (loss, implicit-reward accuracy) and the task's generation metrics."""
        metrics = eval_pairs(base, eval_examples, eval_ref, loss_fn, cfg, pad_id) if eval_examples else {}
        with base.role("policy") as m:  # generation with the policy adapter active
            metrics.update(evaluate(run, m, tokenizer))
        return metrics


    # ---- loop -----------------------------------------------------------------------------------
    headline = (
        f"dpo/{cfg.dpo.loss_type} {cfg.mode}: {trainable:,} trainable of {total:,} parameters; "
        f"{len(train_examples)} train pairs, {len(eval_examples)} eval pairs ({skipped.total} skipped); "
        f"lr {run.derived['learning_rate']:.3g}; beta {cfg.dpo.beta}"
    )
    eval_before, bar = start_loop(run, start_step, evaluate_policy, "dpo", headline)
    for step in range(start_step, cfg.train.steps):
        t0 = time.time()

        def micro_loss(micro_rows: list[int]):
            batch = _to(collate_pairs([train_examples[r] for r in micro_rows], pad_id), acc.device)
            ref_2B = None
            if train_ref is not None:
                ref_2B = torch.tensor([train_ref[r][0] for r in micro_rows] + [train_ref[r][1] for r in micro_rows], device=acc.device)
            loss, stats, n = dpo_loss_on_batch(base, batch, loss_fn, cfg, ref_2B)
            return loss, stats, n, batch["attention_mask"].sum()

        metrics, global_tokens, grad_norm = accumulated_step(run, stream.batch(step), micro_loss, params, optimizer, scheduler)
        metrics.update({"lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                        "tokens_per_s": global_tokens / max(time.time() - t0, 1e-9), **skipped.as_dict()})
        end_of_step(run, step + 1, metrics, evaluate_policy, save, bar, {"loss": ".4f"})
    bar.close()

    # ---- save -----------------------------------------------------------------------------------
    return finish_run(run, save, lambda run_dir: save_policy(base, run_dir), evaluate_policy, eval_before, trainable, total, lambda eval_after: {
        "loss_type": cfg.dpo.loss_type, "beta": cfg.dpo.beta, "precompute_reference": cfg.dpo.precompute_reference,
        "skipped_rows": skipped.total, "memory_bytes": memory_report(base, optimizer),
        "memory_by_role": memory_by_role(base, optimizer),
    }, model=base)
