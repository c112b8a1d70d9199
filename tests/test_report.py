"""`align report`: a short PPO and a DPO run through the CLI as a user runs them, then one page of
both runs (overlaid) and one of a parity study. What must hold: training prints the report
command right before the run directory (the last line); the page is self-contained (no URL it
would fetch, its script inline); every section and every sample is there; the study page has the
verdict, the parity table and its two charts. The page's look in a real browser is
tests/test_report_browser.py.

Run: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_report.py` (about 15 s).
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest

from align.cli import main
from align.report import build_report, verdict

REPO = Path(__file__).resolve().parent.parent
COMMON = ["model=scratch:test", "lora.rank=4", "train.log_every=1", "train.steps=2", "train.eval_every=1",
          "optimizer.lr=0.01", "optimizer.warmup_steps=0", "train.threads=1", "eval.num_prompts=4",
          "eval.max_new_tokens=4", "tracking.wandb=false", "tracking.samples=3"]
PPO = ["method=ppo", "data.task=arithmetic", "data.num_train=64", "ppo.rollout_batch_size=8", "ppo.minibatch_size=4",
       "rollout.max_new_tokens=6", "ppo.ppo_epochs=1"]
DPO = ["method=dpo", "data.task=preference", "data.num_train=64", "data.num_eval=16", "train.batch_size=8"]




@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """A PPO and a DPO run (module-scoped: several tests read them)."""
    import types

    from align.cli import _train

    root = tmp_path_factory.mktemp("runs")
    for name, overrides in (("ppo", PPO), ("dpo", DPO)):
        _train(types.SimpleNamespace(recipe=None, overrides=[*COMMON, *overrides, f"output_dir={root / name}"]))
    return root / "ppo", root / "dpo"


def chart_data(page: str) -> list[dict]:
    return json.loads(re.search(r'<script type="application/json" id="chart-data">(.*?)</script>', page, re.S).group(1))


def test_training_prints_the_report_command_before_the_run_directory(tmp_path, capsys):
    recipe = tmp_path / "ppo.yaml"
    recipe.write_text("method: ppo\n")
    out = tmp_path / "ppo"
    assert main(["train", str(recipe), *COMMON, *PPO, "train.steps=1", "eval.enabled=false", f"output_dir={out}"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == str(out)  # the run directory stays the very last line
    assert lines[-2] == f"report: align report {out} -o {out / 'report.html'}"


def test_report_of_two_runs_overlays_them(two_runs, tmp_path, capsys):
    ppo, dpo = two_runs
    target = tmp_path / "both.html"
    assert main(["report", str(ppo), str(dpo), "-o", str(target)]) == 0
    assert capsys.readouterr().out.strip() == str(target)
    page = target.read_text()
    # self-contained: no URL the page would fetch (the SVG namespace is a name, not a request)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)
    assert "<link" not in page and re.sub(r"http://www\.w3\.org/2000/svg", "", page).count("http") == 0
    for heading in ("runs", "config", "evaluation before → after", "learning curves", "memory by role", "time split",
                    "sampled completions"):
        assert f"<h2>{heading}</h2>" in page, heading
    charts = chart_data(page)
    titles = [c["title"] for c in charts]
    assert {"loss", "reward and gold", "KL to the reference", "accuracy"} <= set(titles)
    loss = next(c for c in charts if c["title"] == "loss")
    assert {s["name"].split(":")[0] for s in loss["series"]} == {"ppo", "dpo"}  # both runs on the same axes
    memory = next(c for c in charts if c["kind"] == "bar" and c["title"].startswith("memory"))
    assert memory["categories"] == ["ppo", "dpo"] and {"base", "policy", "value", "optimizer_state"} <= {s["name"] for s in memory["stacks"]}
    timing = next(c for c in charts if c["title"].startswith("where the time went"))
    assert {"setup", "rollout", "update", "evaluation"} <= {s["name"] for s in timing["stacks"]}
    # the sampled completions of the first and last evaluation and of the last PPO iteration
    samples = [json.loads(line) for line in (ppo / "samples.jsonl").read_text().splitlines()]
    last_rollout = [s for s in samples if s["kind"] == "rollout" and s["step"] == 2]
    assert len(last_rollout) == 3
    for s in last_rollout:
        assert f"<code>{__import__('html').escape(s['response'])}</code>" in page
    assert "rollouts of iteration 2" in page and "evaluation before training" in page and "evaluation at step 2" in page


def test_report_default_path_and_errors(two_runs, tmp_path, capsys):
    ppo, _ = two_runs
    assert main(["report", str(ppo)]) == 0
    assert (ppo / "report.html").exists()
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_report_of_the_ppo_parity_study():
    """results/parity_ppo (committed): metric vs LR with error bars per configuration, the curves
    at each best LR, the table, the verdict."""
    page = build_report([REPO / "results" / "parity_ppo"])
    charts = chart_data(page)
    by_lr, curves = charts
    assert by_lr["xlog"] and [s["name"] for s in by_lr["series"]] == ["full", "lora_r1", "lora_r4", "lora_r8"]
    assert all(len(s["err"]) == len(s["points"]) >= 4 for s in by_lr["series"])
    assert all(s["band"] and s["points"][-1][0] == 30 for s in curves["series"])
    assert "lora_r8 matches full" in page and "lora_r1 trails full" in page
    assert "<h2>parity table</h2>" in page and "0.833 ± 0.002" in page  # lora_r8 in results/parity_ppo/table.md


def test_verdict_in_units_of_the_combined_seed_spread():
    rows = [{"configuration": "full", "metric_mean": 0.80, "metric_std": 0.03},
            {"configuration": "a", "metric_mean": 0.78, "metric_std": 0.04},   # -0.02 / 0.05 = -0.4: matches
            {"configuration": "b", "metric_mean": 0.70, "metric_std": 0.04},   # -2.0: trails
            {"configuration": "c", "metric_mean": 0.90, "metric_std": 0.0, "edge": "EDGE", "best_lr": 1e-2}]  # +3.3: beats
    lines = verdict(rows)
    assert lines[0].startswith("a matches full") and "-0.4 combined" in lines[0]
    assert lines[1].startswith("b trails full") and "-2.0 combined" in lines[1]
    assert lines[2].startswith("c beats full") and "EDGE" in lines[2]
    assert verdict(rows[1:]) == ["No 'full' configuration: nothing to compare against."]


@pytest.mark.parametrize("method, overrides", [
    ("sft", ["method=sft", "data.task=arithmetic", "data.num_train=64", "data.num_eval=16", "train.batch_size=8"]),
    ("reward", ["method=reward", "data.task=preference", "data.num_train=64", "data.num_eval=16", "train.batch_size=8"]),
    ("grpo", ["method=grpo", "data.task=arithmetic", "data.num_train=64", "rollout.max_new_tokens=6",
              "grpo.prompts_per_iteration=4", "grpo.group_size=4", "grpo.minibatch_size=8"]),
])
def test_every_method_gives_a_page(method, overrides, tmp_path):
    import types

    from align.cli import _train

    out = tmp_path / method
    _train(types.SimpleNamespace(recipe=None, overrides=[*COMMON, *overrides, f"output_dir={out}"]))
    page = build_report([out])
    charts = chart_data(page)
    assert charts and all(c.get("series") or c.get("stacks") for c in charts)
    assert any(c["title"] == "loss" for c in charts) and "<h2>sampled completions</h2>" in page


def test_study_json_from_parity_round_trips(tmp_path):
    """parity.py's study.json (what `align report STUDY` reads), with a metric some runs lack (NaN)."""
    sys.path.insert(0, str(REPO / "scripts" / "studies"))
    import parity
    import sweep

    rows = [{"configuration": name, "best_lr": lr, "edge": "", "metric_mean": mean, "metric_std": 0.01,
             "metric_before": 0.5, "seeds": 3, "peak_memory_mb": 100.0, "trainable_parameters": 10,
             "wall_time_s": 1.0, "by_lr": {lr / 3: (mean - 0.1, 0.02), lr: (mean, 0.01), lr * 3: (math.nan, math.nan)},
             "curves": [{0: 0.5, 10: mean}, {0: 0.5, 10: mean + 0.01}]}
            for name, lr, mean in (("full", 1e-4, 0.8), ("lora_r8", 3e-4, 0.79))]
    study = parity.STUDIES["ppo"]
    (tmp_path / "table.csv").write_text("configuration\n")
    sweep.write_study_json(study, rows, tmp_path, "parity ppo", ["a note"], tmp_path / "runs")
    data = json.loads((tmp_path / "study.json").read_text())
    assert data["verdict"] == [line for line in verdict(data["rows"])] and "lora_r8 matches full" in data["verdict"][0]
    page = build_report([tmp_path])
    by_lr, curves = chart_data(page)
    assert [len(s["points"]) for s in by_lr["series"]] == [2, 2]  # the NaN point is left out, not drawn as 0
    assert curves["series"][0]["band"][1][2] == pytest.approx(0.805 + 0.5 ** 0.5 * 0.01)  # mean + std of 0.8 and 0.81
    assert "a note" in page
