"""Peak memory of one PPO-shaped step, LoRA on one shared base against full fine-tuning.

    OMP_NUM_THREADS=1 python scripts/bench_memory.py            # ~100M Llama config + builtin base
    OMP_NUM_THREADS=1 python scripts/bench_memory.py --quick    # a 6M config only (tests)

One step, as PPO does it (`run_step`): policy forward + backward, reference forward (no grad),
reward forward (no grad), value forward + backward, one AdamW step over policy and value.
Roles live on a SharedBase: LoRA mode keeps ONE frozen base and four adapters (two trained),
full mode gives policy, reward and value their own full copy (the reference is the frozen base
itself), with gradients and Adam state for two full copies. Theory: about 10 model copies of
memory (4 weights + 2 gradients + 4 Adam moments) against 1 copy plus small adapters.

Every (mode, model) case runs in its OWN process (this script re-invoked with `--case`), with one
torch thread, because on CPU the peak cannot be reset: what is measured is the process's peak
resident set size (`ru_maxrss`, `align.memory.peak_bytes`), which on a GPU would be
`torch.cuda.max_memory_allocated`. That RSS includes the interpreter and the torch /
transformers / peft libraries, a fixed cost in both modes that pulls the ratio towards 1, so a
third kind of process imports everything and builds nothing, and its peak is reported as the
baseline. Columns:
    peak        measured peak RSS of the case's process (raw)
    peak-base   the same minus the baseline process's peak ("baseline-subtracted")
    accounted   bytes that `align.memory.memory_report` counts after the step: base weights,
                adapters, heads, gradients, optimizer state (no activations, no allocator slack)
The LAST line, `peak memory ratio lora/full: 0.NN`, is the RAW measured peak ratio of the ~100M
config (or of the 6M config with `--quick`): the most conservative of the three, since it
charges the library baseline to LoRA too. The baseline-subtracted ratio is printed above it.

Left out: activation checkpointing (off here in both modes), generation (PPO's rollout phase is
inference-only and smaller than the training step), bf16 (CPU runs float32).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# ~100M parameters: hidden 768, 12 layers, vocab 32000, tied embeddings (110M in all).
CONFIGS: dict[str, dict] = {
    "llama-100m": dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                       num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=512,
                       tie_word_embeddings=True),
    # --quick: big enough (6M) that model copies, not library noise, decide the peak
    "llama-6m": dict(vocab_size=8000, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                     num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                     tie_word_embeddings=True),
}
BATCH, SEQ, RESPONSE = 4, 64, 16  # sequences per step, tokens per sequence, of which response tokens
LORA = {"rank": 8, "alpha": 32.0, "targets": "all", "dropout": 0.0}


def build_model(name: str):
    import torch

    if name == "builtin:tiny-arith":
        from align.models import load_model_and_tokenizer

        return load_model_and_tokenizer(name)[0]
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0, **CONFIGS[name]))


def run_step(base, batch_size: int, seq: int, response: int):
    """One PPO-shaped update on random tokens; returns (losses, the optimizer)."""
    import torch

    vocab = base.model.get_input_embeddings().num_embeddings
    g = torch.Generator().manual_seed(0)
    ids_BT = torch.randint(4, vocab, (batch_size, seq), generator=g)
    mask_BT = torch.ones_like(ids_BT)
    response_BT = torch.zeros_like(ids_BT)
    response_BT[:, -response:] = 1
    params = base.trainable_parameters("policy") + base.trainable_parameters("value")
    optimizer = torch.optim.AdamW(params, lr=1e-5)

    # policy forward and backward (a stand-in for the clipped surrogate: -mean log-prob)
    logps_BT = base.logprobs("policy", ids_BT, mask_BT, response_BT).logps_BT
    policy_loss = -(logps_BT.sum() / response_BT.sum())
    policy_loss.backward()
    del logps_BT
    # reference and reward forwards, no grad (the explicit methods run frozen roles under no_grad)
    ref_logps_BT = base.logprobs("reference", ids_BT, mask_BT, response_BT).logps_BT
    scores_B = base.scores("reward", ids_BT, mask_BT)
    # value forward and backward (regression of per-token values onto the score)
    values_BT = base.values("value", ids_BT, mask_BT)
    value_loss = (((values_BT - scores_B[:, None]) ** 2) * response_BT).sum() / response_BT.sum()
    value_loss.backward()
    optimizer.step()
    stats = {"policy_loss": float(policy_loss), "value_loss": float(value_loss), "ref_logp": float(ref_logps_BT.sum())}
    return stats, optimizer


def case(mode: str, model_name: str) -> dict:
    """Run in a fresh process: build, step, report. mode 'baseline' imports and builds nothing."""
    import torch

    torch.set_num_threads(1)
    from align.memory import memory_report, peak_bytes
    from align.shared_base import SharedBase
    import align.logprobs  # noqa: F401  (the baseline imports what the cases import)
    import peft  # noqa: F401
    import transformers  # noqa: F401

    if mode == "baseline":
        return {"mode": mode, "model": "-", "peak_bytes": peak_bytes()}
    t0 = time.time()
    model = build_model(model_name)
    params = sum(p.numel() for p in model.parameters())
    base = SharedBase(model, None, mode=mode, lora=LORA)
    base.add_policy()
    base.add_reference()
    base.add_reward(trainable=False)  # a frozen reward model (its weights are random here)
    base.add_value()
    out, optimizer = run_step(base, BATCH, SEQ, RESPONSE)
    report = memory_report(base, optimizer)
    return {"mode": mode, "model": model_name, "params": params, "peak_bytes": peak_bytes(),
            "accounted": report, "seconds": round(time.time() - t0, 1), **out}


def spawn(mode: str, model_name: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, __file__, "--case", mode, model_name],
                          capture_output=True, text=True, env=env, cwd=str(REPO))
    if proc.returncode != 0:
        raise SystemExit(f"case {mode} {model_name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def mb(n: float) -> str:
    return f"{n / 2**20:,.1f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 6M-parameter config only (for tests)")
    parser.add_argument("--no-builtin", action="store_true", help="skip the built-in base")
    parser.add_argument("--case", nargs=2, metavar=("MODE", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(case(*args.case)), flush=True)
        return

    headline = "llama-6m" if args.quick else "llama-100m"
    models = [headline] + ([] if args.quick or args.no_builtin else ["builtin:tiny-arith"])
    baseline = spawn("baseline", "-")["peak_bytes"]
    rows = {(m, mode): spawn(mode, m) for m in models for mode in ("lora", "full")}

    print(f"one PPO-shaped step, batch {BATCH} x {SEQ} tokens, LoRA rank {LORA['rank']} on all linear layers, "
          f"1 thread per process, CPU float32")
    print(f"baseline (a process that imports everything and builds nothing): peak RSS {mb(baseline)} MiB")
    print(f"{'mode':<5} {'model':<19} {'params':>12} {'peak MiB':>10} {'peak-base MiB':>14} {'accounted MiB':>14} "
          f"{'ratio raw':>10} {'ratio -base':>12} {'ratio acct':>11}")
    ratios = {}
    for m in models:
        lora, full = rows[(m, "lora")], rows[(m, "full")]
        raw = lora["peak_bytes"] / full["peak_bytes"]
        sub = (lora["peak_bytes"] - baseline) / max(full["peak_bytes"] - baseline, 1)
        acct = lora["accounted"]["total"] / full["accounted"]["total"]
        ratios[m] = (raw, sub, acct)
        for mode, r in (("lora", lora), ("full", full)):
            last = mode == "full"
            print(f"{mode:<5} {m:<19} {r['params']:>12,} {mb(r['peak_bytes']):>10} {mb(r['peak_bytes'] - baseline):>14} "
                  f"{mb(r['accounted']['total']):>14} {(f'{raw:.3f}' if last else ''):>10} "
                  f"{(f'{sub:.3f}' if last else ''):>12} {(f'{acct:.3f}' if last else ''):>11}")
    print("accounted bytes by category (MiB): " + "; ".join(
        f"{mode} {m}: " + ", ".join(f"{k} {mb(v)}" for k, v in rows[(m, mode)]["accounted"].items() if k != "total")
        for m in models for mode in ("lora", "full")))
    raw, sub, _ = ratios[headline]
    print(f"{headline}: baseline-subtracted peak ratio lora/full: {sub:.3f} (last line: the RAW peak ratio, "
          f"library baseline included in both)")
    print(f"peak memory ratio lora/full: {raw:.2f}")


if __name__ == "__main__":
    main()
