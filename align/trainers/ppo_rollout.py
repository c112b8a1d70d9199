"""The experience side of PPO: prompts, reward specs, rollouts scored into per-token advantages, and
the minibatch loss. `align.trainers.ppo` is the loop that calls these.

What it does:
- `load_prompt_rows(cfg, split, skipped)`: PPO prompts `{"prompt", "answer"}` from the built-in task, a
  local JSON/JSONL/Parquet file (`align.data.loading.read_rows`) or a hub dataset (with
  `ppo.dataset_config`), with `ppo.prompt_field` / `ppo.answer_field` naming the columns; an
  answer may be an integer or GSM8K text ending in `#### 42`. The answer column is needed only
  when a configured reward reads answers (`answer_readers(cfg)`: `ppo.reward` or
  `ppo.gold_reward` with `needs_answer`, e.g. arithmetic_correctness), and then every answer must
  be an integer (those rewards compare integers): text such as "seven", 3.5, NaN or 1e400 is a
  DataError naming file, line and field when the file is loaded, not a crash mid-run; otherwise a
  row without one gets answer None, which rollout, scoring and evaluation pass through untouched.
  A bad row (not JSON, no prompt, a bad answer) follows `data.bad_rows` as in every other loader
  (`align.data.loading.convert_rows`): a DataError naming file, line and field, or under `skip`
  left out and counted in the caller's `SkipCounter`; a file that gives no prompt is a DataError;
- `build_training_reward(spec, learned)`: the reward the policy is trained on, from the terms of
  `ppo.reward` (`reward_models.base.parse_reward_spec`): any `reward_models` function, the learned
  reward role, or a weighted sum;
- `collect_experience(...)`: one rollout batch -> an `Experience` (the "N implementation details
  of RLHF with PPO", Huang et al.): sample from the policy role; score the texts (a response that
  never stops gets `ppo.no_stop_penalty` as its score); old log-probs, reference log-probs and
  values under no_grad; per-token rewards = -kl_coef * KL + score at the last response token;
  optional reward whitening; GAE over response tokens; advantage whitening;
- `response_logits(model, ...)`: logits of the positions that predict response tokens only (the
  LM head never runs on prompt positions), divided by the sampling temperature as in TRL;
- `ppo_minibatch_loss(...)`: clipped surrogate + value_loss_coef x clipped value loss.

Tensor names: `_BL` = prompt + response columns (L = P + T), `_BT` = response tokens only.
Token t of the response sits at column P + t; it is predicted by the hidden state at P + t - 1,
and its value V_t (the state BEFORE the token is chosen) is read from the same column.

What it leaves out: optimisation, logging and checkpoints (the trainer), distributed reductions
(statistics are local to a process; the trainer averages them).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from align.data.loading import DataError, Row, SkipCounter, convert_rows, no_rows_error, read_rows
from align.logprobs import gather_logprobs, position_ids_from_mask
from align.losses.policy import (
    entropy_from_logits, gae_advantages, masked_mean, masked_whiten, per_token_rewards, ppo_policy_loss, ppo_value_loss,
)
from reward_models.base import LEARNED, parse_reward_spec


# ---------------------------------------------------------------- prompts


def parse_answer(value: Any) -> Any:
    """An integer answer from an int, an integral float or a GSM8K-style string ("... #### 1,234"
    -> 1234); other strings are returned stripped. A boolean, or a float that is not finite (JSON's
    1e400 reads as inf, NaN as nan), is a ValueError."""
    if isinstance(value, bool):
        raise ValueError("an answer must be a number or text, not a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"an answer must be a finite number, got {value!r}")
        if value.is_integer():
            return int(value)
    text = str(value)
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    text = text.strip().replace(",", "")
    return int(text) if re.fullmatch(r"-?\d+", text) else text


def _looks_local(path: str, key: str) -> bool:
    """A local file (it exists, or has a data file's suffix), not a hub dataset id. A name the
    system cannot look up (past its length limit) is neither: a DataError naming `key`."""
    try:
        return Path(path).exists() or path.endswith((".json", ".jsonl", ".parquet"))
    except OSError as err:
        raise DataError(f"{path}: could not be read ({key}: {err.strerror or type(err).__name__})") from None


def answer_readers(cfg) -> list[str]:
    """The configured rewards that read each prompt's answer (`needs_answer`), named for an
    error message: `["ppo.reward term 'arithmetic_correctness'", ...]`. A learned reward reads none."""
    from reward_models.base import _lookup, reward_needs_answer

    readers = []
    for key, spec in (("ppo.reward", cfg.ppo.reward), ("ppo.gold_reward", cfg.ppo.gold_reward)):
        for _, name in parse_reward_spec(spec) if spec else []:
            if name != LEARNED and reward_needs_answer(_lookup(name)):
                readers.append(f"{key} term {name!r}" if spec.strip() != name else f"{key} {name!r}")
    return readers


def load_prompt_rows(cfg, split: str, skipped: SkipCounter | None = None) -> list[dict]:
    """`[{"prompt", "answer"}]` of `split` ("train" or "eval"), see the module docstring. A bad row
    of a file or hub dataset follows `data.bad_rows` as in every loader (`convert_rows`): an error
    naming file, line and field, or skipped and counted in `skipped`; a file that gives no prompt
    is `no_rows_error`'s DataError."""
    data, ppo = cfg.data, cfg.ppo
    skipped = skipped if skipped is not None else SkipCounter()
    key = "data.train_file" if split == "train" else "data.eval_file"
    path = data.train_file if split == "train" else data.eval_file
    if path is None and split == "eval" and data.train_file is not None and not _looks_local(data.train_file, "data.train_file"):
        key, path = "data.train_file", data.train_file  # a hub dataset: evaluate on its held-out split
    if path is None:
        if data.task is None:
            return []
        from align.tasks import get_task

        n = data.num_train if split == "train" else data.num_eval
        return get_task(data.task).prompts(split, n, cfg.train.seed)
    before = Counter(skipped.counts)
    if _looks_local(path, key):
        source = path
        rows = read_rows(path, data.bad_rows, skipped)  # Row.where: "file: line 3" (JSONL), "file: row 3"
    else:
        import datasets

        hub_split = "train" if split == "train" else ppo.eval_split
        source = f"{path}[{hub_split}]"
        try:
            dataset = datasets.load_dataset(path, ppo.dataset_config, split=hub_split)
        except Exception as err:  # datasets raises many types; say which dataset and why, in one line
            reason = (str(err).strip().splitlines() or [""])[0]
            raise DataError(f"{source}: could not be read as a dataset ({type(err).__name__}: {reason})") from None
        rows = [Row(dict(r), source, i) for i, r in enumerate(dataset, start=1)]
    readers = answer_readers(cfg)
    out = convert_rows(rows, lambda row: _prompt_row(row, ppo.prompt_field, ppo.answer_field, readers), data.bad_rows, skipped)
    if not out:
        raise no_rows_error(source, skipped.counts - before)  # this source's skips, unreadable lines included
    return out if split == "train" else out[: data.num_eval]


def _prompt_row(row: Row, prompt_field: str, answer_field: str, readers: list[str]) -> dict:
    """One `{"prompt", "answer"}` from a file's row, or a DataError naming its line and field."""
    prompt = row.data.get(prompt_field)
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(f"{row.where}: field '{prompt_field}' must be a non-empty string", "missing_field")
    answer = row.data.get(answer_field)
    if answer is None and readers:
        raise DataError(
            f"{row.where}: field '{answer_field}' is missing, and {readers[0]} needs an answer for every prompt "
            f"(name the answer column with ppo.answer_field, or use a reward that reads none, e.g. learned)",
            "missing_field",
        )
    if answer is not None:
        try:
            parsed = parse_answer(answer)
        except ValueError as err:
            raise DataError(f"{row.where}: field '{answer_field}': {err}", "wrong_type") from None
        if readers and not isinstance(parsed, int):  # checked here, not when the reward first runs
            shown = repr(answer) if len(repr(answer)) <= 60 else repr(answer)[:57] + "..."
            raise DataError(
                f"{row.where}: field '{answer_field}' must be an integer (or text ending in '#### 42'), got {shown}; "
                f"{readers[0]} compares integer answers", "wrong_type",
            )
        answer = parsed
    return {"prompt": prompt, "answer": answer}


def render_prompts(prompts: list[str], tokenizer, chat_template: bool) -> list[str]:
    """Prompts as the model sees them: plain, or a user turn rendered with the chat template."""
    if not chat_template:
        return list(prompts)
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]


# ---------------------------------------------------------------- rewards


def build_training_reward(spec: str, learned=None):
    """The reward function the policy is trained on (see `parse_reward_spec`); `learned` is the
    learned reward function, needed when the spec names it."""
    from reward_models import WeightedSum, build_reward

    terms = [(w, learned if name == LEARNED else build_reward(name)) for w, name in parse_reward_spec(spec)]
    if len(terms) == 1 and terms[0][0] == 1.0:
        return terms[0][1]
    return WeightedSum(terms)


# ---------------------------------------------------------------- log-probs and values


def response_logits(model, input_ids_BL: torch.Tensor, attention_mask_BL: torch.Tensor, P: int, temperature: float) -> torch.Tensor:
    """Logits (B, T, V) of the positions that predict response tokens, divided by `temperature`
    (the distribution that was sampled). Only those T positions go through the LM head."""
    backbone = model.base_model  # the transformer without its LM head (also inside peft's LoRA layers)
    hidden_BLH = backbone(input_ids=input_ids_BL, attention_mask=attention_mask_BL,
                          position_ids=position_ids_from_mask(attention_mask_BL), use_cache=False).last_hidden_state
    hidden_BTH = hidden_BLH[:, P - 1 : -1]  # hidden state at P + t - 1 predicts response token t
    logits_BTV = model.get_output_embeddings()(hidden_BTH).float()
    return logits_BTV / temperature


def response_values(base, input_ids_BL: torch.Tensor, attention_mask_BL: torch.Tensor, P: int) -> torch.Tensor:
    """V_t (B, T) of the value role: the state before response token t is chosen."""
    return base.values("value", input_ids_BL, attention_mask_BL)[:, P - 1 : -1]


# ---------------------------------------------------------------- experience


@dataclass
class Experience:
    """One scored rollout batch of this process, ready for PPO epochs."""

    input_ids_BL: torch.Tensor
    attention_mask_BL: torch.Tensor
    response_mask_BT: torch.Tensor
    prompt_width: int
    old_logps_BT: torch.Tensor
    old_values_BT: torch.Tensor
    advantages_BT: torch.Tensor
    returns_BT: torch.Tensor
    scores_B: torch.Tensor  # the score each response got (no_stop_penalty applied)
    stopped_B: torch.Tensor  # True where the response ended with EOS
    stats: dict[str, float]
    texts: list[str]

    def __len__(self) -> int:
        return self.input_ids_BL.shape[0]

    def rows(self, index: list[int]) -> dict[str, torch.Tensor]:
        keys = ("input_ids_BL", "attention_mask_BL", "response_mask_BT", "old_logps_BT", "old_values_BT",
                "advantages_BT", "returns_BT")
        return {k: getattr(self, k)[index] for k in keys}


def _mean(values) -> float:
    values = [float(v) for v in values]
    return sum(values) / max(len(values), 1)


@torch.no_grad()
def collect_experience(base, rows: list[dict], reward_fn, gold_fn, kl_coef: float, cfg, generator: torch.Generator,
                       eos_token_ids: list[int]) -> Experience:
    """Sample, score and turn one batch of prompt rows into advantages (module docstring)."""
    import time

    ppo = cfg.ppo
    tokenizer = base.tokenizer
    prompts = [r["prompt"] for r in rows]
    answers = [r["answer"] for r in rows]
    rendered = render_prompts(prompts, tokenizer, ppo.chat_template)

    # ---- rollout: batched sampling from the policy (eval mode, no grad, KV cache, left padding)
    t0 = time.time()
    rollout = base.generate(
        "policy", rendered, max_new_tokens=ppo.max_new_tokens, temperature=ppo.temperature, top_p=ppo.top_p,
        batch_size=max(len(rendered), 1), generator=generator, add_special_tokens=not ppo.chat_template,
        eos_token_ids=eos_token_ids, progress=False,
    )
    t_rollout = time.time() - t0

    # ---- scoring: the training reward (and the gold reward beside it), from the texts
    t0 = time.time()
    response_mask_BT = rollout.response_mask_BT
    lengths = response_mask_BT.sum(-1).tolist()
    metadata = {"answers": answers, "response_lengths": lengths}
    scored = reward_fn(prompts, rollout.texts, **metadata)
    raw_score_B = torch.tensor(scored.scores, dtype=torch.float32, device=base.device)
    score_B = raw_score_B
    if ppo.no_stop_penalty is not None:
        # N implementation details: a response that never reaches EOS gets a fixed low score.
        score_B = torch.where(rollout.stopped_B.to(base.device), raw_score_B, torch.full_like(raw_score_B, ppo.no_stop_penalty))
    gold = gold_fn(prompts, rollout.texts, **metadata).scores if gold_fn is not None else None
    t_scoring = time.time() - t0

    # ---- old log-probs, reference log-probs and values, in chunks, without gradients
    t0 = time.time()
    input_ids_BL, attention_mask_BL = rollout.sequences()
    input_ids_BL, attention_mask_BL = input_ids_BL.to(base.device), attention_mask_BL.to(base.device)
    response_mask_BT = response_mask_BT.to(base.device)
    P = rollout.prompt_ids_BP.shape[1]
    labels_BT = input_ids_BL[:, P:]
    logps, ref_logps, values, entropies = [], [], [], []
    for start in range(0, len(rows), ppo.forward_batch_size):
        part = slice(start, start + ppo.forward_batch_size)
        ids, mask = input_ids_BL[part], attention_mask_BL[part]
        with base.role("policy") as policy_model:
            logits_BTV = response_logits(policy_model, ids, mask, P, ppo.temperature)
        logps.append(gather_logprobs(logits_BTV, labels_BT[part]))
        entropies.append(entropy_from_logits(logits_BTV))
        with base.role("reference") as reference_model:
            ref_logits_BTV = response_logits(reference_model, ids, mask, P, ppo.temperature)
        ref_logps.append(gather_logprobs(ref_logits_BTV, labels_BT[part]))
        values.append(response_values(base, ids, mask, P))
    old_logps_BT, ref_logps_BT, old_values_BT = torch.cat(logps), torch.cat(ref_logps), torch.cat(values).float()
    mask_BT = response_mask_BT.bool()
    old_logps_BT = torch.where(mask_BT, old_logps_BT, 0.0)
    old_values_BT = torch.where(mask_BT, old_values_BT, 0.0)

    # ---- rewards and advantages
    # r_t = -kl_coef * KL_t, plus the score at the last response token (Ziegler et al. 2019, eq. 2)
    rewards_BT, kl_BT = per_token_rewards(score_B, old_logps_BT, ref_logps_BT, mask_BT, kl_coef, ppo.kl_estimator)
    if ppo.whiten_rewards:
        rewards_BT = masked_whiten(rewards_BT, mask_BT, shift_mean=False)  # rescale only (TRL 0.x)
    advantages_BT, returns_BT = gae_advantages(rewards_BT, old_values_BT, mask_BT, ppo.gamma, ppo.lam)
    if int(mask_BT.sum()) > 1:
        advantages_BT = masked_whiten(advantages_BT, mask_BT)  # A <- (A - mean) / std over response tokens
    t_forward = time.time() - t0

    stats = {
        "reward/score": float(raw_score_B.mean()),
        "reward/score_with_penalty": float(score_B.mean()),
        "reward/total": float(rewards_BT.sum(-1).mean()),
        "kl": float(kl_BT.sum(-1).mean()),  # per-sequence KL(policy || reference), summed over tokens
        "entropy": float(masked_mean(torch.cat(entropies), mask_BT)),
        "response_length": _mean(lengths),
        "no_stop_fraction": float((~rollout.stopped_B).float().mean()),
        "time/rollout": t_rollout,
        "time/scoring": t_scoring,
        "time/forward": t_forward,
        "response_tokens": float(sum(lengths)),
    }
    if gold is not None:
        stats["reward/gold"] = _mean(gold)
    for key, per_row in scored.info.items():  # a weighted sum's terms, e.g. "learned/score"
        if key.endswith("/score"):
            stats[f"reward/{key.removesuffix('/score')}"] = _mean(per_row)
    return Experience(input_ids_BL, attention_mask_BL, response_mask_BT, P, old_logps_BT, old_values_BT,
                      advantages_BT, returns_BT, score_B, rollout.stopped_B.to(base.device), stats, rollout.texts)


@torch.no_grad()
def evaluate_prompts(base, rows: list[dict], reward_fn, cfg, eos_token_ids: list[int]) -> dict[str, float]:
    """Mean training reward of greedy and sampled (temperature 1) responses to held-out prompts:
    the evaluation of prompt files, where no built-in task can check the answers."""
    rows = rows[: cfg.eval.num_prompts]
    prompts, answers = [r["prompt"] for r in rows], [r["answer"] for r in rows]
    rendered = render_prompts(prompts, base.tokenizer, cfg.ppo.chat_template)
    out: dict[str, float] = {}
    for kind, sample in (("greedy", False), ("sampled", True)):
        rollout = base.generate(
            "policy", rendered, max_new_tokens=cfg.eval.max_new_tokens, do_sample=sample, temperature=1.0,
            batch_size=cfg.ppo.forward_batch_size, seed=cfg.train.seed, add_special_tokens=not cfg.ppo.chat_template,
            eos_token_ids=eos_token_ids, progress=False,
        )
        scores = reward_fn(prompts, rollout.texts, answers=answers, response_lengths=rollout.response_lengths_B.tolist()).scores
        out[f"reward_{kind}"] = _mean(scores)
        if sample:
            out["mean_response_length"] = float(rollout.response_lengths_B.float().mean())
            out["no_stop_fraction"] = float((~rollout.stopped_B).float().mean())
    return out


# ---------------------------------------------------------------- loss


def ppo_minibatch_loss(base, batch: dict[str, torch.Tensor], P: int, cfg) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate (policy role) + value_loss_coef x clipped value loss (value role).

    loss = E_t max(-A ratio, -A clip(ratio, 1 +- eps)) + c_v * 0.5 E_t max((V - R)^2, (V_clip - R)^2)
    """
    ppo = cfg.ppo
    mask_BT = batch["response_mask_BT"]
    labels_BT = batch["input_ids_BL"][:, P:]
    with base.role("policy") as policy_model:
        logits_BTV = response_logits(policy_model, batch["input_ids_BL"], batch["attention_mask_BL"], P, ppo.temperature)
    logps_BT = gather_logprobs(logits_BTV, labels_BT)
    policy_loss, policy_stats = ppo_policy_loss(logps_BT, batch["old_logps_BT"], batch["advantages_BT"], mask_BT, ppo.clip_range)
    values_BT = response_values(base, batch["input_ids_BL"], batch["attention_mask_BL"], P).float()
    value_loss, value_stats = ppo_value_loss(values_BT, batch["old_values_BT"], batch["returns_BT"], mask_BT, ppo.clip_range_value)
    with torch.no_grad():
        entropy = masked_mean(entropy_from_logits(logits_BTV.detach()), mask_BT)
    loss = policy_loss + ppo.value_loss_coef * value_loss
    stats = {"loss/policy": policy_loss.detach(), "loss/value": value_loss.detach(), "update_entropy": entropy,
             **policy_stats, **value_stats}
    return loss, stats
