"""Reward functions behind one interface (`RewardFunction`): verifiable rules and learned models.

- `reward_models.base`: the interface, `RewardOutput`, the registry and `build_reward(spec)`;
- `reward_models.verifiable`: programmatic rewards of the built-in tasks (correctness, format,
  length penalty, the preference task's gold rule) and `WeightedSum`;
- `reward_models.learned`: an adapter (or full) reward model on the shared base (`LearnedReward`,
  `load_learned_reward`), registered as `learned` so `build_reward` finds it too.
"""

from reward_models.base import (
    REWARD_REGISTRY,
    RewardFunction,
    RewardOutput,
    build_reward,
    register_reward,
    reward_needs_answer,
)
from reward_models.instructions import InstructionFollowing
from reward_models.learned import LearnedReward, load_learned_reward
from reward_models.verifiable import (
    ArithmeticCorrectness,
    FormatReward,
    GoldPreferenceRule,
    LengthPenalty,
    WeightedSum,
)

__all__ = [
    "REWARD_REGISTRY",
    "ArithmeticCorrectness",
    "InstructionFollowing",
    "FormatReward",
    "GoldPreferenceRule",
    "LearnedReward",
    "LengthPenalty",
    "RewardFunction",
    "RewardOutput",
    "WeightedSum",
    "build_reward",
    "load_learned_reward",
    "register_reward",
    "reward_needs_answer",
]
