"""What the "ours vs TRL" scripts share (bench_dpo.py, bench_grpo.py, grpo_vs_trl.py): a TRL
callback that times every optimizer step, and the ratio lines the benchmarks end with.

Not a script of its own; the benchmarks import it (they run as `python scripts/benchmarks/NAME.py`,
so this folder is on their path).
"""

from __future__ import annotations

import time


def step_timer(times: list[float]):
    """A `transformers.TrainerCallback` that appends each step's seconds (step begin to step end)
    to `times`; subclass it to add hooks."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)

    return StepTimer


def print_ratios(results: dict[str, dict]) -> None:
    """The benchmarks' last lines, exactly: ours/TRL step time and peak memory, then LoRA/full."""
    ours, trl, full = results["ours_lora"], results["trl_lora"], results["ours_full"]
    print(f"time ours/trl: {ours['step_s'] / trl['step_s']:.3f}")
    print(f"memory ours/trl: {ours['peak_bytes'] / trl['peak_bytes']:.3f}")
    print(f"time lora/full: {ours['step_s'] / full['step_s']:.3f}")
