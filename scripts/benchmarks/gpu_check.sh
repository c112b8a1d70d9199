#!/usr/bin/env bash
# The GPU check (docs/scaling.md, "The GPU check"): every trainer a few steps in bf16 on a Qwen2.5-0.5B-shaped
# model, 1 process and (with 2+ GPUs) all GPUs under ddp and fsdp; prints CUDA peak memory, memory
# by role and step time. Needs CUDA and this repository's dependencies; no network. ~5 minutes.
#   bash scripts/benchmarks/gpu_check.sh [--steps 4] [--out gpu_check]
set -euo pipefail
cd "$(dirname "$0")/../.."
exec "${PYTHON:-python3}" scripts/benchmarks/gpu_check.py "$@"
