"""On-policy experience: sample from the policy role, score the responses, and compute the log-probs
of the policy and the reference. What every on-policy method (PPO today, the GRPO family next)
does before its own advantages and loss.

What it does:
- `RolloutRewards.from_recipe(cfg, base)`: the reward the policy is trained on (`rollout.reward`,
  parsed once by `reward_models.base.parse_reward_spec`; a `learned` term adds the frozen reward
  role from `rollout.reward_model`) and the gold reward logged beside it (`rollout.gold_reward`);
- `sample_and_score(base, rows, rewards, cfg, generator, eos_ids)` -> `Samples`: batched sampling
  from the policy role (eval mode, no grad, KV cache, left padding; `align.rollout.generate`, or
  with `engine=` a vLLM engine that samples through the synced policy adapter, whose own
  log-probs give `mismatch_stats`: `align.vllm_engine`); scores of the texts (a response that never reaches EOS gets `rollout.no_stop_penalty`, the
  "N implementation details of RLHF" recipe); then, in chunks of `rollout.forward_batch_size` rows
  and without gradients, the old log-probs and entropies of the policy and the log-probs of the
  reference (skipped with `reference=False`), all at the sampling temperature;
- `response_logprobs(base, role, ...)`: log-probs (B, T) of the response tokens under a role,
  from the one log-prob path (`SharedBase.logprobs`); used for the rollout and for the update;
- `evaluate_prompts(...)`: greedy and sampled reward on held-out prompts (prompt files, where no
  built-in task checks answers);
- `gather_rollout(accelerator, samples, pad_id, ...)`: the global rollout batch on every process
  (PPO whitens and shuffles over it, so its result does not depend on the number of processes);
- `eos_token_ids`, `sampling_generator`, `completion_generators`: the stop tokens, and generators
  seeded by (seed, iteration, rank, purpose) or per completion by its global index, so a resumed
  run samples exactly what an unbroken one did (and, per completion, whatever the process count).

Tensor names: `_BL` = prompt + response columns (L = P + T), `_BT` = response tokens only.
Token t of the response sits at column P + t and is predicted by the hidden state at P + t - 1.

What it leaves out: advantages and losses (each method's own: `align.trainers.ppo`), optimisation,
distributed reductions (statistics are local to a process; the trainer averages them).

Run its tests: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_ppo.py tests/test_logprobs.py`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from align.config_checks import reward_spec
from align.data.prompts import render_prompts
from align.losses.policy import masked_mean
from align.memory import memory_phase
from align.preflight import adapter_load_errors
from align.rollout import resolve_sampler
from reward_models.base import build_reward
from reward_models.learned import load_learned_reward


@dataclass
class RolloutRewards:
    """The reward the policy trains on, and an optional gold reward logged beside it."""

    train: Any
    gold: Any = None

    @classmethod
    def from_recipe(cls, cfg, base) -> "RolloutRewards":
        spec = reward_spec(cfg)
        if spec.uses_learned:
            with adapter_load_errors("rollout.reward_model", cfg.rollout.reward_model):
                load_learned_reward(cfg.rollout.reward_model, base)  # adds the frozen reward role
        gold = build_reward(cfg.rollout.gold_reward) if cfg.rollout.gold_reward else None
        return cls(spec.build(base), gold)


def eos_token_ids(model, tokenizer) -> list[int]:
    """The tokenizer's EOS and every EOS id of the model's generation config (chat models stop at
    their end-of-turn token too)."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    return sorted(i for i in ids if i is not None)


def sampling_generator(seed: int, step: int, rank: int, purpose: int = 0) -> torch.Generator:
    """A CPU generator that depends only on (seed, iteration, rank, purpose): resumable."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 1_009 + rank) * 7 + purpose)


def completion_generators(seed: int, step: int, indices: list[int]) -> list[torch.Generator]:
    """One generator per completion, seeded by (seed, iteration, the completion's GLOBAL index in
    the iteration's batch): what a completion samples depends neither on the process that samples
    it nor on the rows beside it, so 2 processes sample exactly what 1 process samples."""
    return [torch.Generator().manual_seed(((seed * 1_000_003 + step) * 1_000_033 + i) * 7 + 2) for i in indices]


def response_logprobs(base, role: str, input_ids_BL: torch.Tensor, attention_mask_BL: torch.Tensor,
                      response_mask_BT: torch.Tensor, temperature: float, with_entropy: bool = False):
    """Log-probs (B, T) of the response tokens under `role` at `temperature` (0 off the response),
    and their entropies (B, T) when asked (else None)."""
    P = input_ids_BL.shape[1] - response_mask_BT.shape[1]
    target_mask_BL = torch.cat([torch.zeros_like(input_ids_BL[:, :P]), response_mask_BT.to(input_ids_BL.dtype)], dim=1)
    logps_BL, entropy_BL = base.logprobs(role, input_ids_BL, attention_mask_BL, target_mask_BL, temperature, with_entropy)
    return logps_BL[:, P:], entropy_BL[:, P:] if entropy_BL is not None else None


@dataclass
class Samples:
    """One scored rollout batch of this process."""

    input_ids_BL: torch.Tensor
    attention_mask_BL: torch.Tensor
    response_mask_BT: torch.Tensor
    old_logps_BT: torch.Tensor | None  # policy log-probs at sampling time (0 off the response; None when skipped)
    ref_logps_BT: torch.Tensor | None  # reference log-probs (None when not asked for)
    raw_scores_B: torch.Tensor  # what the reward gave
    scores_B: torch.Tensor  # with the no-stop penalty applied: what the method optimises
    stopped_B: torch.Tensor  # True where the response ended with EOS
    texts: list[str]
    stats: dict[str, float]
    gold_scores: list[float] | None = None  # the gold reward of each response, where one is configured
    sampler_logps_BT: torch.Tensor | None = None  # the inference engine's log-probs of the sampled tokens (vllm), else None

    def __len__(self) -> int:
        return self.input_ids_BL.shape[0]

    @property
    def prompt_width(self) -> int:
        return self.input_ids_BL.shape[1] - self.response_mask_BT.shape[1]


def gather_rollout(accelerator, samples: Samples, pad_id: int, **extra_BT: torch.Tensor) -> dict[str, torch.Tensor]:
    """The global rollout batch on every process: each process's rows in process order (with
    contiguous shares, the batch's own order), prompts re-padded on the left to the widest and
    responses on the right to the longest (padding is masked out, so nothing it touches counts).
    Fields: input_ids_BL, attention_mask_BL, response_mask_BT, old_logps_BT, ref_logps_BT,
    scores_B and every `extra_BT` (B, T) response tensor. One process: its own tensors, untouched."""
    fields = {"input_ids_BL": samples.input_ids_BL, "attention_mask_BL": samples.attention_mask_BL,
              "response_mask_BT": samples.response_mask_BT, "old_logps_BT": samples.old_logps_BT,
              "ref_logps_BT": samples.ref_logps_BT, "scores_B": samples.scores_B, **extra_BT}
    if accelerator is None or accelerator.num_processes == 1:
        return fields
    P, T = samples.prompt_width, samples.response_mask_BT.shape[1]
    widest_P, longest_T = (int(v) for v in accelerator.gather(torch.tensor([[P, T]], device=samples.input_ids_BL.device)).max(0).values)

    def padded(name: str, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.dim() == 1:
            return tensor
        value = pad_id if name == "input_ids_BL" else 0
        B = tensor.shape[0]
        if name.endswith("_BL"):  # prompt then response
            left = tensor.new_full((B, widest_P - P), value)
            right = tensor.new_full((B, longest_T - T), value)
            return torch.cat([left, tensor, right], dim=1)
        return torch.cat([tensor, tensor.new_full((B, longest_T - T), value)], dim=1)

    return {name: None if t is None else accelerator.gather(padded(name, t).contiguous()) for name, t in fields.items()}


def _mean(values) -> float:
    values = [float(v) for v in values]
    return sum(values) / max(len(values), 1)


@torch.no_grad()
def sample_and_score(base, rows: list[dict], rewards: RolloutRewards, cfg, generator: torch.Generator | list[torch.Generator],
                     eos_ids: list[int], reference: bool = True, old_logprobs: bool = True, engine=None) -> Samples:
    """Sample one response per row from the policy, score it, and compute old (and reference)
    log-probs (module docstring). `generator`: one for the batch, or one per row (each row's
    response then depends only on its own generator, not on the batch it shares).
    `old_logprobs=False` skips the policy's no-grad forward, for a method that updates on each
    completion exactly once right after sampling (the old log-probs are then the current ones,
    detached, as TRL does); `reference=False` skips the reference's. `engine`: a
    `align.vllm_engine.VLLMEngine` that samples instead of the hf loop, after syncing the policy
    adapter when it changed (None: the hf loop)."""
    r = cfg.rollout
    prompts, answers = [row["prompt"] for row in rows], [row["answer"] for row in rows]
    rendered = render_prompts(prompts, base.tokenizer, cfg.data.chat_template)

    # ---- rollout: batched sampling from the policy (eval mode, no grad, KV cache, left padding)
    t0 = time.time()
    sampling = dict(max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p,
                    batch_size=max(len(rendered), 1), add_special_tokens=not cfg.data.chat_template,
                    **({"row_generators": generator} if isinstance(generator, list) else {"generator": generator}),
                    eos_token_ids=eos_ids, progress=False)
    with memory_phase("rollout"):
        if engine is None:
            rollout = base.generate("policy", rendered, sampler=resolve_sampler(r.sampler, base.device), **sampling)
        else:
            engine.sync(base)  # the policy adapter, when it changed since the last sync
            rollout = engine.generate(None, base.tokenizer, rendered, **sampling)
    t_rollout = time.time() - t0

    # ---- scoring: the training reward (and the gold reward beside it), from the texts
    t0 = time.time()
    lengths = rollout.response_mask_BT.sum(-1).tolist()
    metadata = {"answers": answers, "response_lengths": lengths}
    with memory_phase("scoring"):
        scored = rewards.train(prompts, rollout.texts, **metadata)
    raw_score_B = torch.tensor(scored.scores, dtype=torch.float32, device=base.device)
    stopped_B = rollout.stopped_B.to(base.device)
    score_B = raw_score_B
    if r.no_stop_penalty is not None:
        # N implementation details: a response that never reaches EOS gets a fixed low score.
        score_B = torch.where(stopped_B, raw_score_B, torch.full_like(raw_score_B, r.no_stop_penalty))
    gold = rewards.gold(prompts, rollout.texts, **metadata).scores if rewards.gold is not None else None
    t_scoring = time.time() - t0

    # ---- old log-probs (and entropies) of the policy, log-probs of the reference, in chunks
    t0 = time.time()
    input_ids_BL, attention_mask_BL = (x.to(base.device) for x in rollout.sequences())
    response_mask_BT = rollout.response_mask_BT.to(base.device)
    logps, entropies, ref_logps = [], [], []
    for start in range(0, len(rows), r.forward_batch_size):
        part = slice(start, start + r.forward_batch_size)
        chunk = (input_ids_BL[part], attention_mask_BL[part], response_mask_BT[part])
        if old_logprobs:
            with memory_phase("old_logprobs"):
                logps_BT, entropy_BT = response_logprobs(base, "policy", *chunk, r.temperature, with_entropy=True)
            logps.append(logps_BT)
            entropies.append(entropy_BT)
        if reference:
            with memory_phase("reference_logprobs"):
                ref_logps.append(response_logprobs(base, "reference", *chunk, r.temperature)[0])
    t_forward = time.time() - t0

    stats = {
        "reward/score": float(raw_score_B.mean()),
        "reward/score_with_penalty": float(score_B.mean()),
        "response_length": _mean(lengths),
        "no_stop_fraction": float((~rollout.stopped_B).float().mean()),
        "time/rollout": t_rollout,
        "time/scoring": t_scoring,
        "time/forward": t_forward,
        "response_tokens": float(sum(lengths)),
    }
    if old_logprobs:
        stats["entropy"] = float(masked_mean(torch.cat(entropies), response_mask_BT.bool()))
    sampler_logps_BT = rollout.sampler_logps_BT.to(base.device) if rollout.sampler_logps_BT is not None else None
    if engine is not None:
        stats["rollout/sync_bytes"] = float(engine.last_sync_bytes)  # what one adapter sync moves
        stats["rollout/syncs"] = float(engine.syncs)  # adapter syncs so far
        if old_logprobs and sampler_logps_BT is not None:
            stats.update(mismatch_stats(torch.cat(logps), sampler_logps_BT, response_mask_BT))
    if gold is not None:
        stats["reward/gold"] = _mean(gold)
    for key, per_row in scored.info.items():  # a weighted sum's terms, e.g. "learned/score"
        if key.endswith("/score"):
            stats[f"reward/{key.removesuffix('/score')}"] = _mean(per_row)
    return Samples(input_ids_BL, attention_mask_BL, response_mask_BT, torch.cat(logps) if old_logprobs else None,
                   torch.cat(ref_logps) if reference else None, raw_score_B, score_B, stopped_B, rollout.texts, stats,
                   None if gold is None else [float(g) for g in gold], sampler_logps_BT)


def mismatch_stats(trainer_logps_BT: torch.Tensor, sampler_logps_BT: torch.Tensor, mask_BT: torch.Tensor) -> dict[str, float]:
    """The training-inference mismatch of one rollout: mean and max over response tokens of
    |log p_trainer - log p_sampler| of the sampled token (`rollout/logprob_mismatch_mean|max`)."""
    delta_BT = (trainer_logps_BT.detach().float() - sampler_logps_BT.float()).abs()
    keep_BT = mask_BT.bool()
    if not keep_BT.any():
        return {"rollout/logprob_mismatch_mean": 0.0, "rollout/logprob_mismatch_max": 0.0}
    return {"rollout/logprob_mismatch_mean": float(delta_BT[keep_BT].mean()),
            "rollout/logprob_mismatch_max": float(delta_BT[keep_BT].max())}


@torch.no_grad()
def evaluate_prompts(base, rows: list[dict], reward_fn, cfg, eos_ids: list[int], samples: list | None = None,
                     engine=None) -> dict[str, float]:
    """Mean training reward of greedy and sampled (temperature 1) responses to held-out prompts:
    the evaluation of prompt files, where no built-in task can check the answers. `samples`, when
    given, receives the sampled completions (prompt, response, reward, gold None, length, stopped).
    `engine`: sample with it (`sample_and_score`) instead of the hf loop."""
    rows = rows[: cfg.eval.num_prompts]
    prompts, answers = [r["prompt"] for r in rows], [r["answer"] for r in rows]
    rendered = render_prompts(prompts, base.tokenizer, cfg.data.chat_template)
    out: dict[str, float] = {}
    if engine is not None:
        engine.sync(base)
    for kind, sample in (("greedy", False), ("sampled", True)):
        sampling = dict(max_new_tokens=cfg.eval.max_new_tokens, do_sample=sample, temperature=1.0,
                        batch_size=cfg.rollout.forward_batch_size, seed=cfg.train.seed,
                        add_special_tokens=not cfg.data.chat_template, eos_token_ids=eos_ids, progress=False)
        rollout = (base.generate("policy", rendered, **sampling) if engine is None
                   else engine.generate(None, base.tokenizer, rendered, **sampling))
        scores = reward_fn(prompts, rollout.texts, answers=answers, response_lengths=rollout.response_lengths_B.tolist()).scores
        out[f"reward_{kind}"] = _mean(scores)
        if sample:
            if samples is not None:
                for i, prompt in enumerate(prompts):
                    samples.append({"prompt": prompt, "response": rollout.texts[i], "reward": float(scores[i]), "gold": None,
                                    "length": int(rollout.response_lengths_B[i]), "stopped": bool(rollout.stopped_B[i])})
            out["mean_response_length"] = float(rollout.response_lengths_B.float().mean())
            out["no_stop_fraction"] = float((~rollout.stopped_B).float().mean())
    return out
