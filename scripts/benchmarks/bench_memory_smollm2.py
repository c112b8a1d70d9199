"""Peak memory of every trainer on the real base (SmolLM2-135M-Instruct), LoRA against full, and
against TRL at equal settings.

    OMP_NUM_THREADS=1 python scripts/benchmarks/bench_memory.py --model smollm2            # everything, 2 cases at a time (18 min on 2 free cores)
    OMP_NUM_THREADS=1 python scripts/benchmarks/bench_memory.py --model smollm2 --only grpo dpo --no-trl --levels 0

What runs, each case in its OWN process (on CPU the peak resident set cannot be reset), one torch
thread, float32, evaluation off, `--jobs` cases side by side (default 2; a peak is its own process's):
    ours      `align profile-memory recipes/<method>_smollm2_<mode>.yaml eval.enabled=false --steps 2`
              for sft, reward (rm_*), dpo, ppo and grpo, mode lora and full: the real-base recipes
              with the library's defaults (activation checkpointing on for a base this size, freed
              tensors above 4 MiB returned to the system, the prefill's last logits only, no
              reference copy where nothing reads one). Peak = the profile's process peak; the
              library baseline is the same process after importing torch, transformers, peft and
              the trainer, before any model loads; step seconds = the profiled phases' time / steps.
    old       the GRPO LoRA recipe with the defaults before this benchmark existed
              (`train.activation_checkpointing=false train.cpu_mmap_threshold_mib=0
              train.cpu_allocator=glibc`): the step
              time the new defaults are compared with, and the peak they replace.
    levels    the GRPO LoRA recipe for `--levels` iterations (default 20): the peak of each
              iteration (from the profile's timeline), to show that it levels off.
    trl       TRL's GRPOTrainer and DPOTrainer on the same local model folder, the same LoRA (rank
              8, alpha 32, every linear layer of the blocks), the same prompts or pairs, shapes and
              activation checkpointing: GRPO 8 prompts x 4 completions of up to 24 tokens at
              temperature 0.7, one update per generation, beta 0, float32; DPO batch 8 of the
              cached on-policy pairs, max length 128, beta 0.1. Peak = the process's peak RSS;
              baseline = the same process after importing trl, before the model loads. Run twice:
              with glibc's default allocator settings (what a TRL user gets) and with the same
              allocator as ours (equal settings: the ratio line): the library ours preloads
              (`--allocator`, default auto: tcmalloc where installed), or glibc at our mmap
              threshold (MALLOC_MMAP_THRESHOLD_) where ours runs on glibc.
    allocator `train.cpu_allocator` of every case of ours (align.allocator); CPU s: the case's
              user + system CPU seconds (steadier than wall time on a shared machine).
The lines `peak memory lora/full (smollm2, TRAINER): X` compare peaks above each process's own
baseline; `peak memory ours/trl (smollm2, grpo|dpo): X` likewise, at equal allocator settings.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # the repository, for align.allocator
from align.allocator import RESTART_MARK, restart_env, resolve as resolve_allocator  # noqa: E402
from align.profile_memory import is_role_bytes  # noqa: E402
GIB = 2**30
METHODS = {"sft": "sft", "reward": "rm", "dpo": "dpo", "ppo": "ppo", "grpo": "grpo"}  # trainer -> recipe stem
TARGETS = {"sft": 0.5, "reward": 0.5, "grpo": 0.5, "dpo": 0.4, "ppo": 0.25}
STEPS = 2
MMAP_THRESHOLD = str(4 * 2**20)  # align.config.TrainSettings.cpu_mmap_threshold_mib's default, in bytes
ALLOCATOR = "auto"  # --allocator
OLD_DEFAULTS = ["train.activation_checkpointing=false", "train.cpu_mmap_threshold_mib=0", "train.cpu_allocator=glibc"]


def env_one_thread(extra: dict | None = None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    for inherited in ("MALLOC_MMAP_THRESHOLD_", "LD_PRELOAD", RESTART_MARK):  # every case sets its own allocator
        env.pop(inherited, None)
    return {**env, **(extra or {})}


def run_child(cmd: list[str], env: dict, cwd: str) -> tuple[int, str, str, float]:
    """Run `cmd` to its end: (exit code, stdout, stderr, its user + system CPU seconds). The CPU time
    comes from this child's own rusage (`os.wait4`), so cases that run side by side (`--jobs`) each
    get their own: steadier than wall time on a shared machine."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        out.seek(0)
        err.seek(0)
        return proc.returncode, out.read(), err.read(), usage.ru_utime + usage.ru_stime


def run_ours(method: str, mode: str, work: Path, overrides: list[str] = (), steps: int = STEPS, tag: str = "") -> dict:
    recipe = f"recipes/{METHODS[method]}_smollm2_{mode}.yaml"
    out = work / f"{method}_{mode}{tag}"
    cmd = [sys.executable, "-m", "align.cli", "profile-memory", recipe, "eval.enabled=false", "train.threads=1", "tracking.wandb=false",
           "train.log_every=1", f"train.cpu_allocator={ALLOCATOR}", f"output_dir={out}", *overrides, "--steps", str(steps)]
    t0 = time.time()
    returncode, _, stderr, cpu_s = run_child(cmd, env_one_thread(), str(REPO))
    if returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{stderr[-3000:]}")
    profile = json.loads((out / "memory_profile.json").read_text())
    top = [v for k, v in profile["phases"].items() if "/" not in k or k.startswith("update/")]
    seconds = sum(v["seconds"] for k, v in profile["phases"].items() if k in ("rollout", "scoring", "old_logprobs",
                  "reference_logprobs", "values", "update/forward", "update/backward", "optimizer"))
    summary = json.loads((out / "summary.json").read_text())
    result = {"case": f"{method}_{mode}{tag}", "method": method, "mode": mode, "recipe": recipe, "peak": profile["process_peak_bytes"],
              "baseline": profile["baseline_bytes"], "step_s": seconds / steps, "wall_s": round(time.time() - t0, 1),
              "cpu_s": round(cpu_s, 1), "allocator": summary.get("cpu_allocator", "glibc"),
              "timeline": profile["timeline"], "by_role": summary.get("memory_by_role") or summary.get("memory_bytes"),
              "highest_phase": max(profile["phases"], key=lambda k: profile["phases"][k]["peak_bytes"]) if top else None}
    print(f"  ran {result['case']} ({result['allocator']}): peak {result['peak'] / GIB:.2f} GiB, baseline {result['baseline'] / GIB:.2f}, "
          f"{result['step_s']:.1f} s/step ({result['wall_s']:.0f} s, {result['cpu_s']:.0f} CPU s)", file=sys.stderr, flush=True)
    return result


def iteration_peaks(timeline: list) -> list[float]:
    """Each iteration's peak (GiB): the timeline's entries from one `rollout` to the next."""
    peaks: list[float] = []
    for name, _, _, peak, _ in timeline:
        if name == "rollout":
            peaks.append(0.0)
        if peaks and not name.startswith("eval"):
            peaks[-1] = max(peaks[-1], peak / GIB)
    return peaks


# ---- TRL, in a process of its own ---------------------------------------------------------------

def _rss_peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def trl_case(method: str, steps: int) -> dict:
    import torch

    torch.set_num_threads(1)
    import trl  # noqa: F401  (the baseline includes the library)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from align.compat import checkpointing_args
    from align.config import LoraSettings, load_recipe
    from align.fetched_bases import fetched_base_path
    from align.lora import peft_lora_config

    baseline = _rss_peak()
    cfg = load_recipe(REPO / f"recipes/{METHODS[method]}_smollm2_lora.yaml", [])
    path = str(fetched_base_path(cfg.model))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    peft_config = peft_lora_config(model, LoraSettings(rank=cfg.lora.rank, alpha=cfg.lora.alpha, targets=cfg.lora.targets, dropout=0.0))
    times: list[float] = []
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from trl_timing import step_timer  # noqa: E402 (this folder)

    common = dict(output_dir=tempfile.mkdtemp(), report_to=[], use_cpu=not torch.cuda.is_available(), bf16=False,
                  max_steps=steps, learning_rate=cfg.optimizer.lr, lr_scheduler_type="constant", warmup_steps=0,
                  max_grad_norm=cfg.optimizer.max_grad_norm, optim="adamw_torch", weight_decay=0.0, save_strategy="no",
                  logging_steps=1, dataloader_num_workers=0, disable_tqdm=True, seed=0,
                  **checkpointing_args(True), gradient_checkpointing_kwargs={"use_reentrant": False})
    if method == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        from align.tasks.chat_arithmetic import chat_arithmetic_prompts
        from reward_models.base import build_reward

        reward = build_reward("arithmetic_correctness")
        g, r = cfg.grpo, cfg.rollout
        rows = chat_arithmetic_prompts("train", g.prompts_per_iteration * steps, seed=0)

        def correctness(prompts, completions, answer, **kw):
            texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
            return reward(prompts, texts, answers=answer).scores

        args = GRPOConfig(**common, per_device_train_batch_size=g.prompts_per_iteration * g.group_size, num_generations=g.group_size,
                          steps_per_generation=1, num_iterations=1, gradient_accumulation_steps=1,
                          max_completion_length=r.max_new_tokens, temperature=r.temperature, beta=0.0, loss_type="grpo")
        data = Dataset.from_list([{"prompt": [{"role": "user", "content": row["prompt"]}], "answer": row["answer"]} for row in rows])
        trainer = GRPOTrainer(model=model, reward_funcs=correctness, args=args, processing_class=tokenizer,
                              train_dataset=data, peft_config=peft_config, callbacks=[step_timer(times)()])
    else:
        from trl import DPOConfig, DPOTrainer

        from align.tasks.onpolicy_pairs import pairs_dir

        pairs = [json.loads(line) for line in (pairs_dir(cfg.data.task) / "train.jsonl").read_text().splitlines()]
        pairs = [{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs]
        need = cfg.train.batch_size * steps
        args = DPOConfig(**common, per_device_train_batch_size=cfg.train.batch_size, gradient_accumulation_steps=1,
                         beta=cfg.dpo.beta, loss_type="sigmoid", max_length=cfg.data.max_length)
        trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list((pairs * (need // len(pairs) + 1))[:need]),
                             processing_class=tokenizer, peft_config=peft_config, callbacks=[step_timer(times)()])
    trainer.train()
    return {"case": f"trl_{method}", "peak": _rss_peak(), "baseline": baseline, "step_s": sum(times[1:]) / max(len(times) - 1, 1)}


def run_trl(method: str, work: Path, malloc: str) -> dict:
    """TRL's `method` in its own process: with glibc's defaults, or ("ours") with the allocator and
    settings our cases run with (the same library preloaded, or glibc at our mmap threshold)."""
    extra = {}
    if malloc == "ours":
        name, path = resolve_allocator(ALLOCATOR)
        extra = restart_env(path, {}) if path is not None else {"MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD}
        extra.pop(RESTART_MARK, None)
    t0 = time.time()
    returncode, stdout, stderr, cpu_s = run_child([sys.executable, __file__, "--trl-case", method], env_one_thread(extra), str(work))
    if returncode != 0:
        raise SystemExit(f"TRL {method} failed:\n{stderr[-3000:]}")
    result = {**json.loads(stdout.strip().splitlines()[-1]), "malloc": malloc, "wall_s": round(time.time() - t0, 1),
              "cpu_s": round(cpu_s, 1)}
    print(f"  ran trl {method} ({malloc} malloc): peak {result['peak'] / GIB:.2f} GiB, baseline {result['baseline'] / GIB:.2f}, "
          f"{result['step_s']:.1f} s/step", file=sys.stderr, flush=True)
    return result


def above(r: dict) -> float:
    return (r["peak"] - r["baseline"]) / GIB


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(METHODS), default=list(METHODS), help="trainers to run")
    parser.add_argument("--no-trl", action="store_true", help="skip the TRL pair")
    parser.add_argument("--levels", type=int, default=20, help="GRPO LoRA iterations for the per-iteration peaks (0: skip)")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    parser.add_argument("--allocator", default="auto", choices=["auto", "glibc", "tcmalloc", "jemalloc"],
                        help="train.cpu_allocator of our cases (auto: tcmalloc where installed; align.allocator); "
                             "TRL's equal-settings case runs with the same")
    parser.add_argument("--jobs", type=int, default=2, help="cases at a time, one process and one thread each (default 2)")
    parser.add_argument("--trl-case", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    global ALLOCATOR
    ALLOCATOR = args.allocator
    if args.trl_case:
        print(json.dumps(trl_case(args.trl_case, steps=STEPS + 1)), flush=True)
        return 0

    started = time.time()
    work = Path(tempfile.mkdtemp(prefix="bench_memory_smollm2_"))
    # Every case is a process of its own; `--jobs` of them run side by side, the longest first
    # (the levels run), so the whole command fits ~20 minutes on 2 cores (18 measured). A peak is its own
    # process's, so side by side does not change it; step times then include the neighbour's
    # memory traffic, the same for LoRA and full.
    cases: dict = {}
    if args.levels and "grpo" in args.only:
        cases[("levels",)] = lambda: run_ours("grpo", "lora", work, steps=args.levels, tag="_levels")
    if "grpo" in args.only:
        cases[("old",)] = lambda: run_ours("grpo", "lora", work, OLD_DEFAULTS, tag="_old_defaults")
    for m in args.only:
        for mode in ("lora", "full"):
            cases[(m, mode)] = lambda m=m, mode=mode: run_ours(m, mode, work)
    for m in ("grpo", "dpo"):
        for malloc in ("glibc", "ours"):
            if m in args.only and not args.no_trl:
                cases[("trl", m, malloc)] = lambda m=m, malloc=malloc: run_trl(m, work, malloc)
    try:
        with ThreadPoolExecutor(args.jobs) as pool:
            futures = {key: pool.submit(case) for key, case in cases.items()}
            done = {key: future.result() for key, future in futures.items()}
    finally:
        # The cases' run folders hold full-mode checkpoints (~13 GB in all); only the numbers matter.
        shutil.rmtree(work, ignore_errors=True)
    rows = {(m, mode): done[(m, mode)] for m in args.only for mode in ("lora", "full")}
    old, levels = done.get(("old",)), done.get(("levels",))
    trl = {key[1:]: r for key, r in done.items() if key[0] == "trl"}  # (method, malloc) -> result

    print(f"SmolLM2-135M-Instruct (builtin:smollm2-135m-instruct), float32, CPU, 1 thread per process, {args.jobs} at a time, evaluation off, "
          f"{STEPS} steps per case; peaks are process peak RSS, 'above base' subtracts that process's library baseline; "
          f"train.cpu_allocator={ALLOCATOR}")
    print(f"{'case':<24}{'allocator':>10}{'peak GiB':>9}{'baseline':>9}{'above base':>11}{'s/step':>8}{'CPU s':>7}  highest phase / memory by role (MiB)")
    for r in [*rows.values(), *([old] if old else [])]:
        roles = ", ".join(f"{k} {v / 2**20:.0f}" for k, v in (r["by_role"] or {}).items() if is_role_bytes(k, v))
        print(f"{r['case']:<24}{r['allocator']:>10}{r['peak'] / GIB:>9.2f}{r['baseline'] / GIB:>9.2f}{above(r):>11.2f}{r['step_s']:>8.1f}"
              f"{r['cpu_s']:>7.0f}  {r['highest_phase']}; {roles}")
    for r in trl.values():
        print(f"{r['case'] + ' (' + r['malloc'] + ')':<24}{r['peak'] / GIB:>9.2f}{r['baseline'] / GIB:>9.2f}{above(r):>11.2f}{r['step_s']:>8.1f}")
    if old is not None:
        new = rows[("grpo", "lora")]
        print(f"grpo lora, the defaults before -> now: peak above base {above(old):.2f} -> {above(new):.2f} GiB, "
              f"step {old['step_s']:.1f} -> {new['step_s']:.1f} s (x{new['step_s'] / old['step_s']:.2f}), "
              f"CPU time of the whole case {old['cpu_s']:.0f} -> {new['cpu_s']:.0f} s (x{new['cpu_s'] / old['cpu_s']:.2f})")
    if levels is not None:
        peaks = iteration_peaks(levels["timeline"])
        print(f"grpo lora, peak of each of {len(peaks)} iterations (GiB): " + " ".join(f"{p:.2f}" for p in peaks))
    for (m, malloc), r in trl.items():
        ours = rows[(m, "lora")]
        if malloc == "glibc":
            print(f"ours/trl with TRL at glibc's default allocator (what a TRL user gets), {m}: {above(ours) / above(r):.2f} "
                  f"(step time {ours['step_s'] / r['step_s']:.2f})")
    for m in args.only:
        lora, full = rows[(m, "lora")], rows[(m, "full")]
        print(f"peak memory lora/full (smollm2, {m}): {above(lora) / above(full):.2f}  (raw {lora['peak'] / full['peak']:.2f}; "
              f"target <= {TARGETS[m]}; step time lora/full {lora['step_s'] / full['step_s']:.2f})")
    for (m, malloc), r in trl.items():
        if malloc == "ours":
            ours = rows[(m, "lora")]
            print(f"peak memory ours/trl (smollm2, {m}): {above(ours) / above(r):.2f}  (raw {ours['peak'] / r['peak']:.2f}; "
                  f"target <= 0.6; step time ours/trl {ours['step_s'] / r['step_s']:.2f})")
    print(f"({(time.time() - started) / 60:.0f} minutes)")
    if args.out:
        Path(args.out).write_text(json.dumps({"ours": [*rows.values()], "old": old, "levels": levels, "trl": [*trl.values()]}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
