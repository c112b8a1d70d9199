#!/usr/bin/env bash
# Every figure of docs/results.md that stands on the built-in base, re-measured in one go
# (about 70 minutes on 2 cores). Run from the repository root after `pip install -e .`:
#     bash scripts/tools/readme_figures.sh
# Outputs: results/base_robustness/shipped/table.md, results/spread/*.md, results/rm_probe.txt,
# results/rm_per_kind.txt, results/ppo_vs_grpo/, results/grpo_vs_trl/. The parity studies
# (scripts/studies/parity.py dpo|ppo|grpo|rm) are not rerun here: they take 20-50 minutes each; docs/results.md
# says which base and which code each was measured on.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1 WANDB_MODE=disabled

# The base recipe over 3 seeds x every CPU kernel set (9 builds).
python scripts/studies/base_robustness.py --out results/base_robustness

# Each cheap recipe over 3 seeds x every kernel set: the mean ± std of docs/results.md.
# (DPO, PPO parity: python scripts/studies/parity.py dpo|ppo, about 10 and 30 minutes.)
for recipe in ppo_lora sft_lora sft_full dpo_lora dpo_full rm_lora rm_full; do
  python scripts/studies/spread.py "recipes/$recipe.yaml"
done

# GRPO's recipe over 3 seeds on this machine's kernels (the GRPO row of docs/results.md).
python scripts/studies/spread.py recipes/grpo_lora.yaml --caps "$(python -c 'import torch; print(torch.backends.cpu.get_cpu_capability().lower())')"

# PPO against the learned reward model (the recipe reads runs/rm_lora).
rm -rf runs/rm_lora runs/rm_full
python -m align.cli train recipes/rm_lora.yaml output_dir=runs/rm_lora > /dev/null
python -m align.cli train recipes/rm_full.yaml output_dir=runs/rm_full > /dev/null
python scripts/studies/spread.py recipes/ppo_lora_rm.yaml --caps "$(python -c 'import torch; print(torch.backends.cpu.get_cpu_capability().lower())')"
python scripts/studies/rm_per_kind.py runs/rm_lora runs/rm_full | tee results/rm_per_kind.txt
python scripts/studies/rm_probe.py | tee results/rm_probe.txt

# The usual last-token head on this base, and PPO against it (reward hacking, gold logged beside).
rm -rf runs/rm_lora_last_token runs/rm_full_last_token runs/ppo_rm_last_token
python -m align.cli train recipes/rm_lora.yaml reward.readout=last_token output_dir=runs/rm_lora_last_token > /dev/null
python -m align.cli train recipes/rm_full.yaml reward.readout=last_token output_dir=runs/rm_full_last_token > /dev/null
python scripts/studies/rm_per_kind.py runs/rm_lora_last_token runs/rm_full_last_token | tee results/rm_per_kind_last_token.txt
python -m align.cli train recipes/ppo_lora_rm.yaml rollout.reward_model=runs/rm_lora_last_token output_dir=runs/ppo_rm_last_token

# PPO against GRPO at equal completions and equal time; our GRPO against TRL's GRPOTrainer.
python scripts/studies/ppo_vs_grpo.py
python scripts/benchmarks/grpo_vs_trl.py
