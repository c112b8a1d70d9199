#!/usr/bin/env bash
# The example reports under results/reports/ (linked from docs/usage.md): a PPO run, DPO LoRA vs
# full overlaid, and the PPO parity study, each as a self-contained HTML page and a full-page
# screenshot taken in headless Chromium (scripts/tools/render_report.py; needs `chromium`).
#
#   bash scripts/tools/report_examples.sh        # about 5 minutes on 2 cores (three training runs)
#
# Runs go to runs/report_examples/ (gitignored); the study page reads results/parity_ppo/ as committed.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
RUNS=runs/report_examples
OUT=results/reports
mkdir -p "$RUNS" "$OUT"

train() {  # recipe name, extra overrides...; skipped when the run finished before
  local name=$1; shift
  [ -f "$RUNS/$name/summary.json" ] || { rm -rf "${RUNS:?}/$name"; align train "recipes/$name.yaml" tracking.wandb=false output_dir="$RUNS/$name" "$@"; }
}
train ppo_lora
train dpo_lora
train dpo_full

align report "$RUNS/ppo_lora" -o "$OUT/ppo_lora.html"
align report "$RUNS/dpo_lora" "$RUNS/dpo_full" -o "$OUT/dpo_lora_vs_full.html"
align report results/parity_ppo -o "$OUT/parity_ppo.html"
for page in ppo_lora dpo_lora_vs_full parity_ppo; do
  python scripts/tools/render_report.py "$OUT/$page.html" --screenshot "$OUT/$page.png"
done
