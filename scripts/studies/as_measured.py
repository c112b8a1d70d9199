"""Recipe settings that committed results were measured with, where the shipped recipe has since
moved on: a study adds them to its overrides, so its table still reproduces at the current code.

PPO_BEFORE_ISSUE11_TUNING: `recipes/ppo_lora.yaml` until issue 11's tuning (a constant LR of 3e-4),
the recipe of results/parity_ppo (whose runs set their own LR) and results/ppo_vs_grpo.
GRPO_BEFORE_ISSUE11_TUNING: `recipes/grpo_lora.yaml` until issue 11's tuning (16 prompts x 8
completions, two updates of 64 per generation, constant LR, no KL term), the recipe that
results/parity_grpo, results/grpo_vs_trl, results/ppo_vs_grpo and the atlas's targets_grpo used.
"""

PPO_BEFORE_ISSUE11_TUNING = ["optimizer.lr=0.0003", "optimizer.schedule=constant"]
GRPO_BEFORE_ISSUE11_TUNING = [
    "grpo.prompts_per_iteration=16", "grpo.group_size=8", "grpo.minibatch_size=64",
    "optimizer.schedule=constant", "rollout.kl_coef=0.0",
]
