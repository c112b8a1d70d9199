"""Supervised fine-tuning (and pretraining) with LoRA or full fine-tuning, on `accelerate`.

Run: `align train recipes/sft_lora.yaml` (or `accelerate launch --config_file
recipes/accelerate/cpu_2proc.yaml -m align.cli train recipes/sft_lora.yaml`).

The loss is the causal-LM negative log-likelihood of completion tokens (prompt tokens masked;
`sft.completion_only_loss: false` trains on every token, which is how the built-in base is
pretrained). It is normalised by the number of target tokens in the whole GLOBAL batch, so that a
batch of 8 equals 4 x 2 accumulation steps equals 2 processes x 4, exactly (up to float
rounding), instead of averaging per-micro-batch means. A micro-batch whose (batch, tokens, vocab)
logits would exceed `train.logprob_chunk_mib` (a real vocabulary: SmolLM2's 49,152 x 16 x 128 is
403 MB) goes through the one log-prob path's chunked head instead (`CompletionNLL`).

Left out here: packing of several examples into one sequence; a tiny base does not need it.
"""

from __future__ import annotations

import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from align.compat import enable_activation_checkpointing
from align.config import RecipeConfig
from align.data.batching import IGNORE_INDEX, BatchStream, chunks, collate_sft, shard
from align.data.loading import SkipCounter, load_examples
from align.logprobs import causal_lm, chunk_rows, token_logprobs
from align.lora import peft_lora_config
from align.memory import count_parameters, memory_phase
from align.models import load_model_and_tokenizer
from align.modes import eval_mode
from align.trainers.common import (
    TrainResult, activation_checkpointing_on, all_reduce_gradients, checkpoint_saver, clip_and_step, end_of_step, evaluate, finish_run, make_optimizer, make_scheduler,
    resume_step, shard_if_asked, start_loop, start_run,
)


def causal_lm_nll_sum(logits_BTV: torch.Tensor, labels_BT: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Sum of -log p(label_t | tokens_<t) over non-ignored labels, and how many there were."""
    shifted_logits = logits_BTV[:, :-1].float()
    shifted_labels = labels_BT[:, 1:]
    nll = F.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.size(-1)), shifted_labels.reshape(-1),
        ignore_index=IGNORE_INDEX, reduction="sum",
    )
    return nll, int((shifted_labels != IGNORE_INDEX).sum())


class CompletionNLL(torch.nn.Module):
    """Sum of -log p of an SFT batch's target tokens (labels != IGNORE_INDEX) under `model`, as a
    module so that DDP wraps the loss with the model it trains.

    Logits that fit in `chunk_bytes` of float32 are computed whole (`causal_lm_nll_sum`: the path
    the built-in base was trained with, so its recipes keep their numbers). Larger ones go through
    `align.logprobs.token_logprobs`, which runs the LM head on target positions only, in chunks,
    and never holds a (B, T, V) tensor: on a real vocabulary those logits, their log-softmax and
    their gradient were most of an SFT step's peak (issue 22's profile)."""

    def __init__(self, model: torch.nn.Module, chunk_bytes: int):
        super().__init__()
        self.model, self.chunk_bytes = model, chunk_bytes
        self.vocab = causal_lm(model).get_output_embeddings().weight.shape[0]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if input_ids.numel() <= chunk_rows(self.chunk_bytes, self.vocab):  # the whole (B, T, V) fits in one chunk
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
            return causal_lm_nll_sum(logits, labels)[0]
        target_BT = (labels != IGNORE_INDEX).long()
        return -token_logprobs(self.model, input_ids, attention_mask, target_BT, chunk_bytes=self.chunk_bytes).logps_BT.sum()


def _target_tokens(examples, completion_only: bool) -> int:
    # Tokens that carry loss: everything after the first position (or the completion only).
    if completion_only:
        return sum(len(e.completion_ids) for e in examples)
    return sum(len(e.prompt_ids) + len(e.completion_ids) - 1 for e in examples)


@torch.no_grad()
def eval_loss(model, examples, pad_id: int, completion_only: bool, batch_size: int) -> float:
    """Mean NLL per target token of held-out examples, in eval mode (each module's mode restored),
    from the toolkit's one log-prob path (`align.logprobs.token_logprobs`)."""
    total, count = 0.0, 0
    with eval_mode(model):
        for i in range(0, len(examples), batch_size):
            batch = {k: v.to(model.device) for k, v in collate_sft(examples[i : i + batch_size], pad_id, completion_only).items()}
            target_BT = (batch["labels"] != IGNORE_INDEX).long()
            token_logps_BT = token_logprobs(model, batch["input_ids"], batch["attention_mask"], target_BT).logps_BT
            total, count = total - float(token_logps_BT.sum()), count + int(target_BT[:, 1:].sum())
    return total / max(count, 1)


def train_sft(cfg: RecipeConfig) -> TrainResult:
    # ---- setup ----------------------------------------------------------------------------------
    run = start_run(cfg)
    acc = run.accelerator
    model, tokenizer = load_model_and_tokenizer(cfg.model, cfg.dtype)
    if cfg.mode == "lora":
        from peft import get_peft_model

        model = get_peft_model(model, peft_lora_config(model, cfg.lora))
    model.to(acc.device)
    model.train()
    if activation_checkpointing_on(cfg, model):  # one role, no switching: transformers' own checkpointing
        enable_activation_checkpointing(model, {"use_reentrant": False})
    trainable, total = count_parameters(model)

    skipped = SkipCounter()
    completion_only = cfg.sft.completion_only_loss
    train_examples = load_examples(cfg.data, tokenizer, "sft", "train", cfg.train.seed, skipped)
    eval_examples = load_examples(cfg.data, tokenizer, "sft", "eval", cfg.train.seed, skipped)
    stream = BatchStream(len(train_examples), cfg.train.batch_size, cfg.train.seed)

    named_params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named_params]
    optimizer = make_optimizer(params, cfg, run.derived["learning_rate"])
    scheduler = make_scheduler(optimizer, cfg, cfg.train.steps)
    # Several processes: DDP over the whole model, or (fsdp) the base sharded and the adapter's
    # gradients averaged by hand after the last micro-batch.
    shard_if_asked(run, model, params)
    completion_nll = CompletionNLL(model, int(cfg.train.logprob_chunk_mib * 2**20))
    ddp_nll = acc.prepare_model(completion_nll) if run.world > 1 and not run.sharded else completion_nll

    optimizers, schedulers = {"policy": optimizer}, {"policy": scheduler}
    start_step = resume_step(run, named_params, optimizers, schedulers)
    save = checkpoint_saver(run, named_params, optimizers, schedulers, save_adapter=model.save_pretrained)

    def evaluate_model() -> dict[str, float]:
        """Held-out loss (main process) and the task's generation metrics."""
        metrics = {"loss": eval_loss(model, eval_examples, tokenizer.pad_token_id, completion_only, 64)} if eval_examples else {}
        return {**metrics, **evaluate(run, model, tokenizer)}

    micro_batches_per_step = cfg.train.grad_accum

    # ---- loop -----------------------------------------------------------------------------------
    headline = (
        f"sft {cfg.mode}: {trainable:,} trainable of {total:,} parameters; {len(train_examples)} train rows "
        f"({skipped.total} skipped); lr {run.derived['learning_rate']:.3g}"
    )
    eval_before, bar = start_loop(run, start_step, evaluate_model, "sft", headline)
    for step in range(start_step, cfg.train.steps):
        t0 = time.time()
        global_rows = stream.batch(step)
        global_tokens = _target_tokens([train_examples[i] for i in global_rows], completion_only)
        my_rows = shard(global_rows, run.rank, run.world)
        nll_total = torch.zeros((), device=acc.device)
        for k, micro_rows in enumerate(chunks(my_rows, micro_batches_per_step)):
            batch = collate_sft([train_examples[i] for i in micro_rows], tokenizer.pad_token_id, completion_only)
            batch = {key: v.to(acc.device) for key, v in batch.items()}
            sync = k == micro_batches_per_step - 1
            with (acc.no_sync(ddp_nll) if (ddp_nll is not completion_nll and not sync) else nullcontext()):
                with memory_phase("update/forward"):
                    nll = ddp_nll(batch["input_ids"], batch["attention_mask"], batch["labels"])
                # DDP averages gradients over processes, so scale by world size to get the
                # gradient of (sum of token NLL over the global batch) / (global target tokens).
                with memory_phase("update/backward"):
                    acc.backward(nll * run.world / global_tokens)
            nll_total += nll.detach()
        if run.sharded:
            all_reduce_gradients(params, acc)
        grad_norm = clip_and_step(params, optimizer, scheduler, cfg.optimizer.max_grad_norm, acc)
        loss = float(acc.reduce(nll_total, reduction="sum")) / global_tokens
        metrics = {"loss": loss, "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                   "tokens_per_s": global_tokens / max(time.time() - t0, 1e-9), **skipped.as_dict()}
        end_of_step(run, step + 1, metrics, evaluate_model, save, bar, {"loss": ".4f"})
    bar.close()

    # ---- save -----------------------------------------------------------------------------------
    def save_outputs(run_dir) -> None:
        out = run_dir / ("adapter" if cfg.mode == "lora" else "model")
        # LoRA: no copy of frozen embedding / LM-head base weights in the adapter (as SharedBase.save_role)
        model.save_pretrained(out, **({"save_embedding_layers": False} if cfg.mode == "lora" else {}))
        tokenizer.save_pretrained(out)

    return finish_run(run, save, save_outputs, evaluate_model, eval_before, trainable, total,
                      lambda eval_after: {"skipped_rows": skipped.total}, model=model)
