#!/usr/bin/env bash
# The GPU check (docs/scaling.md, "The GPU check"): every trainer a few steps in bf16 on a Qwen2.5-0.5B-shaped
# model, 1 process and (with 2+ GPUs) all GPUs under ddp and fsdp, PPO and GRPO also with
# rollout.engine=vllm (skipped without vllm); prints CUDA peak memory, memory by role and step time.
# --7b adds PPO with all four roles on a random Qwen2.5-7B-shaped base (never written to disk).
# Needs CUDA and this repository's dependencies; no network. ~5 minutes without --7b.
#   bash scripts/benchmarks/gpu_check.sh [--steps 4] [--out gpu_check] [--engines hf vllm] [--7b]
set -euo pipefail
cd "$(dirname "$0")/../.."
exec "${PYTHON:-python3}" scripts/benchmarks/gpu_check.py "$@"
