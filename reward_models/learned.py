"""Learned reward models behind the `RewardFunction` interface: the `reward` role of a SharedBase.

What it does:
- `LearnedReward(shared_base, tokenizer=None, role="reward", batch_size=32)`: called as
  `fn(prompts, completions, **metadata) -> RewardOutput`, one float per row. Each row is
  tokenised with the project's token convention (`encode_prompt(prompt) + encode_completion(
  completion)`, i.e. the completion ends with EOS, exactly as the reward model saw its training
  pairs), right-padded in batches of `batch_size`, and scored by the role's scalar head on the
  last real token (plus, for a `last_token+logprob` head, its weighted sum and mean log-prob of
  the completion tokens), under `torch.no_grad()` and in eval mode (modes restored afterwards).
  Rows are scored in the order given; the result does not depend on the batch size or padding.
- `load_learned_reward(path, shared_base)`: adds the frozen `reward` role to `shared_base` from a
  reward-model run directory (`align train recipes/rm_lora.yaml` writes `RUN/reward/`) or from the
  saved role directory itself, and returns a `LearnedReward` on it. This is what PPO uses for
  `rollout.reward: learned` with `rollout.reward_model: RUN`.
- registered as `learned`: `build_reward({"name": "learned", "shared_base": base})`.

What it leaves out: training (`align.trainers.reward`), reward normalisation/whitening (PPO's
`whiten_rewards`), truncation (rows longer than the model's context are the caller's problem).

Run: `python -c "from reward_models.learned import load_learned_reward; help(load_learned_reward)"`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from align.data.loading import encode_completion, encode_prompt
from align.modes import eval_mode
from reward_models.base import RewardOutput, register_reward

ROLE_FILE = "align_role.json"
HEAD_FILE = "head.safetensors"


@register_reward("learned")
class LearnedReward:
    """A scalar-head role of a SharedBase as a reward function (see the module docstring)."""

    name = "learned"
    needs_answer = False  # scores the text alone; rows without an answer are fine

    def __init__(self, shared_base: Any, tokenizer: Any = None, role: str = "reward", batch_size: int = 32) -> None:
        if not shared_base.has_role(role):
            raise KeyError(f"the shared base has no {role!r} role (roles: {shared_base.roles}); load one with load_learned_reward")
        if shared_base.head(role) is None:
            raise ValueError(f"role {role!r} has no scalar head; it cannot score completions")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.shared_base = shared_base
        self.tokenizer = tokenizer if tokenizer is not None else shared_base.tokenizer
        if self.tokenizer is None:
            raise ValueError("LearnedReward needs a tokenizer (the shared base has none)")
        self.role = role
        self.batch_size = batch_size
        self.name = f"learned:{role}" if role != "reward" else "learned"

    def encode(self, prompt: str, completion: str) -> tuple[list[int], int]:
        """Token ids of one row (the same convention as the reward model's training pairs) and
        the number of prompt tokens (the completion, EOS included, is the rest)."""
        prompt_ids = encode_prompt(self.tokenizer, prompt)
        return prompt_ids + encode_completion(self.tokenizer, completion), len(prompt_ids)

    @torch.no_grad()
    def score_ids(self, sequences: list[list[int]], prompt_lengths: list[int] | None = None) -> torch.Tensor:
        """Scores (N,) of token-id sequences, in batches, right-padded. `prompt_lengths` marks
        where each completion starts; a `last_token+logprob` head needs it."""
        if prompt_lengths is not None and len(prompt_lengths) != len(sequences):
            raise ValueError(f"got {len(prompt_lengths)} prompt lengths for {len(sequences)} sequences")
        base = self.shared_base
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        out: list[torch.Tensor] = []
        # dropout off even for a role that is still trainable; each module's mode restored after
        with eval_mode(base.role_model(self.role), base.head(self.role)):
            for i in range(0, len(sequences), self.batch_size):
                part = sequences[i : i + self.batch_size]
                width = max(len(s) for s in part)
                ids_BT = torch.tensor([s + [pad_id] * (width - len(s)) for s in part], dtype=torch.long, device=base.device)
                mask_BT = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in part], dtype=torch.long, device=base.device)
                completion_BT = None
                if prompt_lengths is not None:
                    starts = prompt_lengths[i : i + self.batch_size]
                    completion_BT = torch.tensor([[0] * n + [1] * (len(s) - n) + [0] * (width - len(s)) for s, n in zip(part, starts)],
                                                 dtype=torch.long, device=base.device)
                out.append(base.scores(self.role, ids_BT, mask_BT, completion_BT).float().cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def __call__(self, prompts: list[str], completions: list[str], **metadata: Any) -> RewardOutput:
        if len(prompts) != len(completions):
            raise ValueError(f"got {len(completions)} completions for {len(prompts)} prompts")
        encoded = [self.encode(p, c) for p, c in zip(prompts, completions)]
        sequences = [ids for ids, _ in encoded]
        scores_N = self.score_ids(sequences, [n for _, n in encoded])
        return RewardOutput([float(s) for s in scores_N.tolist()], {"reward_tokens": [len(s) for s in sequences]})


def resolve_reward_dir(path: str | os.PathLike) -> Path:
    """The saved reward-role directory of `path`: the directory itself when it holds a head
    (`head.safetensors`), else `path/reward` (a reward-model run directory)."""
    path = Path(path)
    for candidate in (path, path / "reward"):
        if (candidate / HEAD_FILE).is_file():
            return candidate
    raise FileNotFoundError(
        f"{path} is neither a reward-model run directory (with reward/{HEAD_FILE}) nor a saved reward role "
        f"directory (with {HEAD_FILE}); train one with `align train recipes/rm_lora.yaml`"
    )


def load_learned_reward(path: str | os.PathLike, shared_base: Any, role: str = "reward", batch_size: int = 32,
                        tokenizer: Any = None) -> LearnedReward:
    """Load a trained reward model as the frozen `role` of `shared_base` and wrap it.

    `path`: a reward-model run directory or its `reward/` directory. The saved mode (lora/full)
    must match the shared base's. If `shared_base` has no tokenizer, the one saved beside the
    role is used."""
    directory = resolve_reward_dir(path)
    meta_file = directory / ROLE_FILE
    if meta_file.is_file():
        saved_mode = json.loads(meta_file.read_text()).get("mode")
        if saved_mode is not None and saved_mode != shared_base.mode:
            raise ValueError(f"{directory} holds a {saved_mode}-mode reward model but the shared base is in {shared_base.mode} mode")
    if shared_base.has_role(role):
        shared_base.load_role(role, directory, trainable=False)
    elif role == "reward":
        shared_base.add_reward(directory)
    else:
        shared_base.load_role(role, directory, trainable=False)
    if tokenizer is None and shared_base.tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(directory))
    return LearnedReward(shared_base, tokenizer=tokenizer, role=role, batch_size=batch_size)
