"""What drawing the tokens costs in a rollout, per sampler (`rollout.sampler`), without the model.

    OMP_NUM_THREADS=1 python scripts/benchmarks/bench_sampler.py                 # CPU, SmolLM2's vocabulary
    python scripts/benchmarks/bench_sampler.py --device cuda --rows 64 256       # on a GPU (the GPU check runs this)
    OMP_NUM_THREADS=1 python scripts/benchmarks/bench_sampler.py --rollout builtin:smollm2-135m-instruct

For B rows of a V-token vocabulary, each row with its own CPU `torch.Generator` (as the RL
trainers seed every completion), it times T tokens of `align.rollout._next_tokens` on random
logits already on the device: "multinomial" (one torch.multinomial per row and token; on a GPU
each also copies the row's probabilities to the CPU generator) against "inverse_cdf" (each row's T
uniforms drawn once, then one batched inverse-CDF draw per token). It prints one line per B:

    sampler ms per token (cpu, B=64, V=49152): multinomial 4.1, inverse_cdf 1.2, multinomial/inverse_cdf 3.4

The forward pass is left out there: it costs the same under both samplers, so that ratio is the
sampler's alone. `--rollout MODEL` also times whole rollouts, `align.rollout.generate` on MODEL
(forward passes and KV cache included) of B chat arithmetic prompts x T tokens, one generator
per completion, and prints

    rollout s (cpu, builtin:smollm2-135m-instruct, B=32, T=16): multinomial 6.1, inverse_cdf 4.9, multinomial/inverse_cdf 1.24
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for `align`
from align.data.prompts import render_prompts  # noqa: E402
from align.models import load_model_and_tokenizer  # noqa: E402
from align.rollout import _next_tokens, _uniforms, generate  # noqa: E402
from align.tasks.chat_arithmetic import chat_arithmetic_prompts  # noqa: E402


def time_sampler(sampler: str, rows: int, vocab: int, tokens: int, device: torch.device, repeats: int) -> float:
    """Median over `repeats` of the ms per token of drawing `tokens` tokens for `rows` rows."""
    logits_TBV = torch.randn(tokens, rows, vocab, generator=torch.Generator().manual_seed(0)).to(device)
    timings = []
    for repeat in range(repeats + 1):  # the first pass warms the kernels up and is not counted
        generators = [torch.Generator().manual_seed(repeat * rows + i) for i in range(rows)]
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        uniform_BT = _uniforms(rows, tokens, generators, device) if sampler == "inverse_cdf" else None
        for t in range(tokens):
            token_B = _next_tokens(logits_TBV[t], 0.7, 1.0, True, generators,
                                   uniform_BT[:, t] if uniform_BT is not None else None)
        token_B.tolist()  # the rollout reads its tokens back (EOS checks): wait for the device
        if repeat:
            timings.append((time.perf_counter() - start) * 1000 / tokens)
    return statistics.median(timings)


def time_rollout(model, tokenizer, sampler: str, rows: int, tokens: int, repeats: int) -> float:
    """Median seconds of one rollout of `rows` chat prompts x up to `tokens` tokens (EOS never
    ends a row early: every row runs `tokens` tokens, so both samplers do the same work)."""
    prompts = render_prompts([r["prompt"] for r in chat_arithmetic_prompts("eval", rows)], tokenizer, True)
    timings = []
    for repeat in range(repeats + 1):
        generators = [torch.Generator().manual_seed(repeat * rows + i) for i in range(rows)]
        start = time.perf_counter()
        generate(model, tokenizer, prompts, tokens, temperature=0.7, batch_size=rows, row_generators=generators,
                 add_special_tokens=False, eos_token_ids=[-1], progress=False, sampler=sampler)
        if repeat:
            timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rows", type=int, nargs="+", default=[32, 64], help="completions sampled together (B)")
    parser.add_argument("--vocab", type=int, default=49152, help="V (49152: SmolLM2's; Qwen2.5's is 151936)")
    parser.add_argument("--tokens", type=int, default=16, help="tokens drawn per row (T)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rollout", default=None, metavar="MODEL", help="also time whole rollouts of MODEL (a recipe's model: builtin:..., a path, a hub id)")
    parser.add_argument("--rollout-repeats", type=int, default=2)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda, but torch sees no CUDA device", file=sys.stderr)
        return 2
    for rows in args.rows:
        ms = {s: time_sampler(s, rows, args.vocab, args.tokens, device, args.repeats) for s in ("multinomial", "inverse_cdf")}
        print(f"sampler ms per token ({device.type}, B={rows}, V={args.vocab}): multinomial {ms['multinomial']:.2f}, "
              f"inverse_cdf {ms['inverse_cdf']:.2f}, multinomial/inverse_cdf {ms['multinomial'] / ms['inverse_cdf']:.2f}",
              flush=True)
    if args.rollout is not None:
        model, tokenizer = load_model_and_tokenizer(args.rollout)
        model.to(device)
        for rows in args.rows:
            s = {k: time_rollout(model, tokenizer, k, rows, args.tokens, args.rollout_repeats) for k in ("multinomial", "inverse_cdf")}
            print(f"rollout s ({device.type}, {args.rollout}, B={rows}, T={args.tokens}): multinomial {s['multinomial']:.2f}, "
                  f"inverse_cdf {s['inverse_cdf']:.2f}, multinomial/inverse_cdf {s['multinomial'] / s['inverse_cdf']:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
