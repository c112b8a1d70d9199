"""Helpers every trainer shares: run setup, optimizer and schedule, resume and checkpoints, the
log/eval/save cadence after each step, evaluation, and the finishing block.

Composition, not inheritance: a trainer calls these and still reads top to bottom as
    setup     run = start_run(cfg); model or roles; data; optimizer = make_optimizer(...);
              start_step = resume_step(...); save = checkpoint_saver(...); eval_before = ...
    loop      eval_before, bar = start_loop(run, start_step, evaluate, desc, headline)
              for step in range(start_step, steps): ... ; end_of_step(run, done, metrics, evaluate, save, bar, shown)
    save      return finish_run(run, save, save_outputs, evaluate, eval_before, ...)
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from align.allocator import loaded as loaded_allocator
from align.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from align.config import RecipeConfig, save_resolved
from align.data.batching import chunks as _chunks
from align.data.batching import shard as _shard
from align.distributed import shard_frozen_base
from align.dropout import disable_model_dropout
from align.evaluation import evaluate_task
from align.experience import evaluate_prompts
from align.lora import lr_rule_ratio
from align.memory import memory_phase, peak_bytes, return_freed_memory
from align.models import load_model_and_tokenizer
from align.preflight import adapter_load_errors, preflight
from align.shared_base import SharedBase
from align.tasks import task_for
from align.tracking import Tracker, new_run_dir, progress


@dataclass
class TrainResult:
    """What `align train` returns: the run directory, and the trained model for callers in Python."""

    run_dir: str
    model: Any = None
    summary: dict[str, Any] | None = None


@dataclass
class Run:
    """What a trainer needs about its process and run directory."""

    cfg: RecipeConfig
    accelerator: Any
    run_dir: Path
    tracker: Tracker
    derived: dict[str, Any]
    start_time: float = field(default_factory=time.time)
    resumed_extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def sharded(self) -> bool:
        """The base is sharded over processes (fsdp with several): its forwards are collective,
        so work done "on the main process" (evaluation) runs on every process in step."""
        return self.cfg.distributed.strategy == "fsdp" and self.world > 1

    def print(self, *args: Any) -> None:
        if self.is_main:
            print(*args, flush=True)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def start_run(cfg: RecipeConfig) -> Run:
    """Pre-load checks, accelerator, threads, seed, run directory, resolved config and tracker.

    `preflight` runs first, before any file is written or model loaded: a wrong path, a saved
    adapter that does not fit the model, or resume without a checkpoint stops here with one
    ConfigError line (and it settles lora.* from an init adapter before config.yaml records them)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    preflight(cfg)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if not torch.cuda.is_available() and loaded_allocator() == "glibc":
        return_freed_memory(cfg.train.cpu_mmap_threshold_mib)  # before any model: every large tensor after it
    # Roles that skip a forward on some step (e.g. a frozen reward adapter) leave parameters
    # without gradients; DDP must not wait for them.
    # Several processes on a machine without CUDA (a torchrun-style launch, as in
    # recipes/accelerate/cpu_2proc.yaml): ask for the CPU so accelerate sets up gloo.
    cpu_multiprocess = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    accelerator = Accelerator(
        cpu=cpu_multiprocess, kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)]
    )
    world = accelerator.num_processes
    if cfg.train.batch_size % (cfg.train.grad_accum * world):
        raise SystemExit(
            f"train.batch_size ({cfg.train.batch_size}) must be divisible by train.grad_accum "
            f"({cfg.train.grad_accum}) x processes ({world})"
        )
    set_seed(cfg.train.seed)
    if cfg.output_dir:
        run_dir = Path(cfg.output_dir)
    else:
        run_dir = new_run_dir(cfg.method, cfg.mode)
        if world > 1:
            from accelerate.utils import broadcast_object_list

            # Every process must agree on the folder that the main process names.
            run_dir = Path(broadcast_object_list([str(run_dir)], from_process=0)[0])
    if accelerator.is_main_process:  # preflight refused a fresh run in another run's folder
        run_dir.mkdir(parents=True, exist_ok=True)
        save_resolved(cfg, run_dir / "config.yaml")
    accelerator.wait_for_everyone()
    derived = cfg.derived(world)
    tracker = Tracker(run_dir, {**cfg.to_dict(), "derived": derived}, cfg.tracking, accelerator.is_main_process, cfg.resume)
    return Run(cfg, accelerator, run_dir, tracker, derived)


def load_shared_base(cfg: RecipeConfig, run: Run):
    """The recipe's model as a `SharedBase` on this process's device, before any role exists.
    The base model's own dropout is removed (`align.dropout`, as TRL does) unless
    `train.model_dropout`; `lora.dropout` is untouched. `train.activation_checkpointing` and
    `train.logprob_chunk_mib` are set on it here."""
    with memory_phase("load"):
        model, tokenizer = load_model_and_tokenizer(cfg.model, cfg.dtype)
    if not cfg.train.model_dropout:
        disable_model_dropout(model)
    base = SharedBase(model.to(run.accelerator.device), tokenizer, mode=cfg.mode, lora=cfg.lora)
    base.logprob_chunk_bytes = int(cfg.train.logprob_chunk_mib * 2**20)
    if activation_checkpointing_on(cfg, model):  # before any role: full copies inherit it, adapters' switches are replayed
        base.enable_activation_checkpointing()
    return base


CHECKPOINTING_MIN_PARAMETERS = 10_000_000  # `train.activation_checkpointing: null` turns it on from here


def activation_checkpointing_on(cfg: RecipeConfig, model: torch.nn.Module) -> bool:
    """`train.activation_checkpointing`, with null resolved by the base's size (its doc)."""
    if cfg.train.activation_checkpointing is not None:
        return cfg.train.activation_checkpointing
    return sum(p.numel() for p in model.parameters()) >= CHECKPOINTING_MIN_PARAMETERS


def shard_if_asked(run: Run, model, keep_whole) -> None:
    """Under `distributed.strategy: fsdp` with several processes, shard the frozen base layer by
    layer (`align.distributed`), leaving `keep_whole` (every adapter) whole. Call it once every
    role exists (adding an adapter rewrites modules FSDP would already have wrapped) and before
    the first forward; adapters keep their identity, so an optimizer made before holds the same
    tensors."""
    if run.sharded:
        layers = shard_frozen_base(model, keep_whole)
        run.print(f"fsdp: base sharded over {run.world} processes, {layers} decoder layers (adapters and heads whole)")


def add_policy_and_reference(base, key: str, init_adapter: str | None, reference: bool = True) -> None:
    """The policy (fresh, or started from the saved adapter that recipe key `key` names) and its
    frozen reference; a saved adapter that does not fit the model is one ConfigError line.
    `reference=False` (nothing reads one, e.g. GRPO at kl 0): no reference role, and in full mode
    the policy trains the loaded base itself instead of a copy (one copy of the weights less)."""
    with adapter_load_errors(key, init_adapter):
        base.add_policy(init_adapter=init_adapter, in_place=not reference)
        if reference:
            base.add_reference()


def make_optimizer(params: list[torch.nn.Parameter] | list[dict], cfg: RecipeConfig, lr: float) -> torch.optim.AdamW:
    """AdamW over parameters, or over param groups (a group's own "lr" overrides `lr`; a "name"
    labels it). The one optimizer every trainer builds."""
    o = cfg.optimizer
    return torch.optim.AdamW(params, lr=lr, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=o.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: RecipeConfig, total_steps: int):
    """Linear warmup, then cosine / linear decay to 0, or constant."""
    warmup, kind = cfg.optimizer.warmup_steps, cfg.optimizer.schedule

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def clip_and_step(params, optimizer, scheduler, max_grad_norm: float, accelerator) -> float:
    """Clip (if enabled), step, zero grads; return the pre-clip gradient norm."""
    with memory_phase("optimizer"):
        if max_grad_norm > 0:
            norm = accelerator.clip_grad_norm_(params, max_grad_norm)
        else:
            norm = torch.norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return float(norm)


def evaluate(run: Run, model, tokenizer, split: str = "eval", generate_fn=None) -> dict[str, float]:
    """Task evaluation (greedy and sampled accuracy, gold score, length) on the main process;
    `generate_fn` samples instead of `align.rollout.generate` (a rollout engine's)."""
    cfg = run.cfg
    if not cfg.eval.enabled or cfg.data.task is None:
        return {}
    result: dict[str, float] = {}
    if run.is_main or run.sharded:
        model = run.accelerator.unwrap_model(model)
        with memory_phase("eval"):
            result = evaluate_task(
                model, tokenizer, task_for(cfg.data), n=cfg.eval.num_prompts, split=split,
                seed=cfg.train.seed, max_new_tokens=cfg.eval.max_new_tokens, samples=run.tracker.sample_sink("eval"),
                chat_template=cfg.data.chat_template, temperature=cfg.eval.temperature,
                **({"generate_fn": generate_fn} if generate_fn is not None else {}),
            )
    run.accelerator.wait_for_everyone()
    return result if run.is_main else {}


def start_loop(run: Run, start_step: int, evaluate, desc: str, headline: str):
    """Before the first step: print the run's `headline` (what trains, on what data, at which LR,
    where it writes), `evaluate()` a fresh run (not a resumed one) and log it at step 0;
    returns (eval_before, the progress bar over the run's steps)."""
    run.print(f"{headline}; run dir {run.run_dir}")
    eval_before = evaluate() if start_step == 0 else {}
    log_eval(run, eval_before, 0)
    return eval_before, progress(total=run.cfg.train.steps, desc=desc, initial=start_step)


def log_eval(run: Run, metrics: dict[str, float], step: int) -> None:
    """Evaluation metrics into the tracker as `eval/<name>` (nothing when there are none)."""
    if metrics:
        run.tracker.log({f"eval/{k}": v for k, v in metrics.items()}, step=step)


def end_of_step(run: Run, done: int, metrics: dict[str, float], evaluate, save, bar, shown: dict[str, str]) -> None:
    """What follows optimizer step (or iteration) `done` in every trainer: the progress bar moves
    and shows `shown` ({metric: format}); `metrics` are logged every `train.log_every` steps and at
    the last; `evaluate()` runs every `train.eval_every` and `save(done)` every `train.save_every`
    steps, except at the last, which `finish_run` evaluates and saves."""
    bar.update(1)
    bar.set_postfix({name.split("/")[-1]: format(metrics[name], spec) for name, spec in shown.items() if name in metrics})
    t = run.cfg.train
    if t.log_every and (done % t.log_every == 0 or done == t.steps):
        run.tracker.log(metrics, step=done)
    if t.eval_every and done % t.eval_every == 0 and done != t.steps:
        log_eval(run, evaluate(), done)
    if t.save_every and done % t.save_every == 0 and done != t.steps:
        save(done)


def save_policy(base, run_dir: Path) -> Path:
    """The trained policy where users look for it: `adapter/` (plain peft format; LoRA) or `model/`
    (a full copy), with the tokenizer beside it."""
    out = Path(run_dir) / ("adapter" if base.mode == "lora" else "model")
    base.save_role("policy", out)
    base.tokenizer.save_pretrained(out)
    return out


def finish_run(run: Run, save, save_outputs, evaluate, eval_before: dict, trainable: int, total: int,
               extra=None, model: Any = None, engine=None) -> TrainResult:
    """The end of every trainer: the last checkpoint (`save`), the trained roles or model
    (`save_outputs(run_dir)`, main process only), the final evaluation, `summary.json` with
    `extra(eval_after)` (called after the evaluation, so memory peaks include it), and accelerate's
    teardown (after the rollout `engine`'s, whose vLLM teardown also ends torch.distributed)."""
    steps = run.cfg.train.steps
    save(steps)
    if run.is_main:
        save_outputs(run.run_dir)
    eval_after = evaluate()
    log_eval(run, eval_after, steps)
    result = summary(run, eval_before, eval_after, trainable, total, extra(eval_after) if extra is not None else None)
    run.tracker.finish(result)
    run.accelerator.wait_for_everyone()
    if engine is not None:
        engine.close()
    run.accelerator.end_training()
    return TrainResult(str(run.run_dir), model, result)


def evaluate_on_policy(run: Run, base, eval_rows: list[dict], reward_fn, eos_ids: list[int], engine=None) -> dict[str, float]:
    """The evaluation of an on-policy run (PPO, GRPO): on a built-in task, greedy and sampled
    accuracy with the policy adapter active; on a prompt file (`eval_rows`), the training reward
    of greedy and sampled responses (`align.experience.evaluate_prompts`), on the main process.
    `engine` (rollout.engine vllm): it samples, through the policy adapter synced first."""
    if engine is not None:
        engine.sync(base)
    with base.role("policy") as policy_model:
        metrics = evaluate(run, policy_model, base.tokenizer, generate_fn=engine.generate if engine is not None else None)
    if eval_rows:
        with memory_phase("eval"):
            metrics = evaluate_prompts(base, eval_rows, reward_fn, run.cfg, eos_ids, run.tracker.sample_sink("eval"),
                                       engine=engine) if run.is_main or run.sharded else {}
        metrics = metrics if run.is_main else {}
        run.accelerator.wait_for_everyone()
    return metrics


def peak_memory_bytes() -> int:
    return int(peak_bytes())


def summary(run: Run, eval_before: dict, eval_after: dict, trainable: int, total: int, extra: dict | None = None) -> dict:
    cfg = run.cfg
    rule_applied = cfg.mode == "lora" and cfg.optimizer.lr_rule
    return {
        "method": cfg.method,
        "mode": cfg.mode,
        "model": cfg.model,
        "lora_rank": cfg.lora.rank if cfg.mode == "lora" else None,
        "lora_targets": cfg.lora.targets if cfg.mode == "lora" else None,
        "learning_rate": run.derived["learning_rate"],
        "lr_rule_applied": rule_applied,
        "lr_rule_ratio": lr_rule_ratio(cfg.method, cfg.optimizer.lr_rule_ratios) if rule_applied else None,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "steps": cfg.train.steps,
        "global_batch": cfg.train.batch_size,
        "num_processes": run.world,
        "wall_time_s": round(time.time() - run.start_time, 2),
        "peak_memory_bytes": peak_memory_bytes(),
        "peak_memory_kind": "cuda_max_allocated" if torch.cuda.is_available() else "cpu_process_max_rss",
        "cpu_allocator": loaded_allocator(),  # train.cpu_allocator as it came out (align.allocator)
        "eval_before": eval_before,
        "eval_after": eval_after,
        **(extra or {}),
    }


def all_reduce_gradients(params: list[torch.nn.Parameter], accelerator) -> None:
    """Average gradients over processes by hand (for trainers on a SharedBase).

    Roles live on one model with heads outside it, and a step may run several roles before one
    backward, so DDP's per-module hooks do not fit; an explicit all-reduce after the last
    micro-batch's backward is exact and simple. A no-op with one process.
    """
    if accelerator.num_processes == 1:
        return
    import torch.distributed as dist

    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad.div_(accelerator.num_processes)


def resume_step(run: Run, named_params, optimizers: dict, schedulers: dict) -> int:
    """With `resume=true`: restore the last checkpoint and return its step; otherwise 0.

    Metrics rows from after the checkpoint are dropped: the resumed run writes them again.
    """
    if not run.cfg.resume:
        return 0
    ckpt = latest_checkpoint(run.run_dir)
    if ckpt is None:
        raise SystemExit(f"resume=true but {run.run_dir} has no checkpoint")
    state = load_checkpoint(ckpt, named_params, optimizers, schedulers)
    run.tracker.truncate_after(state["step"])
    run.print(f"resumed from {ckpt} at step {state['step']}")
    run.resumed_extra = state["extra"]
    return state["step"]


def checkpoint_saver(run: Run, named_params, optimizers: dict, schedulers: dict, save_adapter=None, extra=None):
    """A `save(step)` that writes a checkpoint from the main process; every process waits for it.

    `save_adapter(dir)` (LoRA mode) writes the adapter in peft format inside the checkpoint;
    `extra()` returns trainer state to keep (e.g. the KL controller).
    """
    def save(step: int) -> None:
        if run.is_main:
            save_checkpoint(
                run.run_dir, step, named_params, optimizers, schedulers,
                extra=extra() if extra else None,
                save_adapter=save_adapter if run.cfg.mode == "lora" else None,
            )
        run.accelerator.wait_for_everyone()

    return save


def accumulated_step(run: Run, global_rows: list[int], micro_loss, params, optimizer, scheduler, after_backward=None):
    """One optimizer step over the GLOBAL batch `global_rows`, for trainers whose loss is a mean over
    rows (pairs): this process's share in `train.grad_accum` micro-batches. `micro_loss(rows)`
    returns (mean loss over the micro-batch, stats, rows, tokens); each loss is rescaled by
    micro / global rows so the sum over micro-batches and processes is the global-batch mean
    (batch 8 == 4 x 2 accumulation == 2 processes x 4), then gradients are averaged over processes
    (`all_reduce_gradients`), `after_backward()` runs (if given), and the step is taken.
    Returns (metrics: global means of loss and stats, global tokens, pre-clip gradient norm)."""
    acc, global_count = run.accelerator, len(global_rows)
    sums: dict[str, torch.Tensor] = {}
    tokens = torch.zeros((), device=acc.device)
    for micro_rows in _chunks(_shard(global_rows, run.rank, run.world), run.cfg.train.grad_accum):
        with memory_phase("update/forward"):
            loss, stats, n, micro_tokens = micro_loss(micro_rows)
        with memory_phase("update/backward"):  # x world because all_reduce_gradients AVERAGES over processes
            (loss * (n * run.world / global_count)).backward()
        for k, v in {"loss": loss.detach(), **stats}.items():
            sums[k] = sums.get(k, torch.zeros((), device=acc.device)) + v.float() * n
        tokens += micro_tokens
    all_reduce_gradients(params, acc)
    if after_backward is not None:
        after_backward()
    grad_norm = clip_and_step(params, optimizer, scheduler, run.cfg.optimizer.max_grad_norm, acc)
    metrics, global_tokens = global_step_means(acc, sums, tokens, global_count)
    return metrics, global_tokens, grad_norm


def mean_over_processes(run: Run, local: dict[str, float]) -> dict[str, float]:
    """Each local number averaged over processes (one all-reduce; the identity with one process)."""
    keys = sorted(local)
    acc = run.accelerator
    reduced = acc.reduce(torch.tensor([local[k] for k in keys], dtype=torch.float64, device=acc.device), reduction="mean")
    return dict(zip(keys, reduced.tolist()))


def sum_over_processes(run: Run, values: list[float]) -> list[float]:
    """Each local number summed over processes (one all-reduce)."""
    acc = run.accelerator
    return acc.reduce(torch.tensor(values, dtype=torch.float64, device=acc.device), reduction="sum").tolist()


def global_step_means(accelerator, sums: dict[str, torch.Tensor], tokens: torch.Tensor, count: int) -> tuple[dict[str, float], float]:
    """Per-step metrics over the GLOBAL batch: `sums` hold each metric times its micro-batch size,
    summed over this process's micro-batches; one all-reduce adds the processes, `count` divides.
    Returns the means and the global number of tokens (for tokens/s)."""
    keys = sorted(sums)
    reduced = accelerator.reduce(torch.stack([sums[k] for k in keys] + [tokens.float()]), reduction="sum")
    return {k: float(v) / count for k, v in zip(keys, reduced[:-1])}, float(reduced[-1])
