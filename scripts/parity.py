"""LoRA-vs-FullFT parity study of one method: rank x learning-rate x seed sweep, table and plots.

    OMP_NUM_THREADS=1 python scripts/parity.py dpo            # the full study (~45 min on 2 cores)
    OMP_NUM_THREADS=1 python scripts/parity.py dpo --smoke    # 1 seed, 2 LRs, 2 configs, few steps
    # a longer budget at each configuration's best LR of the study above:
    OMP_NUM_THREADS=1 python scripts/parity.py ppo --override train.steps=60 \
        --best-from results/parity_ppo/table.csv --runs-dir runs/parity_ppo_long --out results/parity_ppo_long

The replication atlas (issue 13): one study per "LoRA Without Regret" finding, outputs under
results/atlas/<study>/ (each ~10-25 min with --jobs 2 on 2 free cores):

    OMP_NUM_THREADS=1 python scripts/parity.py sft            # 1: SFT parity, FullFT vs LoRA r1/r4/r8/r32
    OMP_NUM_THREADS=1 python scripts/parity.py sft_batch      # 3: batch 8/32/128 at 4800 examples seen
    OMP_NUM_THREADS=1 python scripts/parity.py sft_targets    # 4: attention (rank matched) / mlp / all, SFT
    OMP_NUM_THREADS=1 python scripts/parity.py grpo_targets   # 4: the same on GRPO (runs in runs/parity_grpo)
    OMP_NUM_THREADS=1 python scripts/parity.py sft_rslora     # 6: best LR across ranks, alpha/r vs alpha/sqrt(r)
    OMP_NUM_THREADS=1 python scripts/parity.py capacity       # 2: memorising N facts (scripts/atlas_capacity.py)

The SFT studies share runs/atlas_sft, so a configuration two of them hold (e.g. sft's lora_r8 in
sft_batch, sft_targets and sft_rslora) runs once; run `sft` first. Their metric is the held-out
loss, where lower is better (`Study.higher_is_better`): the best LR, EDGE and the verdict follow.

For every configuration of the study (FullFT, and LoRA on all layers at ranks 1, 4, 8), every
learning rate of that configuration's grid and every seed, ONE training run is a separate process
(`python -m align.cli train RECIPE overrides... output_dir=...`), one torch thread each, at most
`--jobs` (default 2) at a time. A run whose summary.json exists is not run again, so an
interrupted study continues where it stopped. Run folders go under `runs/parity_<method>/`
(gitignored); the outputs go to `results/parity_<method>/` (`--smoke`: `..._smoke`), or to the
study's own `runs_dir` / `out_dir`:

    table.md, table.csv   per configuration, at its best LR (the LR with the best seed-mean final
                          metric, highest or lowest as the study says): the final metric as
                          mean +- std over seeds, the secondary metrics, the best LR, peak memory (max over those runs; CPU: process
                          peak RSS) and trainable parameters. A best LR at the edge of its grid
                          is flagged "EDGE" in the table and printed as a warning: the grid must
                          then be extended, the optimum may lie outside it.
    metric_vs_lr.png      final metric against LR (log scale), one curve per configuration,
                          seed mean with std error bars
    curves.png            the metric against training step at each configuration's best LR
                          (seed mean, shaded std)
    study.json            all of the above as numbers, and the verdict (align.report.verdict):
                          what `align report results/parity_<method>` draws as one HTML page
    metric_vs_axis.png,   studies with an `axis` (rank, steps, batch size): each configuration's
    table_axis.md/.csv    best-LR metric against it, one curve per series;
    best_lr_vs_axis.png   and, with `axis_best_lr`, each configuration's best LR against it

With `--wandb` every run logs to wandb (offline unless you are logged in), grouped so the wandb UI
compares them side by side: group = the study folder's name, job_type = the configuration,
run name = configuration-lr-seed. Without it (the default, as the studies were measured) wandb
is off.

A study is an entry of `STUDIES`: the recipe, shared overrides, the configurations with their LR
grids, seeds, the metric read from `summary.json` (`eval_after`) and from `metrics.jsonl` (the
learning curve), and its smoke variant. Adding a method (e.g. `ppo`) means adding an entry; this
file has no per-method code.

DPO: the metric is the gold score of sampled completions (temperature 1) on held-out prompts of
the built-in preference task (`gold_score_sampled`); also reported: the implicit-reward accuracy
on held-out preference pairs (`pairs/rewards/accuracies`) and sampled accuracy.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
from as_measured import GRPO_BEFORE_ISSUE11_TUNING  # noqa: E402  (this folder)


@dataclass
class Configuration:
    """One line of the table: a mode (and LoRA rank) with its learning-rate grid."""

    name: str
    overrides: list[str]
    lrs: list[float]


@dataclass
class Study:
    recipe: str
    overrides: list[str]
    configurations: list[Configuration]
    metric: str  # key of summary.json's eval_after, and of metrics.jsonl as eval/<metric>
    metric_label: str
    higher_is_better: bool = True  # False for a loss: the best LR is the one with the lowest seed mean
    digits: int = 3  # decimals of the primary metric in table.md and table_axis.md
    secondary: list[str] = field(default_factory=list)  # more eval_after keys reported beside it
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    smoke_overrides: list[str] = field(default_factory=list)
    smoke_configurations: list[str] = field(default_factory=lambda: ["full", "lora_r4"])  # names kept in --smoke
    smoke_lr_indices: tuple[int, ...] = (0, -1)
    # Defaults of --runs-dir / --out (None: runs/parity_<method>, results/parity_<method>). Studies
    # that share the dpo study's run folder reuse its finished runs (same recipe and overrides).
    runs_dir: str | None = None
    out_dir: str | None = None
    # Optional extra plot and table: the best-LR metric of each configuration against a numeric
    # axis, one curve per series: (axis label, {configuration name: (series, x)}).
    axis: tuple[str, dict[str, tuple[str, float]]] | None = None
    # With an axis: also plot each configuration's best LR against it (best_lr_vs_axis.png).
    axis_best_lr: bool = False
    # A study's own outputs beside the generic ones: report(runs_dir, out_dir, study, seeds) -> text
    report: Callable[..., str] | None = None


def _lora(rank: int, lrs: list[float]) -> Configuration:
    return Configuration(f"lora_r{rank}", ["mode=lora", f"lora.rank={rank}", "lora.alpha=32", "lora.targets=all"], lrs)


def _full_and_lora(full_lrs: list[float], lora_lrs: list[float]) -> list[Configuration]:
    """The configurations every study compares: FullFT, and LoRA on all layers at ranks 1, 4, 8."""
    return [Configuration("full", ["mode=full"], full_lrs), *(_lora(rank, lora_lrs) for rank in (1, 4, 8))]


FULL_DPO_LRS = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3]  # 300x, x ~3.16 per point (extended up twice: the top was the best)
LORA_DPO_LRS = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]  # 100x; first 3e-4..1e-2 (~10x FullFT's best, the "LoRA Without Regret" rule), extended down when 3e-4 won at the edge
FULL_PPO_LRS = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3]  # extended up: 3e-4 won at the top edge of the first grid
LORA_PPO_LRS = [1e-4, 3e-4, 1e-3, 3e-3]  # FullFT's first grid x 10 (the "LoRA Without Regret" rule)
# x ~3.16 grids, then refined around the best of each (5e-4, 2e-3 for FullFT; 2e-3, 5e-3 for
# LoRA) after FullFT's best (1e-3) had one seed of three far below the others.
FULL_GRPO_LRS = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3]  # 100x, x ~3.16 per point
LORA_GRPO_LRS = [1e-4, 3e-4, 1e-3, 3e-3]  # 30x, around FullFT's grid x 10 (the "LoRA Without Regret" rule)
FULL_RM_LRS = [1e-4, 3e-4, 5e-4, 1e-3, 2e-3, 3e-3]
LORA_RM_LRS = [3e-4, 1e-3, 2e-3, 3e-3, 5e-3, 1e-2]

GRPO_OVERRIDES = [
    "optimizer.lr_rule=false",  # every LR here is the LR actually used
    "train.steps=60", "train.eval_every=5", "eval.num_prompts=256", "tracking.wandb=false", "train.threads=1",
    *GRPO_BEFORE_ISSUE11_TUNING,  # the recipe as the study was measured (it has been tuned since)
]
GRPO_SMOKE_OVERRIDES = ["model=scratch:test", "train.steps=2", "train.eval_every=0", "grpo.prompts_per_iteration=4",
                        "grpo.group_size=4", "grpo.minibatch_size=8", "rollout.max_new_tokens=6", "data.num_train=64",
                        "eval.num_prompts=8", "eval.max_new_tokens=4"]

DPO_OVERRIDES = [
    "optimizer.lr_rule=false",  # every LR here is the LR actually used
    "train.steps=60", "train.batch_size=32", "train.log_every=10", "train.eval_every=30",
    "eval.num_prompts=256", "data.num_eval=256", "tracking.wandb=false", "train.threads=1",
]
DPO_SMOKE_OVERRIDES = ["model=scratch:test", "train.steps=3", "train.eval_every=0", "train.batch_size=8",
                       "data.num_train=64", "data.num_eval=16", "eval.num_prompts=8", "eval.max_new_tokens=4"]


def _dpo_study(configurations: list[Configuration], smoke_configurations: list[str], **kwargs) -> Study:
    """A study of the DPO gap (issue 13): the dpo study's recipe, overrides and metric; its runs go
    to the dpo study's run folder, so the rows it shares with it (full, lora_r1/r4/r8 at 60 steps,
    batch 32) are its finished runs, not new ones; configuration names say what differs."""
    return Study(recipe="recipes/dpo_lora.yaml", overrides=list(DPO_OVERRIDES), configurations=configurations,
                 metric="gold_score_sampled", metric_label="gold score of sampled completions (held-out prompts)",
                 secondary=["pairs/rewards/accuracies", "accuracy_sampled"], smoke_overrides=list(DPO_SMOKE_OVERRIDES),
                 smoke_configurations=smoke_configurations, smoke_lr_indices=(0,), runs_dir="runs/parity_dpo", **kwargs)


# The DPO gap, a: LoRA with adapters on the input embeddings and the LM head too
# (`lora.targets: all+embeddings`; the built-in base is untied, so both get adapters).
EMB_DPO_LRS = [1e-4, 3e-4, 1e-3, 3e-3]  # 30x around the targets=all optimum (3e-4 for r1/r4, 1e-3 for r8)
EMB_DPO_LRS_R1 = [3e-5, *EMB_DPO_LRS]  # extended down: rank 1's best was 1e-4, the bottom edge
# The same with the embedding and head adapters' alpha at 1 instead of 32 (`lora.embedding_alpha`):
# their gradients were 10-100x the block adapters' and their update per Adam step ~32x larger than
# with a plain LR; ranks 1 and 8 (the extremes, cut to fit the time), around the targets=all best.
EMB_A1_DPO_LRS = {1: [1e-4, 3e-4, 1e-3, 3e-3], 8: [3e-4, 1e-3, 3e-3]}  # rank 1 extended up: 1e-3 won at the top edge
# b: a finer grid around each configuration's best (the x3.16 points are the dpo study's runs):
# 1e-3..3e-3 for rank 8 (best 1e-3); ranks 1 and 4 (best 3e-4, single seeds collapsing from 1e-3
# up: 0.528 and 0.477 at 1e-3, 0.280 and below at 3e-3) get 2e-4 and 5e-4 instead (cut to fit the
# time: 1.5e-3 and 2e-3 for them would be 12 more runs) ...
FINE_FULL_DPO_LRS = [1e-4, 2e-4, 3e-4, 5e-4, 1e-3]
FINE_LORA_DPO_LRS = {1: [1e-4, 2e-4, 3e-4, 5e-4, 1e-3], 4: [1e-4, 2e-4, 3e-4, 5e-4, 1e-3],
                     8: [3e-4, 5e-4, 1e-3, 1.5e-3, 2e-3, 3e-3]}
# ... and twice the steps (120 at batch 32) for the ranks that trail (1, 4) and FullFT, around their best.
LONG_FULL_DPO_LRS = [3e-4]  # FullFT at its 60-step best only, a reference (cut to fit the time)
LONG_LORA_DPO_LRS = [1e-4, 3e-4, 1e-3]
# c: batch size 8 / 32 / 128 (16x) at a fixed 1920 examples seen (60 steps at 32), warmup a fixed
# share of them (5 steps at 32), ranks 1 and 8 and FullFT, a 3-point grid per batch size;
# batch 32 is the dpo study's configurations.
BATCH_SIZES = (8, 32, 128)
BATCH_DPO_LRS = {  # first 3 points each; extended down where the bottom won (full and r1 at 8, full at 128; r8 at 8 alike)
    "full": {8: [3e-5, 1e-4, 3e-4, 1e-3], 128: [1e-4, 3e-4, 1e-3, 3e-3]},
    "lora_r1": {8: [3e-5, 1e-4, 3e-4, 1e-3], 128: [3e-4, 1e-3, 3e-3]},
    "lora_r8": {8: [1e-4, 3e-4, 1e-3, 3e-3], 128: [3e-4, 1e-3, 3e-3, 1e-2]},  # r8 at 128: extended up (3e-3 won)
}


def _at_batch(config: Configuration, batch: int, lrs: list[float], examples: int = 1920, warmup_at_32: int = 5,
              evals: int = 2, logs: int = 6) -> Configuration:
    """`config` at another batch size and the same number of examples seen (steps = examples /
    batch, rounded), warmup the same share of them (`warmup_at_32` steps at batch 32), `evals`
    evaluations and `logs` log lines per run. The defaults are the DPO batch study's."""
    steps = round(examples / batch)
    return Configuration(f"{config.name}_bs{batch}", [*config.overrides, f"train.batch_size={batch}", f"train.steps={steps}",
                         f"optimizer.warmup_steps={max(1, round(warmup_at_32 * 32 / batch))}",
                         f"train.eval_every={max(1, steps // evals)}", f"train.log_every={max(1, steps // logs)}"], lrs)


def _emb(rank: int, lrs: list[float], embedding_alpha: float | None = None) -> Configuration:
    if embedding_alpha is None:
        return Configuration(f"lora_emb_r{rank}", ["mode=lora", f"lora.rank={rank}", "lora.alpha=32", "lora.targets=all+embeddings"], lrs)
    return Configuration(f"lora_emb_a{embedding_alpha:g}_r{rank}", ["mode=lora", f"lora.rank={rank}", "lora.alpha=32",
                         "lora.targets=all+embeddings", f"lora.embedding_alpha={embedding_alpha:g}"], lrs)


def _long(config: Configuration, lrs: list[float], steps: int = 120) -> Configuration:
    return Configuration(f"{config.name}_steps{steps}", [*config.overrides, f"train.steps={steps}", f"train.eval_every={steps // 4}"], lrs)


_BASELINE = {c.name: c for c in _full_and_lora(FULL_DPO_LRS, LORA_DPO_LRS)}

# ---- the replication atlas (issue 13): one study per "LoRA Without Regret" finding --------------
# Finding 1, small data: SFT of the built-in base on the arithmetic task's demonstrations
# (recipes/sft_lora.yaml, 150 steps at batch 32 = 4800 examples, about 1.2 epochs of the 4000 rows);
# the metric is the held-out loss (lower is better). One run: ~15 s on one thread.
SFT_OVERRIDES = [
    "optimizer.lr_rule=false",  # every LR here is the LR actually used
    "train.steps=150", "train.batch_size=32", "train.log_every=10", "train.eval_every=50",
    "eval.num_prompts=256", "tracking.wandb=false", "train.threads=1",
]
SFT_SMOKE_OVERRIDES = ["model=scratch:test", "train.steps=3", "train.eval_every=0", "train.batch_size=8",
                       "data.num_train=64", "data.num_eval=16", "eval.num_prompts=8", "eval.max_new_tokens=4"]
SFT_RANKS = (1, 4, 8, 32)
# Grids from probe runs (seed 0, final held-out loss): FullFT 3e-4 0.0325, 1e-3 0.0286, 3e-3 0.0241,
# 1e-2 0.891 (diverged); LoRA r8 1e-3 0.0380, 3e-3 0.0301, 1e-2 0.0352. Both best near 3e-3 (not
# the 10x apart of the rule), so LoRA's grid reaches 3e-2 for rank 1 and 3e-4 for sft_rslora's
# higher ranks (alpha / sqrt(r) at r32 is ~5.7x alpha / r: its best LR should lie ~5.7x lower).
FULL_SFT_LRS = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]  # 100x, x ~3.16 per point
LORA_SFT_LRS = [3e-4, 1e-3, 3e-3, 1e-2, 3e-2]  # 100x
# Finding 3, batch size at a fixed 4800 examples seen (the sft study's 150 steps at 32): batch 8
# (600 steps), 32 (the sft study's runs), 128 (38 steps: 4864 examples, 1.3% more); warmup the
# same share of the examples (10 steps at 32, as the recipe).
SFT_BATCH_SIZES = (8, 32, 128)
SFT_EXAMPLES = 4800
# LR grids: 30x around batch 32's best (3e-3 for both), shifted down at 8 and up at 128 (larger
# batches usually want larger LRs), except FullFT at 128, whose probe at 1e-2 diverged (loss 1.20).
BATCH_SFT_LRS = {
    "full": {8: [1e-4, 3e-4, 1e-3, 3e-3], 128: [3e-4, 1e-3, 3e-3, 1e-2]},
    "lora_r1": {8: [3e-4, 1e-3, 3e-3, 1e-2], 128: [1e-3, 3e-3, 1e-2, 3e-2]},
    "lora_r8": {8: [3e-4, 1e-3, 3e-3, 1e-2], 128: [1e-3, 3e-3, 1e-2, 3e-2]},
}
# Finding 4, where the adapters go, at matched trainable parameters. The built-in base (2 layers,
# hidden 128, MLP 512; q/k/v/o 128x128, gate/up 128->512, down 512->128) gives a rank-r adapter
# r*(in+out) parameters per layer: attention 4*256*r = 1024r, MLP 3*640*r = 1920r per block, so
# targets all at rank 8 = 2*(1024+1920)*8 = 47,104 and targets attention at rank 23 =
# 2*1024*23 = 47,104 (exactly equal; tests/test_parity_atlas.py counts them on the peft model);
# targets mlp at rank 8 = 30,720.
ATTENTION_MATCHED_RANK = 23
TARGETS_SFT_LRS = [1e-3, 3e-3, 1e-2, 3e-2]  # 30x around all-r8's best (3e-3); fewer layers may want more
TARGETS_GRPO_LRS = [1e-4, 3e-4, 1e-3, 3e-3]  # the grpo study's LoRA grid (all at rank 8: best 1e-3)


def _targets(targets: str, rank: int, lrs: list[float]) -> Configuration:
    return Configuration(f"lora_{targets}_r{rank}", ["mode=lora", f"lora.rank={rank}", "lora.alpha=32", f"lora.targets={targets}"], lrs)


def _rslora(rank: int, lrs: list[float]) -> Configuration:
    """LoRA on all layers with alpha / sqrt(r) scaling (lora.rslora) instead of alpha / r."""
    return Configuration(f"lora_rs_r{rank}", [*_lora(rank, lrs).overrides, "lora.rslora=true"], lrs)


def _sft_study(configurations: list[Configuration], smoke_configurations: list[str], **kwargs) -> Study:
    """An SFT study of the atlas: recipes/sft_lora.yaml with SFT_OVERRIDES, the held-out loss (lower
    is better); every SFT study's runs go to runs/atlas_sft, so a configuration that two studies
    share (same name, same command) runs once."""
    return Study(recipe="recipes/sft_lora.yaml", overrides=list(SFT_OVERRIDES), configurations=configurations,
                 metric="loss", metric_label="held-out SFT loss (mean NLL per answer token, nats, 256 eval rows; lower is better)",
                 higher_is_better=False, digits=4, secondary=["accuracy_sampled", "accuracy_greedy"],
                 smoke_overrides=list(SFT_SMOKE_OVERRIDES), smoke_configurations=smoke_configurations,
                 smoke_lr_indices=(0,), runs_dir="runs/atlas_sft", **kwargs)


# GRPO (critic-free) on the arithmetic task with the verifiable reward (recipes/grpo_lora.yaml):
# the policy is an adapter of the given rank (full: a full copy); the claim under test is that
# RL is ~1 bit per episode, so rank 1 matches FullFT. Eval every 5 iterations for the curves.
_GRPO = Study(
    recipe="recipes/grpo_lora.yaml",
    overrides=list(GRPO_OVERRIDES),
    configurations=_full_and_lora(FULL_GRPO_LRS, LORA_GRPO_LRS),
    metric="accuracy_sampled",
    metric_label="accuracy of sampled answers (held-out prompts, temperature 1)",
    secondary=["accuracy_greedy", "mean_response_length"],
    smoke_overrides=list(GRPO_SMOKE_OVERRIDES),
)

_SFT = {c.name: c for c in [Configuration("full", ["mode=full"], FULL_SFT_LRS), *(_lora(r, LORA_SFT_LRS) for r in SFT_RANKS)]}

STUDIES: dict[str, Study] = {
    "dpo": Study(
        recipe="recipes/dpo_lora.yaml",
        overrides=list(DPO_OVERRIDES),
        configurations=_full_and_lora(FULL_DPO_LRS, LORA_DPO_LRS),
        metric="gold_score_sampled",
        metric_label="gold score of sampled completions (held-out prompts)",
        secondary=["pairs/rewards/accuracies", "accuracy_sampled"],
        smoke_overrides=list(DPO_SMOKE_OVERRIDES),
    ),
    # The DPO gap (issue 13), a: LoRA on the embeddings and LM head too, beside the dpo study's rows.
    "dpo_gap_embed": _dpo_study(
        [*_BASELINE.values(), *(_emb(rank, EMB_DPO_LRS_R1 if rank == 1 else EMB_DPO_LRS) for rank in (1, 4, 8)),
         *(_emb(rank, lrs, embedding_alpha=1) for rank, lrs in EMB_A1_DPO_LRS.items())], ["lora_emb_r1"],
        out_dir="results/atlas/dpo_gap/embed",
        axis=("LoRA rank", {**{f"lora_r{r}": ("targets all", r) for r in (1, 4, 8)},
                            **{f"lora_emb_r{r}": ("targets all+embeddings", r) for r in (1, 4, 8)},
                            **{f"lora_emb_a1_r{r}": ("all+embeddings, embedding_alpha 1", r) for r in EMB_A1_DPO_LRS}}),
    ),
    # b: the finer LR grid (60 steps), every configuration.
    "dpo_gap_lr": _dpo_study(
        [Configuration("full", ["mode=full"], FINE_FULL_DPO_LRS), *(_lora(rank, FINE_LORA_DPO_LRS[rank]) for rank in (1, 4, 8))],
        ["lora_r1"], out_dir="results/atlas/dpo_gap/lr_fine",
    ),
    # b: twice the steps for ranks 1 and 4 and FullFT (and the 60-step rows beside them).
    "dpo_gap_steps": _dpo_study(
        [*_BASELINE.values(), _long(_BASELINE["lora_r1"], LONG_LORA_DPO_LRS), _long(_BASELINE["full"], LONG_FULL_DPO_LRS),
         _long(_BASELINE["lora_r4"], LONG_LORA_DPO_LRS)],
        ["lora_r1_steps120"], out_dir="results/atlas/dpo_gap/steps",
        axis=("optimizer steps (batch 32)", {**{n: (n, 60) for n in ("full", "lora_r1", "lora_r4")},
                                             **{f"{n}_steps120": (n, 120) for n in ("full", "lora_r1", "lora_r4")}}),
    ),
    # c: batch size at a fixed number of examples seen.
    "dpo_gap_batch": _dpo_study(
        [*(c for n, c in _BASELINE.items() if n in BATCH_DPO_LRS),
         *(_at_batch(_BASELINE[n], b, BATCH_DPO_LRS[n][b]) for n in BATCH_DPO_LRS for b in BATCH_SIZES if b != 32)],
        ["lora_r1_bs128"], out_dir="results/atlas/dpo_gap/batch",
        axis=("batch size (1920 examples seen)", {f"{n}_bs{b}" if b != 32 else n: (n, b) for n in BATCH_DPO_LRS for b in BATCH_SIZES}),
    ),
    # PPO on the arithmetic task with the verifiable reward (recipes/ppo_lora.yaml): policy and
    # critic are adapters of the given rank (full: full copies); the metric is sampled accuracy.
    "ppo": Study(
        recipe="recipes/ppo_lora.yaml",
        overrides=[
            "optimizer.lr_rule=false",  # every LR here is the LR actually used (policy and value)
            "train.steps=30",  # the budget the study was measured at (the recipe now runs 50)
            "optimizer.schedule=constant",  # as the study was measured (the recipe now decays its LR)
            "train.eval_every=10", "eval.num_prompts=256", "tracking.wandb=false", "train.threads=1",
        ],
        configurations=_full_and_lora(FULL_PPO_LRS, LORA_PPO_LRS),
        metric="accuracy_sampled",
        metric_label="accuracy of sampled answers (held-out prompts, temperature 1)",
        secondary=["accuracy_greedy", "mean_response_length"],
        smoke_overrides=["model=scratch:test", "train.steps=2", "train.eval_every=0", "ppo.rollout_batch_size=8",
                         "ppo.minibatch_size=4", "rollout.max_new_tokens=6", "data.num_train=64", "eval.num_prompts=8",
                         "eval.max_new_tokens=4"],
    ),
    "grpo": _GRPO,  # GRPO's parity study (above)
    # Reward model on the built-in preference task (recipes/rm_lora.yaml, Bradley-Terry, the
    # last_token+logprob head): the metric is pairwise accuracy on held-out pairs.
    "rm": Study(
        recipe="recipes/rm_lora.yaml",
        overrides=[
            "optimizer.lr_rule=false",  # every LR here is the LR actually used (adapter or copy, and head)
            "reward.head_lr=null",  # the head shares the run's LR; --override reward.head_lr=X pins it
            "train.eval_every=100", "tracking.wandb=false", "train.threads=1",
        ],
        configurations=_full_and_lora(FULL_RM_LRS, LORA_RM_LRS),
        metric="pairs/accuracy",
        metric_label="pairwise accuracy on held-out preference pairs",
        secondary=["pairs/margin", "pairs/loss"],
        smoke_overrides=["model=scratch:test", "train.steps=3", "train.eval_every=0", "train.batch_size=8",
                         "data.num_train=64", "data.num_eval=16"],
    ),
    # ---- the replication atlas (issue 13); SFT runs in runs/atlas_sft, GRPO's in runs/parity_grpo.
    # Finding 1: LoRA matches FullFT on small-data SFT.
    "sft": _sft_study(list(_SFT.values()), ["lora_r1"], out_dir="results/atlas/sft"),
    # Finding 3: batch size 8 / 32 / 128 at a fixed number of examples seen; batch 32 is the sft study's runs.
    "sft_batch": _sft_study(
        [*(c for n, c in _SFT.items() if n in BATCH_SFT_LRS),
         *(_at_batch(_SFT[n], b, BATCH_SFT_LRS[n][b], examples=SFT_EXAMPLES, warmup_at_32=10, evals=3, logs=15)
           for n in BATCH_SFT_LRS for b in SFT_BATCH_SIZES if b != 32)],
        ["lora_r1_bs128"], out_dir="results/atlas/sft_batch",
        axis=(f"batch size ({SFT_EXAMPLES} examples seen)",
              {f"{n}_bs{b}" if b != 32 else n: (n, b) for n in BATCH_SFT_LRS for b in SFT_BATCH_SIZES}),
    ),
    # Finding 4 on SFT: attention-only at matched parameters, MLP-only, all (the sft study's rows).
    "sft_targets": _sft_study(
        [_SFT["full"], _SFT["lora_r8"], _targets("attention", ATTENTION_MATCHED_RANK, TARGETS_SFT_LRS),
         _targets("mlp", 8, TARGETS_SFT_LRS)],
        ["lora_attention_r23"], out_dir="results/atlas/targets_sft",
    ),
    # Finding 4 on RL (GRPO): the same three placements; full and lora_r8 are the grpo study's runs.
    "grpo_targets": dataclasses.replace(  # the grpo study's setup and run folder, other configurations
        _GRPO, configurations=[*(c for c in _GRPO.configurations if c.name in ("full", "lora_r8")),
                               _targets("attention", ATTENTION_MATCHED_RANK, TARGETS_GRPO_LRS), _targets("mlp", 8, TARGETS_GRPO_LRS)],
        smoke_configurations=["lora_attention_r23"], smoke_lr_indices=(0,),
        runs_dir="runs/parity_grpo", out_dir="results/atlas/targets_grpo",
    ),
    # Finding 6, the LR rule's premise: with alpha / r the best LoRA LR stays put across ranks; with
    # alpha / sqrt(r) (lora.rslora) the update grows with sqrt(r), so it should fall as r grows.
    # The 1/r rows are the sft study's runs. At rank 1 both scalings are alpha / 1, the same run, so
    # rank 1 is not run again: the lora_r1 row stands for both.
    "sft_rslora": _sft_study(
        [*(_SFT[f"lora_r{r}"] for r in SFT_RANKS), *(_rslora(r, LORA_SFT_LRS) for r in SFT_RANKS if r > 1)],
        ["lora_rs_r4"], out_dir="results/atlas/sft_rslora", axis_best_lr=True,
        axis=("LoRA rank", {**{f"lora_r{r}": ("alpha / r", r) for r in SFT_RANKS},
                            **{f"lora_rs_r{r}": ("alpha / sqrt(r) (rslora)", r) for r in SFT_RANKS if r > 1}}),
    ),
}

# Finding 2, capacity (memorising N random facts): its study and plots live in atlas_capacity.py.
import atlas_capacity  # noqa: E402  (imports this module's Study and Configuration)

# empty while atlas_capacity is the module being imported (it imported this one): it then adds its
# studies to STUDIES itself once they exist
STUDIES.update(getattr(atlas_capacity, "STUDIES", {}))


# ---- running ------------------------------------------------------------------------------------

def lr_tag(lr: float) -> str:
    """1e-03, 3e-04, ...; an LR between those keeps its second digit (1.5e-03), so no two LRs of a
    grid share a run folder."""
    tag = f"{lr:.0e}"
    return tag if float(tag) == lr else f"{lr:.1e}"


def run_name(config: Configuration, lr: float, seed: int) -> str:
    return f"{config.name}-lr{lr_tag(lr)}-s{seed}"


def launch(study: Study, config: Configuration, lr: float, seed: int, runs_dir: Path, extra: list[str],
           group: str = "parity", wandb: bool = False, tail: list[str] = ()) -> Path:
    """One run in its own process. wandb (with --wandb; offline unless logged in) groups a study's
    runs: group = the study, job_type = the configuration, name = configuration-lr-seed. `tail`:
    overrides after the configuration's own (--smoke: its few steps win over a configuration's
    steps and batch size)."""
    out = runs_dir / run_name(config, lr, seed)
    if (out / "summary.json").exists():
        return out
    if out.exists():  # an interrupted run: start it again from scratch
        import shutil

        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "align.cli", "train", study.recipe, *study.overrides, *extra, *config.overrides, *tail,
           f"optimizer.lr={lr}", f"train.seed={seed}", f"output_dir={out}",
           f"tracking.group={group}", f"tracking.job_type={config.name}", f"tracking.run_name={out.name}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    if wandb:
        cmd.append("tracking.wandb=true")
    else:
        env["WANDB_MODE"] = "disabled"
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    runs_dir.mkdir(parents=True, exist_ok=True)
    (runs_dir / f"{out.name}.log").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr[-20000:])
    status = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}, see {runs_dir / (out.name + '.log')})"
    print(f"  {out.name}: {status} in {time.time() - t0:.0f}s", flush=True)
    return out


# ---- collecting ---------------------------------------------------------------------------------

def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _curve(run_dir: Path, key: str) -> dict[int, float]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if key in row:
            out[row["step"]] = float(row[key])
    return out


def best_lr(scored: dict[float, tuple[float, float]], higher_is_better: bool = True) -> float:
    """The LR whose seed-mean metric is best (`scored`: LR -> (mean, std)): the highest mean, or the
    lowest with `higher_is_better=False`. A NaN mean (a run that diverged) is never the best, unless
    every mean is NaN (then the first LR)."""
    finite = {lr: ms for lr, ms in scored.items() if not math.isnan(ms[0])}
    if not finite:
        return next(iter(scored))
    pick = max if higher_is_better else min
    return pick(finite, key=lambda lr: finite[lr][0])


def collect(study: Study, configs: list[Configuration], seeds: list[int], runs_dir: Path) -> list[dict]:
    rows = []
    for config in configs:
        per_lr = {}
        for lr in config.lrs:
            summaries = []
            for seed in seeds:
                path = runs_dir / run_name(config, lr, seed) / "summary.json"
                if path.exists():
                    summaries.append((seed, json.loads(path.read_text())))
            per_lr[lr] = summaries
        scored = {lr: _mean_std([s["eval_after"][study.metric] for _, s in ss]) for lr, ss in per_lr.items() if ss}
        if not scored:
            continue
        best_at = best_lr(scored, study.higher_is_better)
        best = per_lr[best_at]
        edge = len(config.lrs) > 1 and best_at in (config.lrs[0], config.lrs[-1])
        row = {
            "configuration": config.name,
            "best_lr": best_at,
            "edge": "EDGE" if edge else "",
            "metric_mean": scored[best_at][0],
            "metric_std": scored[best_at][1],
            "metric_before": statistics.fmean(s["eval_before"].get(study.metric, math.nan) for _, s in best),
            "seeds": len(best),
            "peak_memory_mb": max(s["peak_memory_bytes"] for _, s in best) / 2**20,
            "trainable_parameters": best[0][1]["trainable_parameters"],
            "wall_time_s": statistics.fmean(s["wall_time_s"] for _, s in best),
            "by_lr": {lr: scored[lr] for lr in config.lrs if lr in scored},
            "curves": [_curve(runs_dir / run_name(config, best_at, seed), f"eval/{study.metric}") for seed, _ in best],
        }
        for key in study.secondary:
            row[f"{key}_mean"], row[f"{key}_std"] = _mean_std([s["eval_after"].get(key, math.nan) for _, s in best])
        rows.append(row)
    return rows


# ---- reporting ----------------------------------------------------------------------------------

def write_tables(study: Study, rows: list[dict], out_dir: Path, title: str, notes: list[str] = ()) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = ["configuration", "best_lr", "edge", "metric_mean", "metric_std", "metric_before"]
    for key in study.secondary:
        columns += [f"{key}_mean", f"{key}_std"]
    columns += ["seeds", "peak_memory_mb", "trainable_parameters", "wall_time_s"]
    with open(out_dir / "table.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns + ["metric_by_lr"])
        for row in rows:
            by_lr = "; ".join(f"{lr:g}:{m:.4f}+-{s:.4f}" for lr, (m, s) in row["by_lr"].items())
            writer.writerow([row[c] for c in columns] + [by_lr])
    full = next((r for r in rows if r["configuration"] == "full"), None)
    header = ["configuration", "best LR", f"{study.metric} (mean ± std)", "vs full", "before"]
    header += [f"{k} (mean ± std)" for k in study.secondary]
    header += ["seeds", "peak memory (MB)", "trainable params", "all LRs (seed mean)"]
    better, d = ("the highest" if study.higher_is_better else "the lowest"), study.digits
    lines = [f"# {title}", "", f"Metric: {study.metric_label}, after training, at each configuration's best LR "
             f"({better} seed mean of its grid).",
             *[f"{n}  " for n in notes], "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        diff = row["metric_mean"] - full["metric_mean"] if full else math.nan
        cells = [row["configuration"], f"{row['best_lr']:g}" + (" **EDGE**" if row["edge"] else ""),
                 f"{row['metric_mean']:.{d}f} ± {row['metric_std']:.{d}f}", f"{diff:+.{d}f}" if full else "",
                 f"{row['metric_before']:.{d}f}"]
        cells += [f"{row[k + '_mean']:.3f} ± {row[k + '_std']:.3f}" for k in study.secondary]
        cells += [str(row["seeds"]), f"{row['peak_memory_mb']:.0f}", f"{row['trainable_parameters']:,}",
                  ", ".join(f"{lr:g}: {m:.{d}f}" for lr, (m, _) in row["by_lr"].items())]
        lines.append("| " + " | ".join(cells) + " |")
    edges = [r["configuration"] for r in rows if r["edge"]]
    if edges:
        lines += ["", f"**WARNING: the best LR of {', '.join(edges)} is at the edge of its grid; extend the grid.**"]
    text = "\n".join(lines) + "\n"
    (out_dir / "table.md").write_text(text)
    return text


def write_study_json(study: Study, rows: list[dict], out_dir: Path, title: str, notes: list[str], runs_dir: Path) -> None:
    """study.json: every number `align report STUDY_DIR` draws (per configuration: the metric by LR,
    the curves of each seed at the best LR, the table's columns) and the verdict."""
    from align.report import finite_json, verdict

    def clean(row: dict) -> dict:
        out = {k: v for k, v in row.items() if k not in ("by_lr", "curves")}
        out["by_lr"] = {f"{lr:g}": list(ms) for lr, ms in row["by_lr"].items()}
        out["curves"] = [{str(step): value for step, value in curve.items()} for curve in row["curves"]]
        return out

    data = {"name": out_dir.name, "title": title, "metric": study.metric, "metric_label": study.metric_label,
            "higher_is_better": study.higher_is_better, "secondary": study.secondary, "recipe": study.recipe, "runs_dir": str(runs_dir), "notes": list(notes),
            "rows": [clean(r) for r in rows]}
    data["verdict"] = verdict(data["rows"], higher_is_better=study.higher_is_better)
    (out_dir / "study.json").write_text(json.dumps(finite_json(data), indent=1) + "\n")


def _metric_axis_label(study: Study) -> str:
    return study.metric + ("" if study.higher_is_better else " (lower is better)")


def write_plots(study: Study, rows: list[dict], out_dir: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for row in rows:
        lrs = list(row["by_lr"])
        means = [row["by_lr"][lr][0] for lr in lrs]
        stds = [row["by_lr"][lr][1] for lr in lrs]
        ax.errorbar(lrs, means, yerr=stds, marker="o", capsize=3, label=row["configuration"])
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel(_metric_axis_label(study))
    ax.set_title(f"{title}: final {study.metric} vs LR", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "metric_vs_lr.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for row in rows:
        steps = sorted(set().union(*[c.keys() for c in row["curves"]]))
        if not steps:
            continue
        values = [[c[s] for c in row["curves"] if s in c] for s in steps]
        means = [statistics.fmean(v) for v in values]
        stds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
        ax.plot(steps, means, marker="o", label=f"{row['configuration']} (lr {row['best_lr']:g})")
        ax.fill_between(steps, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)], alpha=0.15)
    ax.set_xlabel("step")
    ax.set_ylabel(_metric_axis_label(study))
    ax.set_title(f"{title}: learning curves at each best LR", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "curves.png", dpi=110)
    plt.close(fig)


def write_axis(study: Study, rows: list[dict], out_dir: Path, title: str) -> str:
    """The study's `axis`: each configuration's best-LR metric (seed mean ± std) against a number
    (rank, steps, batch size), one curve per series: metric_vs_axis.png and table_axis.md/.csv."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label, points = study.axis
    by_name = {r["configuration"]: r for r in rows}
    series: dict[str, list[tuple[float, dict]]] = {}
    for name, (line, x) in points.items():
        if name in by_name:
            series.setdefault(line, []).append((x, by_name[name]))
    xs = sorted({x for pts in series.values() for x, _ in pts})
    lines = [f"# {title}: {study.metric} at each configuration's best LR, by {label}", "",
             "Seed mean ± std (best LR).", "", "| series | " + " | ".join(f"{x:g}" for x in xs) + " |",
             "|---|" + "---|" * len(xs)]
    with open(out_dir / "table_axis.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["series", "x", "configuration", "best_lr", "metric_mean", "metric_std", "seeds"])
        for line, pts in series.items():
            d = study.digits
            cells = {x: f"{r['metric_mean']:.{d}f} ± {r['metric_std']:.{d}f} (LR {r['best_lr']:g}{', EDGE' if r['edge'] else ''})" for x, r in pts}
            lines.append(f"| {line} | " + " | ".join(cells.get(x, "") for x in xs) + " |")
            for x, r in sorted(pts, key=lambda p: p[0]):
                writer.writerow([line, x, r["configuration"], r["best_lr"], r["metric_mean"], r["metric_std"], r["seeds"]])
    text = "\n".join(lines) + "\n"
    (out_dir / "table_axis.md").write_text(text)

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for line, pts in series.items():
        pts = sorted(pts, key=lambda p: p[0])
        ax.errorbar([x for x, _ in pts], [r["metric_mean"] for _, r in pts], yerr=[r["metric_std"] for _, r in pts],
                    marker="o", capsize=3, label=line)
    full = by_name.get("full")
    if full is not None and "full" not in points:  # FullFT (batch 32, 60 steps) as the line to reach
        ax.axhline(full["metric_mean"], color="black", ls="--", lw=1, label=f"full (lr {full['best_lr']:g}), ± std")
        ax.axhspan(full["metric_mean"] - full["metric_std"], full["metric_mean"] + full["metric_std"], color="black", alpha=0.07)
    if len(xs) > 1 and xs[-1] / xs[0] >= 4:
        ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [f"{x:g}" for x in xs])
    ax.set_xlabel(label)
    ax.set_ylabel(f"{_metric_axis_label(study)}, best LR each")
    ax.set_title(f"{title}: {study.metric} vs {label}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(out_dir / "metric_vs_axis.png", dpi=110)
    plt.close(fig)

    if study.axis_best_lr:  # where each configuration's best LR lies along the axis (EDGE: hollow marker)
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for line, pts in series.items():
            pts = sorted(pts, key=lambda p: p[0])
            drawn = ax.plot([x for x, _ in pts], [r["best_lr"] for _, r in pts], marker="o", label=line)[0]
            edge = [(x, r["best_lr"]) for x, r in pts if r["edge"]]
            if edge:
                ax.plot(*zip(*edge), ls="none", marker="o", ms=11, mfc="none", color=drawn.get_color())
        if len(xs) > 1 and xs[-1] / xs[0] >= 4:
            ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.set_xlabel(label)
        ax.set_ylabel("best learning rate of the grid")
        ax.set_title(f"{title}: best LR vs {label} (ringed: at the grid's edge)", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        fig.savefig(out_dir / "best_lr_vs_axis.png", dpi=110)
        plt.close(fig)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("method", choices=sorted(STUDIES))
    parser.add_argument("--smoke", action="store_true", help="1 seed, 2 LRs, 2 configurations, a few steps")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--runs-dir", default=None, help="default: runs/parity_<method>[_smoke]")
    parser.add_argument("--out", default=None, help="default: results/parity_<method>[_smoke]")
    parser.add_argument("--model", default=None, help="override the recipe's model (e.g. a pinned copy of a built-in base)")
    parser.add_argument("--report-only", action="store_true", help="only rebuild the table and plots from finished runs")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="extra recipe override for every run, e.g. train.steps=60 (a longer budget)")
    parser.add_argument("--wandb", action="store_true",
                        help="log every run to wandb (offline unless logged in), grouped by study and configuration")
    parser.add_argument("--best-from", default=None, metavar="TABLE.csv",
                        help="run each configuration only at its best LR from an earlier study's table.csv")
    args = parser.parse_args(argv)

    study = STUDIES[args.method]
    suffix = "_smoke" if args.smoke else ""
    runs_dir = Path(args.runs_dir or REPO / ((study.runs_dir + suffix) if study.runs_dir else f"runs/parity_{args.method}{suffix}")).resolve()
    out_dir = Path(args.out or REPO / ((study.out_dir + suffix) if study.out_dir else f"results/parity_{args.method}{suffix}")).resolve()
    configs, seeds, extra, tail = study.configurations, study.seeds, [], []
    if args.smoke:
        keep = set(study.smoke_configurations)
        configs = [Configuration(c.name, c.overrides, [c.lrs[i] for i in study.smoke_lr_indices]) for c in configs if c.name in keep]
        seeds, extra, tail = seeds[:1], list(study.smoke_overrides), list(study.smoke_overrides)
    if args.model:
        extra.append(f"model={args.model}")
    extra += args.override
    if args.best_from:
        with open(args.best_from) as f:
            best = {row["configuration"]: float(row["best_lr"]) for row in csv.DictReader(f)}
        configs = [Configuration(c.name, c.overrides, [best[c.name]]) for c in configs if c.name in best]

    jobs = [(c, lr, s) for c in configs for lr in c.lrs for s in seeds]
    if not args.report_only:
        print(f"parity {args.method}: {len(jobs)} runs, {args.jobs} at a time -> {runs_dir}", flush=True)
        t0 = time.time()
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            list(pool.map(lambda job: launch(study, *job, runs_dir, extra, out_dir.name, args.wandb, tail), jobs))
        print(f"all runs done in {(time.time() - t0) / 60:.1f} min", flush=True)

    rows = collect(study, configs, seeds, runs_dir)
    missing = len(jobs) - sum(1 for c, lr, s in jobs if (runs_dir / run_name(c, lr, s) / "summary.json").exists())
    title = f"parity {args.method}" + (" (smoke)" if args.smoke else "")
    notes = [f"Recipe: `{study.recipe}` with `{' '.join(study.overrides + extra)}`; seeds {seeds}."
             + (f" Each configuration at its best LR from `{args.best_from}`." if args.best_from else ""),
             "Std is over seeds; 'vs full' is the difference of seed means; 'before' is the metric before training."]
    text = write_tables(study, rows, out_dir, title, notes)
    write_study_json(study, rows, out_dir, title, notes, runs_dir)
    write_plots(study, rows, out_dir, title)
    if study.axis:
        text += "\n" + write_axis(study, rows, out_dir, title)
    if study.report:
        text += "\n" + study.report(runs_dir, out_dir, Study(**{**vars(study), "configurations": configs}), seeds, notes=notes)
    print(text)
    for row in rows:
        if row["edge"]:
            print(f"WARNING: {row['configuration']}: best LR {row['best_lr']:g} is at the EDGE of its grid "
                  f"{row['by_lr'] and list(row['by_lr'])}; extend the grid", file=sys.stderr)
    if missing:
        print(f"WARNING: {missing} of {len(jobs)} runs failed or are missing", file=sys.stderr)
    print(f"wrote {out_dir / 'table.md'}, table.csv, study.json, metric_vs_lr.png, curves.png")
    print(f"report: align report {out_dir} -o {out_dir / 'report.html'}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
