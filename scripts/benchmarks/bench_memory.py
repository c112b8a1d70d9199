"""Peak memory and step time of PPO- and DPO-shaped steps, LoRA on one shared base against full
fine-tuning, with and without activation checkpointing, at Qwen2.5-0.5B's shapes.

    OMP_NUM_THREADS=1 python scripts/benchmarks/bench_memory.py            # Qwen2.5-0.5B-shaped headline + extra rows (40-50 min)
    OMP_NUM_THREADS=1 python scripts/benchmarks/bench_memory.py --quick    # a 6M config only (tests)
    OMP_NUM_THREADS=1 python scripts/benchmarks/bench_memory.py --world 2 --strategy fsdp   # memory per process (bench_memory_sharded.py)

Headline: a random Qwen2 model with Qwen2.5-0.5B's widths (vocabulary 151,936, hidden 896,
intermediate 4,864, 14 heads, 2 KV heads, tied embeddings) at 12 layers (the released model has
24): 315 M parameters, 136 M of them the embedding. Batch 4 x 256 tokens, the last 128 response. Extra rows: a 110 M Llama
(vocabulary 32,000) and the built-in base at 4 x 64 tokens (16 response), PPO-shaped, checkpointing off.

Steps (each case runs TWO, so the second runs with Adam state allocated, as every step of a
training run after the first does; the second one is timed):
    ppo   policy forward + backward, reference forward (no grad), reward forward (no grad), value
          forward + backward, one AdamW step over policy and value (`ppo_step`)
    dpo   policy forward + backward over the 2 x 4 chosen and rejected rows, reference forward
          (no grad), one AdamW step over the policy (`dpo_step`)
Roles live on a SharedBase: LoRA mode keeps ONE frozen base and its adapters, full mode gives
policy, reward and value their own full copy (the reference is the frozen base itself). Each
(mode, step) runs with checkpointing off and on (log-prob chunks of `train.logprob_chunk_mib: 32`,
the default), and (headline PPO only) with the log-prob chunking off (`chunk 0`: the target logits
in one piece, the path before chunking existed). The "recipe defaults" of a step are the settings
of the real-model recipe of that shape, read from it: `recipes/ppo_qwen_lora.yaml` and
`recipes/dpo_qwen_lora.yaml` (`train.activation_checkpointing: true`, chunks of 32 MiB); the
built-in tiny recipes keep checkpointing off, where activations are negligible and speed matters.

Every case runs in its OWN process (this script re-invoked with `--case`), with one torch thread,
because on CPU the peak cannot be reset: what is measured is the process's peak resident set size
(`ru_maxrss`, `align.memory.peak_bytes`), which on a GPU would be `torch.cuda.max_memory_allocated`.
That RSS includes the interpreter and the torch / transformers / peft libraries, a fixed cost in
both modes that pulls the ratio towards 1, so a process that imports everything and builds nothing
is reported as the baseline. Columns:
    peak        measured peak RSS of the case's process (raw)
    peak-base   the same minus the baseline process's peak ("baseline-subtracted")
    accounted   bytes that `align.memory.memory_report` counts after the steps: base weights,
                adapters, heads, gradients, optimizer state (no activations, no allocator slack)
    malloc      `returned` (every case but one): glibc is told to serve large allocations from mmap
                and unmap them when freed (MALLOC_MMAP_THRESHOLD_=131072), so a freed tensor leaves
                the RSS as it leaves a GPU's allocated bytes; `glibc`: glibc's own settings, under
                which freed activation memory stays resident (the headline PPO pair runs both ways)
    step s      CPU seconds of the second step (one thread, so wall time when the machine is
                otherwise idle; CPU time does not count waiting for a core another process holds)
The line `step time lora chunked/unchunked` compares LoRA PPO steps with and without the log-prob
chunking (no checkpointing): the time chunking costs. The LAST line, `peak memory ratio lora/full:
0.NN`, is the RAW measured peak ratio of the headline PPO step with the recipe defaults (those of
`recipes/ppo_qwen_lora.yaml`; of the 6M config with `--quick`): the most conservative figure, since
it charges the library baseline to LoRA too. The line before it gives the same ratio with
checkpointing off.

Left out: generation (PPO's rollout phase is inference-only and smaller than the training step),
bf16 (CPU runs float32; on a GPU bf16 halves the weights and the ratios carry over).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

HEADLINE = "qwen2.5-0.5b-shape"
# name -> (transformers architecture, config)
CONFIGS: dict[str, tuple[str, dict]] = {
    HEADLINE: ("qwen2", dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=12,
                             num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=512,
                             tie_word_embeddings=True)),
    # ~100M parameters: hidden 768, 12 layers, vocab 32000, tied embeddings (110M in all).
    "llama-100m": ("llama", dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                                 num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=512,
                                 tie_word_embeddings=True)),
    # --quick: big enough (6M) that model copies, not library noise, decide the peak
    "llama-6m": ("llama", dict(vocab_size=8000, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                               num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                               tie_word_embeddings=True)),
}
# model -> (sequences per step, tokens per sequence, of which response tokens)
SHAPES = {HEADLINE: (4, 256, 128), "llama-100m": (4, 64, 16), "llama-6m": (4, 64, 16), "builtin:tiny-arith": (4, 64, 16)}
LORA = {"rank": 8, "alpha": 32.0, "targets": "all", "dropout": 0.0}
DEFAULT_CHUNK_MIB = 32.0  # align.config.TrainSettings.logprob_chunk_mib's default (checked in case())
# the real-model recipe whose settings are a step's "recipe defaults" at the headline shapes
RECIPES = {"ppo": "recipes/ppo_qwen_lora.yaml", "dpo": "recipes/dpo_qwen_lora.yaml"}
STEPS = 2  # the second step, with Adam state allocated, is timed
# glibc serves allocations above this from mmap and unmaps them on free (a fixed threshold also
# stops glibc raising it): freed tensors leave the RSS, as they leave a GPU's allocated bytes.
MMAP_THRESHOLD = str(128 * 1024)


def build_model(name: str):
    import torch

    if name == "builtin:tiny-arith":
        from align.models import load_model_and_tokenizer

        return load_model_and_tokenizer(name)[0].train()
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    arch, config = CONFIGS[name]
    config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[arch]
    torch.manual_seed(0)
    return model_cls(config_cls(bos_token_id=1, eos_token_id=2, pad_token_id=0, **config)).train()


def random_batch(vocab: int, batch_size: int, seq: int, response: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    ids_BT = torch.randint(4, vocab, (batch_size, seq), generator=g)
    response_BT = torch.zeros_like(ids_BT)
    response_BT[:, -response:] = 1
    return ids_BT, torch.ones_like(ids_BT), response_BT


def ppo_step(base, optimizer, batch) -> dict:
    """One PPO-shaped update on random tokens."""
    ids_BT, mask_BT, response_BT = batch
    optimizer.zero_grad(set_to_none=True)
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
    return {"policy_loss": float(policy_loss), "value_loss": float(value_loss), "ref_logp": float(ref_logps_BT.sum())}


def dpo_step(base, optimizer, batch) -> dict:
    """One DPO-shaped update: the chosen and rejected rows in one forward per role (as the trainer)."""
    import torch.nn.functional as F

    ids_2BT, mask_2BT, response_2BT = batch
    optimizer.zero_grad(set_to_none=True)
    logps_2B = (base.logprobs("policy", ids_2BT, mask_2BT, response_2BT).logps_BT).sum(-1)
    ref_logps_2B = (base.logprobs("reference", ids_2BT, mask_2BT, response_2BT).logps_BT).sum(-1)
    # DPO (Rafailov et al. 2023, eq. 7): -log sigmoid(beta * (policy margin - reference margin))
    B = ids_2BT.shape[0] // 2
    margin_B = (logps_2B[:B] - logps_2B[B:]) - (ref_logps_2B[:B] - ref_logps_2B[B:])
    loss = -F.logsigmoid(0.1 * margin_B).mean()
    loss.backward()
    optimizer.step()
    return {"loss": float(loss)}


def roles_and_step(model, spec: dict):
    """The case's SharedBase (its mode, chunk size, checkpointing, the step's roles), AdamW over
    what trains, the step function and its random batch (on the model's device)."""
    import torch

    from align.shared_base import SharedBase  # noqa: F401  (imported by the baseline too)

    base = SharedBase(model, None, mode=spec["mode"], lora=LORA)
    base.logprob_chunk_bytes = int(spec["chunk_mib"] * 2**20)  # as align.trainers.common.load_shared_base
    if spec["checkpointing"]:
        base.enable_activation_checkpointing()
    base.add_policy()
    base.add_reference()
    vocab = model.get_input_embeddings().num_embeddings
    batch_size, seq, response = SHAPES[spec["model"]]
    if spec["step"] == "ppo":
        base.add_reward(trainable=False)  # a frozen reward model (its weights are random here)
        base.add_value()
        params = base.trainable_parameters("policy") + base.trainable_parameters("value")
        step, batch = ppo_step, random_batch(vocab, batch_size, seq, response)
    else:
        params = base.trainable_parameters("policy")
        chosen, rejected = random_batch(vocab, batch_size, seq, response, 0), random_batch(vocab, batch_size, seq, response, 1)
        step, batch = dpo_step, tuple(torch.cat([c, r]) for c, r in zip(chosen, rejected))
    device = next(model.parameters()).device
    return base, torch.optim.AdamW(params, lr=1e-5), step, tuple(t.to(device) for t in batch)


def recipe_defaults(step: str) -> dict:
    """`checkpointing` and `chunk_mib` as the real-model recipe of this step sets them."""
    from align.config import load_recipe

    train = load_recipe(REPO / RECIPES[step]).train
    return {"checkpointing": train.activation_checkpointing, "chunk_mib": float(train.logprob_chunk_mib)}


def case(spec: dict) -> dict:
    """Run in a fresh process: build, step twice, report. mode 'baseline' imports and builds nothing."""
    import torch

    torch.set_num_threads(1)
    from align.config import TrainSettings
    from align.memory import memory_report, peak_bytes
    from align.shared_base import SharedBase  # noqa: F401  (imported by the baseline too)
    import align.logprobs  # noqa: F401  (the baseline imports what the cases import)
    import peft  # noqa: F401
    import transformers  # noqa: F401

    if spec["mode"] == "baseline":
        return {**spec, "peak_bytes": peak_bytes()}
    assert TrainSettings().logprob_chunk_mib == DEFAULT_CHUNK_MIB
    t0 = time.time()
    model = build_model(spec["model"])
    params = sum(p.numel() for p in model.parameters())
    base, optimizer, step, batch = roles_and_step(model, spec)
    built_peak = peak_bytes()  # building a random model has its own peak; the steps' shows only above it
    for _ in range(STEPS):
        cpu0, wall0 = time.process_time(), time.perf_counter()
        out = step(base, optimizer, batch)
        step_cpu, step_wall = time.process_time() - cpu0, time.perf_counter() - wall0
    report = memory_report(base, optimizer)
    return {**spec, "params": params, "peak_bytes": peak_bytes(), "built_peak_bytes": built_peak, "accounted": report, "step_cpu_s": step_cpu,
            "step_wall_s": step_wall, "seconds": round(time.time() - t0, 1), **out}


def spawn(spec: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    if spec.get("malloc", "returned") == "returned":
        env["MALLOC_MMAP_THRESHOLD_"] = MMAP_THRESHOLD
    proc = subprocess.run([sys.executable, __file__, "--case", json.dumps(spec)],
                          capture_output=True, text=True, env=env, cwd=str(REPO))
    if proc.returncode != 0:
        raise SystemExit(f"case {spec} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  ran {spec}: {result['peak_bytes'] / 2**20:,.0f} MiB", file=sys.stderr, flush=True)
    return result


def mb(n: float) -> str:
    return f"{n / 2**20:,.1f}"


def spec(mode: str, model: str, step: str = "ppo", checkpointing: bool = False, chunk_mib: float = DEFAULT_CHUNK_MIB,
         malloc: str = "returned") -> dict:
    return {"mode": mode, "model": model, "step": step, "checkpointing": checkpointing, "chunk_mib": chunk_mib, "malloc": malloc}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 6M-parameter config only, PPO step, recipe defaults (for tests)")
    parser.add_argument("--no-builtin", action="store_true", help="skip the built-in base")
    parser.add_argument("--no-extra", action="store_true", help="the headline model only (no 110M and built-in rows)")
    parser.add_argument("--case", metavar="JSON", help=argparse.SUPPRESS)
    parser.add_argument("--world", type=int, default=None,
                        help="memory PER PROCESS with this many processes (scripts/benchmarks/bench_memory_sharded.py)")
    parser.add_argument("--strategy", choices=["ddp", "fsdp"], default="fsdp", help="with --world: how processes hold the base")
    parser.add_argument("--model", choices=["shapes", "smollm2"], default="shapes",
                        help="shapes: the random-weight cases below; smollm2: every trainer's real-base recipe, LoRA "
                             "and full, and the TRL pair (scripts/benchmarks/bench_memory_smollm2.py; its options follow)")
    args, rest = parser.parse_known_args(argv)
    if rest and args.model != "smollm2":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.world is not None:  # several processes: another question, another script (it imports this one)
        return subprocess.run([sys.executable, str(Path(__file__).with_name("bench_memory_sharded.py")), "--world", str(args.world),
                               "--strategy", args.strategy], cwd=str(REPO)).returncode
    if args.model == "smollm2":  # the real base's trainers, run as recipes (bench_memory_smollm2.py)
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_memory_smollm2 import main as smollm2_main  # noqa: E402 (this folder; it imports nothing from here)

        return smollm2_main(rest)
    if args.case:
        print(json.dumps(case(json.loads(args.case))), flush=True)
        return

    headline = "llama-6m" if args.quick else HEADLINE
    # (LoRA case, with its full-copies twin?) for the headline: every step x checkpointing; LoRA
    # PPO without chunking (the time chunking costs); the PPO pair under glibc's own malloc settings
    pairs = [({**spec("lora", headline), **recipe_defaults("ppo")}, True)] if args.quick else [
        (spec("lora", headline, step, checkpointing), True) for step in ("ppo", "dpo") for checkpointing in (False, True)
    ] + [(spec("lora", headline, "ppo", False, 0.0), False), (spec("lora", headline, malloc="glibc"), True)]
    if not (args.quick or args.no_extra):
        pairs += [(spec("lora", "llama-100m"), True)] + ([] if args.no_builtin else [(spec("lora", "builtin:tiny-arith"), True)])
    baseline = spawn(spec("baseline", "-"))["peak_bytes"]
    rows = [(spawn(p), spawn({**p, "mode": "full"}) if twin else None) for p, twin in pairs]

    shape = SHAPES[headline]
    print(f"{headline}: batch {shape[0]} x {shape[1]} tokens ({shape[2]} response; DPO: {shape[0]} chosen + {shape[0]} rejected), "
          f"LoRA rank {LORA['rank']} on all linear layers, 1 thread per process, CPU float32, step {STEPS} of {STEPS} timed")
    print(f"baseline (a process that imports everything and builds nothing): peak RSS {mb(baseline)} MiB")
    print(f"{'mode':<5} {'model':<19} {'params':>12} {'peak MiB':>10} {'peak-base MiB':>14} {'accounted MiB':>14} "
          f"{'step':>4} {'ckpt':>4} {'chunk':>5} {'malloc':>8} {'step s':>7} {'ratio raw':>10} {'ratio -base':>12} {'ratio acct':>11}")
    for lora, full in rows:
        if full is not None:
            raw = lora["peak_bytes"] / full["peak_bytes"]
            sub = (lora["peak_bytes"] - baseline) / max(full["peak_bytes"] - baseline, 1)
            acct = lora["accounted"]["total"] / full["accounted"]["total"]
            lora["ratios"] = (raw, sub, acct)
        for r in (lora, full):
            if r is None:
                continue
            last = r is full
            print(f"{r['mode']:<5} {r['model']:<19} {r['params']:>12,} {mb(r['peak_bytes']):>10} {mb(r['peak_bytes'] - baseline):>14} "
                  f"{mb(r['accounted']['total']):>14} {r['step']:>4} {('on' if r['checkpointing'] else 'off'):>4} "
                  f"{r['chunk_mib']:>5g} {r['malloc']:>8} {r['step_cpu_s']:>7.1f} {(f'{raw:.3f}' if last else ''):>10} "
                  f"{(f'{sub:.3f}' if last else ''):>12} {(f'{acct:.3f}' if last else ''):>11}")

    def find(mode, **kw):
        want = {**spec(mode, headline), **kw}
        return next(r for pair in rows for r in pair if r is not None and all(r[k] == v for k, v in want.items()))

    defaults = recipe_defaults("ppo")
    default = find("lora", **defaults)
    print(f"recipe defaults (from {RECIPES['ppo']}): activation checkpointing {'on' if defaults['checkpointing'] else 'off'}, "
          f"log-prob chunks of {defaults['chunk_mib']:g} MiB")
    print("accounted bytes by category (MiB), headline PPO, recipe defaults: " + "; ".join(
        f"{mode}: " + ", ".join(f"{k} {mb(v)}" for k, v in find(mode, **defaults)["accounted"].items() if k != "total")
        for mode in ("lora", "full")))
    if not args.quick:
        for mode in ("lora", "full"):
            off, on = find(mode), find(mode, checkpointing=True)
            print(f"activation checkpointing, {mode} PPO: peak {mb(off['peak_bytes'])} -> {mb(on['peak_bytes'])} MiB, "
                  f"step {off['step_cpu_s']:.1f} -> {on['step_cpu_s']:.1f} s (x{on['step_cpu_s'] / off['step_cpu_s']:.2f})")
        on = find("lora", checkpointing=True)
        print(f"peak while building the model and roles (before any step), lora: {mb(on['built_peak_bytes'])} MiB "
              f"(a case whose peak equals it peaked while building, not in the steps)")
        unchunked, glibc, chunked = find("lora", chunk_mib=0.0), find("lora", malloc="glibc"), find("lora")
        print(f"log-prob chunking, lora PPO: peak {mb(unchunked['peak_bytes'])} -> {mb(chunked['peak_bytes'])} MiB")
        print(f"glibc's own malloc settings (freed memory kept resident), PPO: peak ratio lora/full {glibc['ratios'][0]:.3f} "
              f"(lora {mb(glibc['peak_bytes'])} MiB, full {mb(find('full', malloc='glibc')['peak_bytes'])} MiB)")
        print(f"step time lora chunked/unchunked (PPO, no checkpointing): {chunked['step_cpu_s'] / unchunked['step_cpu_s']:.3f}")
        print(f"{headline}: peak ratio lora/full, PPO, checkpointing off: {chunked['ratios'][0]:.3f} (raw), "
              f"{chunked['ratios'][1]:.3f} (baseline-subtracted)")
    raw, sub, _ = default["ratios"]
    print(f"{headline}: baseline-subtracted peak ratio lora/full: {sub:.3f} (last line: the RAW peak ratio of the PPO "
          f"step with the recipe defaults, library baseline included in both)")
    print(f"peak memory ratio lora/full: {raw:.2f}")


if __name__ == "__main__":
    main()
