#!/usr/bin/env bash
# Every figure of docs/real-base.md (SmolLM2-135M-Instruct), re-measured.
# Run from the repository root after `pip install -e .` (the first run fetches the base and
# builds the on-policy pairs, a few minutes each):
#     bash scripts/tools/smollm2_figures.sh            # about 3 hours on 2 cores (PPO: ~37 min a seed on one core)
# Outputs: results/smollm2/*.md and .json (quality: each LoRA recipe over 3 seeds, on
# this machine's kernels) and results/smollm2/memory/bench_memory_smollm2_one_command.txt (memory:
# every recipe in both modes, the same 2-step run with evaluation off, so the peak is the training
# step's, measured alike, and the TRL pair; ~20 minutes).
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1 WANDB_MODE=disabled
CAP="$(python -c 'import torch; print(torch.backends.cpu.get_cpu_capability().lower())')"

python -m align.cli fetch-base smollm2-135m-instruct
python -m align.cli build-pairs chat_arithmetic_pairs

for recipe in sft dpo rm grpo ppo; do
  python scripts/studies/spread.py "recipes/${recipe}_smollm2_lora.yaml" --caps "$CAP" --out results/smollm2
done

python scripts/benchmarks/bench_memory.py --model smollm2 --out results/smollm2/memory/bench_one_command.json \
  > results/smollm2/memory/bench_memory_smollm2_one_command.txt
