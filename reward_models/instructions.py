"""The verifiable reward of the instructions task: the fraction of a prompt's constraints met.

What it does: `instruction_following` (`InstructionFollowing()`) scores each completion by
`align.tasks.instructions.fraction_met` against its prompt's constraint specs, read from the
`answers` metadata (`needs_answer = True`: the constraints are not parsed back from the prompt
text). `info` holds `all_met` per row and, for every constraint kind `K` present in the batch,
`K/met`: 1.0 or 0.0 where the row has that kind, None where it does not (so a tracker can average
each kind's pass rate over the rows that ask for it).

What it leaves out: the constraints themselves (`align.tasks.instructions`), partial credit
within a constraint (a 21-word answer to "at most 20 words" scores 0 for it, as in IFEval).

Run: `python -c "from reward_models.instructions import *; print(InstructionFollowing()(['p'], ['hi there'], answers=[[{'kind': 'lowercase'}]]))"`.
"""

from __future__ import annotations

from typing import Any

from align.tasks.instructions import all_met, constraints_met, fraction_met, parse_spec
from reward_models.base import RewardOutput, register_reward


@register_reward("instruction_following")
class InstructionFollowing:
    """Fraction of the prompt's constraints (the `answers` specs) that the completion meets."""

    name = "instruction_following"
    needs_answer = True

    def __call__(self, prompts: list[str], completions: list[str], **metadata: Any) -> RewardOutput:
        if len(prompts) != len(completions):
            raise ValueError(f"got {len(completions)} completions for {len(prompts)} prompts")
        answers = metadata.get("answers")
        if answers is None or any(answer is None for answer in answers):
            raise ValueError("instruction_following needs the answers metadata: each prompt's list of constraint "
                             "specs (the 'answer' of align.tasks.instructions rows)")
        if len(answers) != len(prompts):
            raise ValueError(f"got {len(answers)} answers for {len(prompts)} prompts")
        kinds_B = [[c.kind for c in parse_spec(answer)] for answer in answers]
        met_B = [constraints_met(c, answer) for c, answer in zip(completions, answers)]
        scores = [fraction_met(c, answer) for c, answer in zip(completions, answers)]
        info: dict[str, list] = {"all_met": [all_met(c, answer) for c, answer in zip(completions, answers)]}
        for kind in sorted({kind for kinds in kinds_B for kind in kinds}):
            info[f"{kind}/met"] = [
                float(met[kinds.index(kind)]) if kind in kinds else None for kinds, met in zip(kinds_B, met_B)
            ]
        return RewardOutput(scores, info)
