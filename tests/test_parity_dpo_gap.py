"""The DPO-gap studies of `scripts/studies/parity.py` (issue 13): well-formed grids and configurations,
run folders shared with the dpo study only where the run is the same, and a smoke run of each
study's smallest configuration (1 LR, 1 seed, 3 steps on `scratch:test`) with its table and plots."""

from __future__ import annotations


import pytest

GAP = ("dpo_gap_embed", "dpo_gap_lr", "dpo_gap_steps", "dpo_gap_batch")

# the `parity` fixture (scripts/studies/parity.py as a module) is conftest's


def test_lr_tags_keep_grid_points_apart(parity, sweep):
    assert sweep.lr_tag(1e-3) == "1e-03" and sweep.lr_tag(3e-4) == "3e-04"  # the dpo study's folders
    assert sweep.lr_tag(1.5e-3) == "1.5e-03" and sweep.lr_tag(2e-3) == "2e-03"
    for study in parity.STUDIES.values():
        for c in study.configurations:
            assert len({sweep.lr_tag(lr) for lr in c.lrs}) == len(c.lrs), c.name


def test_gap_studies_are_well_formed(parity, sweep, repo):
    from align.config import load_recipe

    dpo = parity.STUDIES["dpo"]
    commands: dict[str, list[str]] = {}  # run folder name in runs/parity_dpo -> its overrides
    for method in ("dpo", *GAP):
        study = parity.STUDIES[method]
        assert study.overrides == dpo.overrides and study.recipe == dpo.recipe and study.metric == dpo.metric
        assert len(study.seeds) == 3 and study.configurations[0].name == "full", method
        for c in study.configurations:
            assert c.lrs == sorted(c.lrs) and (len(c.lrs) >= 3 or c.name == "full_steps120"), (method, c.name)
            load_recipe(repo / study.recipe, [*study.overrides, *c.overrides])  # every key and value is valid
            for lr in c.lrs:  # one folder name, one command: a shared folder is the same run
                name = sweep.run_name(c, lr, 0)
                assert commands.setdefault(name, c.overrides) == c.overrides, name
        assert set(study.smoke_configurations) <= {c.name for c in study.configurations}, method
    embed = {c.name: c for c in parity.STUDIES["dpo_gap_embed"].configurations}
    for rank in (1, 4, 8):
        lrs = embed[f"lora_emb_r{rank}"].lrs
        assert "lora.targets=all+embeddings" in embed[f"lora_emb_r{rank}"].overrides
        assert len(lrs) >= 4 and max(lrs) / min(lrs) >= 30 - 1e-9
    fine = {c.name: c for c in parity.STUDIES["dpo_gap_lr"].configurations}
    assert sum(1e-3 < lr < 3e-3 for lr in fine["lora_r8"].lrs) >= 2  # the finer grid between 1e-3 and 3e-3
    assert all(sum(lr not in parity.LORA_DPO_LRS for lr in fine[f"lora_r{r}"].lrs) >= 2 for r in (1, 4))  # around 3e-4
    batches = {}
    for c in parity.STUDIES["dpo_gap_batch"].configurations:
        cfg = load_recipe(repo / dpo.recipe, [*dpo.overrides, *c.overrides])
        assert cfg.train.batch_size * cfg.train.steps == 1920, c.name  # a fixed number of examples seen
        batches.setdefault(c.name.split("_bs")[0], set()).add(cfg.train.batch_size)
    assert all(max(b) / min(b) >= 16 for b in batches.values()) and set(batches) == {"full", "lora_r1", "lora_r8"}


@pytest.mark.slow
@pytest.mark.parametrize("method", GAP)
def test_gap_study_smoke(tmp_path, repo, method):
    from tests.conftest import parity_smoke

    rows, run, out = parity_smoke(repo, tmp_path, method)
    if method == "dpo_gap_embed":
        assert '"lora_targets": "all+embeddings"' in run.read_text()
    if method != "dpo_gap_lr":  # the studies with an axis (rank, steps, batch size)
        assert (out / "metric_vs_axis.png").stat().st_size > 0 and (out / "table_axis.csv").stat().st_size > 0
