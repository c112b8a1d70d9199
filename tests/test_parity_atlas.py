"""The replication-atlas studies of `scripts/studies/parity.py` (issue 13): SFT parity (`sft`), batch size
(`sft_batch`), adapter placement at matched parameters (`sft_targets`, `grpo_targets`) and 1/r vs
1/sqrt(r) scaling (`sft_rslora`). Well-formed grids and configurations, run folders shared between
studies only where the command is the same, lower-is-better best-LR picking (SFT's loss) on a
hand-made table, and a smoke run of each study's smallest configuration (1 LR, 1 seed, a few steps
on `scratch:test`) with its table and plots."""

from __future__ import annotations

import json
import math
import statistics

import pytest

ATLAS = ("sft", "sft_batch", "sft_targets", "grpo_targets", "sft_rslora")

# the `parity` fixture (scripts/studies/parity.py as a module) is conftest's


def _span_ok(lrs: list[float], points: int, span: float) -> bool:
    return len(lrs) >= points and max(lrs) / min(lrs) >= span - 1e-9 and lrs == sorted(lrs)


def test_shared_run_folders_are_the_same_run(parity, sweep):
    """Every study, old and new: one run folder (runs dir + configuration-lr-seed) is one command."""
    commands: dict[tuple[str, str], tuple] = {}
    for method, study in parity.STUDIES.items():
        runs_dir = study.runs_dir or f"runs/parity_{method}"
        for c in study.configurations:
            assert len({sweep.lr_tag(lr) for lr in c.lrs}) == len(c.lrs), (method, c.name)
            for lr in c.lrs:
                key = (runs_dir, sweep.run_name(c, lr, 0))
                command = (study.recipe, tuple(study.overrides), tuple(c.overrides))
                assert commands.setdefault(key, command) == command, (method, key)
    assert parity.STUDIES["grpo_targets"].runs_dir == "runs/parity_grpo"
    assert {parity.STUDIES[m].runs_dir for m in ATLAS if m != "grpo_targets"} == {"runs/atlas_sft"}


def test_dpo_follow_up_studies_stand_on_the_dpo_study(parity, repo):
    """`dpo_smollm2_steps40` is `dpo_smollm2` at 40 steps and nothing else changed, at each
    configuration's best LR of the committed table; `dpo_smollm2_fine_lr` shares the study's run
    folder and overrides (so reusing its finished runs is sound), and its grids hold each best with
    a point on either side closer than the study's own."""
    import csv

    from align.config import load_recipe

    main = parity.STUDIES["dpo_smollm2"]
    best = {r["configuration"]: float(r["best_lr"]) for r in csv.DictReader((repo / main.out_dir / "table.csv").open())}
    steps40, fine = parity.STUDIES["dpo_smollm2_steps40"], parity.STUDIES["dpo_smollm2_fine_lr"]
    assert steps40.overrides == [*main.overrides, "train.steps=40"] and steps40.recipe == main.recipe
    assert {c.name: c.lrs for c in steps40.configurations} == {name: [lr] for name, lr in best.items()}
    main_overrides = {c.name: c.overrides for c in main.configurations}
    for c in steps40.configurations:
        assert c.overrides == main_overrides[c.name]
        cfg = load_recipe(repo / steps40.recipe, [*steps40.overrides, *c.overrides])
        assert cfg.train.steps == 40 and cfg.train.batch_size == 8 and cfg.eval.num_prompts == 128
    assert fine.runs_dir == (main.runs_dir or "runs/parity_dpo_smollm2")  # sweep.main's default for dpo_smollm2
    assert fine.recipe == main.recipe and fine.overrides == main.overrides
    main_lrs = {c.name: c.lrs for c in main.configurations}
    for c in fine.configurations:
        assert c.overrides == main_overrides[c.name] and c.lrs == sorted(c.lrs)
        i = c.lrs.index(best[c.name])
        below, above = c.lrs[i - 1], c.lrs[i + 1]
        j = main_lrs[c.name].index(best[c.name])
        assert main_lrs[c.name][j - 1] < below < best[c.name] < above < main_lrs[c.name][j + 1]
    # dpo_smollm2_fine_best: the finer grid's committed bests, 3 seeds, the same runs and overrides
    fine_best = parity.STUDIES["dpo_smollm2_fine_best"]
    best_fine = {r["configuration"]: float(r["best_lr"]) for r in csv.DictReader((repo / fine.out_dir / "table.csv").open())}
    assert {c.name: c.lrs for c in fine_best.configurations} == {name: [lr] for name, lr in best_fine.items()}
    assert (fine_best.runs_dir, fine_best.overrides, fine_best.seeds) == (fine.runs_dir, main.overrides, [0, 1, 2])


def test_atlas_studies_are_well_formed(parity, repo):
    from align.config import load_recipe

    for method in ATLAS:
        study = parity.STUDIES[method]
        assert study.out_dir.startswith("results/atlas/"), method
        assert set(study.smoke_configurations) <= {c.name for c in study.configurations}, method
        for c in study.configurations:
            assert c.lrs == sorted(c.lrs) and len(c.lrs) >= 3, (method, c.name)
            load_recipe(repo / study.recipe, [*study.overrides, *c.overrides])  # every key and value is valid
            load_recipe(repo / study.recipe, [*study.overrides, *c.overrides, *study.smoke_overrides])
        if study.axis:
            assert set(study.axis[1]) <= {c.name for c in study.configurations}, method

    sft = parity.STUDIES["sft"]
    assert sft.metric == "loss" and not sft.higher_is_better and sft.secondary == ["accuracy_sampled", "accuracy_greedy"]
    assert [c.name for c in sft.configurations] == ["full", "lora_r1", "lora_r4", "lora_r8", "lora_r32"]
    assert len(sft.seeds) == 3
    cfg = load_recipe(repo / sft.recipe, sft.overrides)
    assert (cfg.train.steps, cfg.train.batch_size, cfg.train.eval_every, cfg.eval.num_prompts) == (150, 32, 50, 256)
    assert not cfg.optimizer.lr_rule and not cfg.tracking.wandb and cfg.train.threads == 1
    for c in sft.configurations:
        assert _span_ok(c.lrs, 4, 30), c.name  # at least 4 points spanning at least 30x

    batches: dict[str, set[int]] = {}
    for c in parity.STUDIES["sft_batch"].configurations:
        cfg = load_recipe(repo / sft.recipe, [*sft.overrides, *c.overrides])
        examples = cfg.train.batch_size * cfg.train.steps
        assert abs(examples - parity.SFT_EXAMPLES) <= 0.02 * parity.SFT_EXAMPLES, c.name  # a fixed number of examples seen
        assert abs(cfg.optimizer.warmup_steps * cfg.train.batch_size - 320) <= 64, c.name  # warmup: the same share
        assert len(c.lrs) >= 3 and max(c.lrs) / min(c.lrs) >= 9.9, c.name
        batches.setdefault(c.name.split("_bs")[0], set()).add(cfg.train.batch_size)
    assert set(batches) == {"full", "lora_r1", "lora_r8"} and all(b == {8, 32, 128} for b in batches.values())

    for method in ("sft_targets", "grpo_targets"):
        study = parity.STUDIES[method]
        targets = {c.name: load_recipe(repo / study.recipe, [*study.overrides, *c.overrides]).lora for c in study.configurations}
        assert {n: (t.targets, t.rank) for n, t in targets.items() if n != "full"} == {
            "lora_r8": ("all", 8), "lora_attention_r23": ("attention", 23), "lora_mlp_r8": ("mlp", 8)}, method
        assert all(len(c.lrs) >= 3 for c in study.configurations)
    assert len(parity.STUDIES["sft_targets"].seeds) == 3 and len(parity.STUDIES["grpo_targets"].seeds) >= 2

    rs = {c.name: c for c in parity.STUDIES["sft_rslora"].configurations}
    by_name = {c.name: c for c in sft.configurations}
    assert "lora_rs_r1" not in rs  # alpha / sqrt(1) = alpha / 1: lora_r1 is that run
    for rank in (1, 4, 8, 32):
        assert rs[f"lora_r{rank}"] == by_name[f"lora_r{rank}"]  # the 1/r rows are the sft study's runs
        if rank == 1:
            continue
        assert rs[f"lora_rs_r{rank}"].lrs == by_name[f"lora_r{rank}"].lrs
        lora = load_recipe(repo / sft.recipe, [*sft.overrides, *rs[f"lora_rs_r{rank}"].overrides]).lora
        assert lora.rslora and lora.rank == rank and lora.targets == "all"
    assert parity.STUDIES["sft_rslora"].axis_best_lr and len(parity.STUDIES["sft_rslora"].seeds) == 3


def test_attention_rank_matches_the_parameters_of_all_at_rank_8(parity, repo):
    """Counted on the peft model of the built-in base, as the trainers build it."""
    from peft import get_peft_model

    from align.config import load_recipe
    from align.lora import peft_lora_config
    from align.models import load_model_and_tokenizer

    base, _ = load_model_and_tokenizer("builtin:tiny-arith")
    study = parity.STUDIES["sft_targets"]
    counts = {}
    for c in study.configurations[1:]:
        lora = load_recipe(repo / study.recipe, [*study.overrides, *c.overrides]).lora
        model = get_peft_model(base, peft_lora_config(base, lora))
        counts[c.name] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        base = model.unload()  # the plain base again, for the next configuration
    assert counts["lora_r8"] == 47_104 and counts["lora_mlp_r8"] == 30_720  # the counts in parity.py's comment
    assert abs(counts["lora_attention_r23"] / counts["lora_r8"] - 1) <= 0.03
    # ... and no other integer rank is closer
    per_rank = counts["lora_attention_r23"] / parity.ATTENTION_MATCHED_RANK
    assert all(abs(r * per_rank - counts["lora_r8"]) >= abs(counts["lora_attention_r23"] - counts["lora_r8"]) for r in (22, 24))


def test_lower_is_better_picks_the_lowest_loss(sweep, tmp_path):
    """A hand-made table of losses: the best LR is the lowest seed mean, a NaN (diverged) LR is
    never the best, EDGE is judged on that pick, and the verdict says a lower loss beats FullFT."""
    scored = {1e-4: (0.050, 0.001), 3e-4: (0.031, 0.001), 1e-3: (0.040, 0.002), 3e-3: (math.nan, math.nan)}
    assert sweep.best_lr(scored, higher_is_better=False) == 3e-4
    assert sweep.best_lr(scored, higher_is_better=True) == 1e-4
    assert sweep.best_lr({1e-3: (math.nan, math.nan)}, higher_is_better=False) == 1e-3

    study = sweep.Study(recipe="recipes/sft_lora.yaml", overrides=[], metric="loss", metric_label="loss",
                         higher_is_better=False, seeds=[0, 1], configurations=[
                             sweep.Configuration("full", ["mode=full"], [1e-4, 3e-4, 1e-3]),
                             sweep.Configuration("lora_r8", ["mode=lora"], [1e-3, 3e-3, 1e-2])])
    losses = {("full", 1e-4): (0.06, 0.062), ("full", 3e-4): (0.040, 0.041), ("full", 1e-3): (0.05, 0.05),
              ("lora_r8", 1e-3): (0.09, 0.08), ("lora_r8", 3e-3): (0.05, 0.051), ("lora_r8", 1e-2): (0.030, 0.031)}
    for c in study.configurations:
        for lr in c.lrs:
            for seed, loss in zip(study.seeds, losses[c.name, lr]):
                run = tmp_path / "runs" / sweep.run_name(c, lr, seed)
                run.mkdir(parents=True)
                (run / "summary.json").write_text(json.dumps({
                    "eval_before": {"loss": 0.2}, "eval_after": {"loss": loss}, "peak_memory_bytes": 2**20,
                    "trainable_parameters": 10, "wall_time_s": 1.0}))
    rows = {r["configuration"]: r for r in sweep.collect(study, study.configurations, study.seeds, tmp_path / "runs")}
    assert (rows["full"]["best_lr"], rows["full"]["edge"]) == (3e-4, "")
    assert rows["full"]["metric_mean"] == pytest.approx(0.0405)
    assert (rows["lora_r8"]["best_lr"], rows["lora_r8"]["edge"]) == (1e-2, "EDGE")
    out = tmp_path / "out"
    text = sweep.write_tables(study, list(rows.values()), out, "hand-made", [])
    assert "the lowest seed mean" in text and "**EDGE**" in text
    sweep.write_study_json(study, list(rows.values()), out, "hand-made", [], tmp_path / "runs")
    data = json.loads((out / "study.json").read_text())
    assert data["higher_is_better"] is False and data["verdict"][0].startswith("lora_r8 beats full")


@pytest.mark.slow
@pytest.mark.parametrize("method", ATLAS)
def test_atlas_study_smoke(tmp_path, repo, method):
    from tests.conftest import parity_smoke

    rows, run, out = parity_smoke(repo, tmp_path, method)
    summary = json.loads(run.read_text())
    assert summary["method"] == method.split("_")[0]
    if method.endswith("_targets"):
        assert summary["lora_targets"] == "attention" and summary["lora_rank"] == 23
    if method == "sft_rslora":
        assert json.loads((run.parent / "adapter" / "adapter_config.json").read_text())["use_rslora"] is True
        assert (out / "best_lr_vs_axis.png").stat().st_size > 0
    if method in ("sft_batch", "sft_rslora"):
        assert (out / "metric_vs_axis.png").stat().st_size > 0 and (out / "table_axis.csv").stat().st_size > 0
    if method != "grpo_targets":
        assert json.loads((out / "study.json").read_text())["higher_is_better"] is False


def test_real_base_studies_are_well_formed(parity, repo):
    """The real-base studies (issue 25): their recipes and overrides load, every grid has at least
    3 sorted points, 2+ seeds, the same completions per run for every configuration."""
    from align.config import load_recipe

    rl_shapes = set()
    for name, method in (("grpo_smollm2", "grpo"), ("ppo_smollm2", "ppo"), ("dpo_smollm2", "dpo")):
        study = parity.STUDIES[name]
        assert study.out_dir == f"results/atlas/real_base/{method}" and len(study.seeds) >= 2
        assert study.recipe == f"recipes/{method}_smollm2_lora.yaml"
        assert [c.name for c in study.configurations] == ["full", "lora_r1", "lora_r8"]
        shapes = set()
        for c in study.configurations:
            assert c.lrs == sorted(c.lrs) and len(c.lrs) >= 3, c.name
            cfg = load_recipe(repo / study.recipe, [*study.overrides, *c.overrides])
            assert cfg.model == "builtin:smollm2-135m-instruct" and not cfg.optimizer.lr_rule and cfg.train.threads == 1
            completions = {"grpo": lambda: cfg.grpo.prompts_per_iteration * cfg.grpo.group_size,
                           "ppo": lambda: cfg.ppo.rollout_batch_size, "dpo": lambda: cfg.train.batch_size}[method]()
            shapes.add((cfg.train.steps, completions, cfg.eval.num_prompts))
            smoke = load_recipe(repo / study.recipe, [*study.overrides, *c.overrides, *study.smoke_overrides])
            assert smoke.model == "scratch:test" and smoke.method == method
        assert len(shapes) == 1, name  # the same number of completions (and held-out prompts) everywhere
        if method != "dpo":
            rl_shapes |= shapes
    assert len(rl_shapes) == 1  # GRPO and PPO see as many completions as each other


def test_later_seeds_run_only_where_the_first_seed_is_near_the_best(sweep, tmp_path):
    """`Study.later_seeds_within`: seed 1 at the grid points within the margin of the best seed 0;
    the others are listed, not run; a configuration with its first seed incomplete waits."""
    a = sweep.Configuration("a", [], [1e-4, 3e-4, 1e-3])
    b = sweep.Configuration("b", [], [1e-4, 3e-4])
    study = sweep.Study(recipe="r.yaml", overrides=[], configurations=[a, b], metric="acc", metric_label="acc",
                        seeds=[0, 1], later_seeds_within=0.1)
    for lr, value in ((1e-4, 0.10), (3e-4, 0.30), (1e-3, 0.22)):
        run = tmp_path / sweep.run_name(a, lr, 0)
        run.mkdir()
        (run / "summary.json").write_text(json.dumps({"eval_after": {"acc": value}}))
    (tmp_path / sweep.run_name(b, 1e-4, 0)).mkdir()  # b's first seed is still running
    jobs, notes = sweep.later_seed_jobs(study, [a, b], [0, 1], tmp_path)
    assert [(c.name, lr, s) for c, lr, s in jobs] == [("a", 3e-4, 1), ("a", 1e-3, 1)]
    assert notes == ["a at LR 0.0001: seed 0 only (0.100, 0.200 from its configuration's best; later seeds run within 0.1)."]
    lower = sweep.Study(**{**vars(study), "higher_is_better": False})  # a loss: the lowest is the best
    assert [lr for _, lr, _ in sweep.later_seed_jobs(lower, [a], [0, 1], tmp_path)[0]] == [1e-4]
    every = sweep.Study(**{**vars(study), "later_seeds_within": None})
    assert len(sweep.later_seed_jobs(every, [a, b], [0, 1], tmp_path)[0]) == 5


def test_best_seeds_run_at_the_best_lr_and_follow_it_when_it_moves(sweep, tmp_path):
    """`Study.best_seeds`: seed 2 only at each configuration's best LR by seed mean; once it has
    landed, a best that moved to another grid point asks for seed 2 there too, and a best that has
    every seed asks for nothing."""
    a = sweep.Configuration("a", [], [1e-4, 3e-4])
    study = sweep.Study(recipe="r.yaml", overrides=[], configurations=[a], metric="acc", metric_label="acc",
                        seeds=[0, 1], best_seeds=[2])

    def finish(lr, seed, value):
        run = tmp_path / sweep.run_name(a, lr, seed)
        run.mkdir()
        (run / "summary.json").write_text(json.dumps({
            "eval_after": {"acc": value}, "eval_before": {"acc": 0.0}, "peak_memory_bytes": 1,
            "trainable_parameters": 1, "wall_time_s": 1.0}))

    for lr, values in ((1e-4, (0.30, 0.28)), (3e-4, (0.34, 0.30))):
        for seed, value in enumerate(values):
            finish(lr, seed, value)
    assert [(c.name, lr, s) for c, lr, s in sweep.best_seed_jobs(study, [a], [0, 1], tmp_path)] == [("a", 3e-4, 2)]
    finish(3e-4, 2, 0.10)  # seed 2 pulls 3e-4's mean (0.247) below 1e-4's (0.29): the best moves
    assert [(lr, s) for _, lr, s in sweep.best_seed_jobs(study, [a], [0, 1], tmp_path)] == [(1e-4, 2)]
    finish(1e-4, 2, 0.29)
    assert sweep.best_seed_jobs(study, [a], [0, 1], tmp_path) == []
    rows = sweep.collect(study, [a], [0, 1, 2], tmp_path)
    assert rows[0]["best_lr"] == 1e-4 and rows[0]["seeds"] == 3


def test_paired_by_seed_differences_runs_of_one_seed(sweep, tmp_path):
    """`Study.paired_by_seed`: 'vs full, paired' is the mean of the per-seed differences over the
    seeds both configurations ran at their best LRs, ± stdev / sqrt(n), by hand; a seed only one of
    them ran is left out; the unpaired 'vs full' stays the difference of seed means."""
    full = sweep.Configuration("full", [], [1e-5])
    lora = sweep.Configuration("lora_r1", [], [3e-4])
    study = sweep.Study(recipe="r.yaml", overrides=[], configurations=[full, lora], metric="acc", metric_label="acc",
                        seeds=[0, 1, 2], paired_by_seed=True)
    values = {"full": (0.30, 0.40, 0.35), "lora_r1": (0.34, 0.42, 0.36, 0.90)}  # lora's seed 3: full has none
    for config, lr in ((full, 1e-5), (lora, 3e-4)):
        for seed, value in enumerate(values[config.name]):
            run = tmp_path / "runs" / sweep.run_name(config, lr, seed)
            run.mkdir(parents=True)
            (run / "summary.json").write_text(json.dumps({
                "eval_after": {"acc": value}, "eval_before": {"acc": 0.1}, "peak_memory_bytes": 1,
                "trainable_parameters": 1, "wall_time_s": 1.0}))
    rows = sweep.collect(study, [full, lora], [0, 1, 2, 3], tmp_path / "runs")
    mean, se, n = sweep.paired_difference(rows[1], rows[0])
    diffs = [0.04, 0.02, 0.01]
    assert n == 3 and mean == pytest.approx(sum(diffs) / 3)
    assert se == pytest.approx(statistics.stdev(diffs) / math.sqrt(3))
    text = sweep.write_tables(study, rows, tmp_path / "out", "hand-made", [])
    lora_line = next(line for line in text.splitlines() if line.startswith("| lora_r1 |"))
    assert f"{mean:+.3f} ± {se:.3f} (3 seeds)" in lora_line
    assert f"{rows[1]['metric_mean'] - rows[0]['metric_mean']:+.3f}" in lora_line  # the unpaired one beside it
    assert "paired" not in sweep.write_tables(sweep.Study(**{**vars(study), "paired_by_seed": False}), rows,
                                              tmp_path / "out2", "hand-made", [])
    # study.json and `align report` carry it too: the verdict gives the paired difference and its sign
    sweep.write_study_json(study, rows, tmp_path / "out", "hand-made", [], tmp_path / "runs")
    data = json.loads((tmp_path / "out" / "study.json").read_text())
    assert data["paired_by_seed"] is True
    assert data["verdict"][0].endswith(f"; paired by seed {mean:+.3f} ± {se:.3f} s.e. over 3 seeds, the same sign in every seed")
    from align.report import build_report

    assert f"{mean:+.3f} ± {se:.3f} (3 seeds)" in build_report([tmp_path / "out"])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["grpo_smollm2", "ppo_smollm2", "dpo_smollm2"])
def test_real_base_study_smoke(tmp_path, repo, method):
    """The real-base studies' plumbing end to end on a random tiny model (no chat model offline in a
    test): one run, its table and plots, the metric and secondaries the study reports."""
    from tests.conftest import parity_smoke

    rows, run, out = parity_smoke(repo, tmp_path, method)
    summary = json.loads(run.read_text())
    assert summary["method"] == method.split("_")[0]
    study = json.loads((out / "study.json").read_text())
    assert study["metric"] == "accuracy_sampled" and study["higher_is_better"] is True
    assert set(study["secondary"]) <= set(summary["eval_after"]) | {"mean_response_length"}


def _short_lr(lr: float) -> str:
    """3e-05 -> '3e-5', the way the README and the atlas write an LR."""
    mantissa, exponent = f"{lr:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


@pytest.mark.parametrize("method", ["grpo", "dpo", "ppo"])
def test_real_base_figures_quote_the_committed_study_tables(repo, method):
    """Every figure of a real-base study that the README's headline and the atlas's section quote
    (each configuration's best LR, metric mean ± std, greedy mean ± std) is the committed
    `table.csv`'s: a table re-measured without its quotes updated, or the reverse, fails here."""
    import csv

    table = repo / "results" / "atlas" / "real_base" / method / "table.csv"
    readme = (repo / "README.md").read_text().splitlines()
    atlas = (repo / "results" / "atlas" / "README.md").read_text().splitlines()
    labels = {"full": "FullFT", "lora_r1": "LoRA r1", "lora_r8": "LoRA r8"}
    for row in csv.DictReader(table.open()):
        label, lr = labels[row["configuration"]], _short_lr(float(row["best_lr"]))
        sampled = f"{float(row['metric_mean']):.3f} ± {float(row['metric_std']):.3f}"
        greedy = f"{float(row['accuracy_greedy_mean']):.3f} ± {float(row['accuracy_greedy_std']):.3f}"
        assert any(line.startswith(f"| {label}, LR {lr} |") and sampled in line and greedy in line for line in readme), \
            f"README: no '| {label}, LR {lr} |' row with {sampled} and greedy {greedy} ({table.relative_to(repo)})"
        assert any(line.startswith(f"| {label} |") and f"| {lr} (" in line and sampled in line and greedy in line
                   for line in atlas), f"atlas: no '| {label} |' row at {lr} with {sampled} and {greedy}"
        if row.get("vs_full_paired_mean") and row["configuration"] != "full":  # a study with Study.paired_by_seed
            paired = f"{float(row['vs_full_paired_mean']):+.3f} ± {float(row['vs_full_paired_se']):.3f}"
            for name, lines in (("README", readme), ("atlas", atlas)):
                assert any(line.replace("−", "-").startswith(f"| {label}") and sampled in line
                           and paired in line.replace("−", "-") for line in lines), \
                    f"{name}: the {label} row quotes no paired difference {paired}"


def test_tensors_by_role_reads_the_runs_memory_by_role(sweep):
    """The study table's 'tensors by role' cell: summary.json's memory_by_role in MB, empty roles
    and the total left out; nothing for a run from before it was recorded."""
    mb = 2**20
    summary = {"memory_by_role": {"base": 513 * mb, "policy": int(1.25 * mb), "value": 0, "gradients": 0,
                                  "optimizer_state": 19 * mb, "total": 533 * mb}}
    assert sweep._tensors_by_role(summary) == "base 513; policy 1.2; optimizer 19"
    assert sweep._tensors_by_role({}) == ""
