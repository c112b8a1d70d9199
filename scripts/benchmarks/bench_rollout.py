"""Rollout speed: this toolkit's sampling loop, transformers' `model.generate` and the vLLM engine
(`rollout.engine: vllm`), on the same prompts with the same lengths, and what one adapter sync
moves against a merged full-weight sync.

    OMP_NUM_THREADS=1 python scripts/benchmarks/bench_rollout.py          # in .venv-vllm (docs/vllm.md)
    OMP_NUM_THREADS=1 python scripts/benchmarks/bench_rollout.py --quick  # the built-in base only

Bases, each in its OWN process (this script re-invoked with `--base`; one vLLM engine per process):
`builtin:tiny-arith` (128 arithmetic prompts x 12 tokens) and, when it has been fetched,
`builtin:smollm2-135m-instruct` (32 chat-arithmetic prompts in the chat template x 64 tokens),
float32, one torch thread. The policy is a rank-8 LoRA adapter on every linear layer of the
blocks, its B matrices set to small random values (a trained adapter's shape, not the zero start),
so every case samples through the adapter:
    hf_loop   `align.rollout.generate` with one generator per completion (`completion_generators`),
              as PPO and GRPO sample today: one batch, KV cache
    generate  `model.generate(do_sample=True)` on the peft model, one batch, the same lengths
    vllm      `align.vllm_engine.VLLMEngine.generate` with the same per-completion seeds, after
              one warm-up call; the engine is built once (its build time is printed apart)
Every case stops at EOS (hf_loop and vllm at exactly the same ids); tokens/s counts the response
tokens each case produced (EOS included), over the median wall time of `--repeats` calls. The
sync line: bytes of one adapter sync (the adapter's safetensors) and of every base weight.

What it leaves out: GPUs (scripts/benchmarks/gpu_check.sh), batch sizes other than the recipes'.
Last line: `rollout tokens/s vllm/hf: X` for the real base (the built-in one when SmolLM2 is absent).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

BASES = {
    "builtin:tiny-arith": {"prompts": 128, "max_new_tokens": 12, "chat": False},
    "builtin:smollm2-135m-instruct": {"prompts": 32, "max_new_tokens": 64, "chat": True},
}


def run_base(name: str, repeats: int) -> dict:
    import torch

    from align.config import LoraSettings
    from align.data.prompts import render_prompts
    from align.experience import completion_generators, eos_token_ids
    from align.models import resolve_model_path
    from align.rollout import generate
    from align.shared_base import SharedBase
    from align.tasks import get_task
    from align.vllm_engine import VLLMEngine, adapter_rank, full_weight_bytes

    torch.set_num_threads(1)
    spec = BASES[name]
    base = SharedBase.from_pretrained(name, mode="lora", lora=LoraSettings(rank=8, alpha=32, targets="all"))
    base.add_policy()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param_name, p in base.model.named_parameters():
            if "lora_B.policy" in param_name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.01)
    task = get_task("chat_arithmetic" if spec["chat"] else "arithmetic")
    prompts = render_prompts([row["prompt"] for row in task.prompts("eval", spec["prompts"], 0)], base.tokenizer, spec["chat"])
    eos_ids = eos_token_ids(base.model, base.tokenizer)
    T, n = spec["max_new_tokens"], len(prompts)
    add_special = not spec["chat"]

    def timed(fn):
        fn()  # warm-up
        times, tokens = [], 0
        for _ in range(repeats):
            t0 = time.perf_counter()
            tokens = fn()
            times.append(time.perf_counter() - t0)
        seconds = statistics.median(times)
        return {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds}

    def hf_loop() -> int:
        rollout = base.generate("policy", prompts, max_new_tokens=T, batch_size=n, add_special_tokens=add_special,
                                row_generators=completion_generators(0, 0, list(range(n))), eos_token_ids=eos_ids, progress=False)
        return int(rollout.response_mask_BT.sum())

    def hf_generate() -> int:
        tok = base.tokenizer
        encoded = tok(prompts, padding=True, padding_side="left", add_special_tokens=add_special, return_tensors="pt")
        with torch.no_grad(), base.role("policy") as model:
            out = model.generate(**encoded, max_new_tokens=T, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                                 eos_token_id=eos_ids, pad_token_id=tok.pad_token_id)
        response = out[:, encoded["input_ids"].shape[1]:]
        # tokens up to and including the first EOS of each row
        is_eos = torch.isin(response, torch.tensor(eos_ids))
        after_eos = (is_eos.cumsum(-1) - is_eos.long()) > 0
        return int((~after_eos).sum())

    t0 = time.perf_counter()
    engine = VLLMEngine(resolve_model_path(name), "float32", adapter_rank(base), seed=0, kv_cache_gib=1.0)
    build_s = time.perf_counter() - t0
    moved = engine.sync(base)

    def vllm() -> int:
        rollout = engine.generate(None, base.tokenizer, prompts, T, add_special_tokens=add_special,
                                  row_generators=completion_generators(0, 0, list(range(n))), eos_token_ids=eos_ids)
        return int(rollout.response_mask_BT.sum())

    result = {"base": name, "prompts": n, "max_new_tokens": T, "engine_build_s": build_s, "sync_bytes": moved,
              "full_weight_bytes": full_weight_bytes(base.model),
              "hf_loop": timed(hf_loop), "generate": timed(hf_generate), "vllm": timed(vllm)}
    engine.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the built-in base only")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--base", help=argparse.SUPPRESS)  # one base, in this process (internal)
    args = parser.parse_args()
    if args.base:
        print("RESULT " + json.dumps(run_base(args.base, args.repeats)))
        return

    from align.fetched_bases import is_fetched

    names = ["builtin:tiny-arith"] + ([] if args.quick or not is_fetched("builtin:smollm2-135m-instruct")
                                      else ["builtin:smollm2-135m-instruct"])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    results = []
    for name in names:
        done = subprocess.run([sys.executable, __file__, "--base", name, "--repeats", str(args.repeats)],
                              capture_output=True, text=True, env=env)
        line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
        if done.returncode or line is None:
            raise SystemExit(f"{name}: the case failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
        results.append(json.loads(line.removeprefix("RESULT ")))

    print(f"{'base':<32} {'prompts x tokens':>16} {'hf loop tok/s':>14} {'generate tok/s':>15} {'vllm tok/s':>11} "
          f"{'sync MiB':>9} {'full MiB':>9} {'sync/full':>9} {'engine build s':>15}")
    for r in results:
        print(f"{r['base']:<32} {r['prompts']:>7} x {r['max_new_tokens']:<6} {r['hf_loop']['tokens_per_s']:>14.0f} "
              f"{r['generate']['tokens_per_s']:>15.0f} {r['vllm']['tokens_per_s']:>11.0f} {r['sync_bytes'] / 2**20:>9.2f} "
              f"{r['full_weight_bytes'] / 2**20:>9.1f} {r['sync_bytes'] / r['full_weight_bytes']:>9.2%} {r['engine_build_s']:>15.1f}")
    last = results[-1]
    print(f"rollout tokens/s vllm/hf: {last['vllm']['tokens_per_s'] / last['hf_loop']['tokens_per_s']:.2f}")


if __name__ == "__main__":
    main()
