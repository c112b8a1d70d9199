"""Recipe loading: types, unknown keys, impossible values, dotted overrides, shipped recipes."""

from __future__ import annotations

import pytest
import yaml

from align.builtin_bases import BASE_RECIPES
from align.config import ConfigError, RecipeConfig, describe, load_recipe


def write(tmp_path, data) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"lora": {"rnak": 4}}, "unknown key lora.rnak"),
        ({"optimiser": {"lr": 1}}, "unknown key optimiser"),
        ({"lora": {"rank": 0}}, "lora.rank must be at least 1"),
        ({"lora": {"rank": "eight"}}, "lora.rank must be an integer"),
        ({"optimizer": {"lr": -0.1}}, "optimizer.lr must not be negative"),
        ({"train": {"batch_size": 10, "grad_accum": 3}}, "train.batch_size (10) must be divisible by train.grad_accum (3)"),
        ({"data": {"train_file": "missing/file.jsonl"}}, "data.train_file file not found: missing/file.jsonl"),
        ({"mode": "half"}, "mode must be one of ['lora', 'full']"),
        ({"lora": {"targets": "everything"}}, "lora.targets must be one of"),
        ({"train": {"steps": True}}, "train.steps must be an integer"),
        ({"data": {"task": "chess"}}, "data.task must be one of"),
        ({"resume": True}, "resume needs output_dir"),
        ({"method": "ppo", "rollout": {"reward": "learned"}}, "rollout.reward_model is required"),
        ({"method": "ppo", "ppo": {"kl_coef": 0.1}}, "ppo.kl_coef has moved to rollout.kl_coef"),
        ({"method": "ppo", "ppo": {"chat_template": True}}, "ppo.chat_template has moved to data.chat_template"),
        ({"method": "ppo", "rollout": {"kl_estimator": "k4"}}, "rollout.kl_estimator must be one of"),
        ({"method": "dpo", "dpo": {"loss_type": "kto"}}, "dpo.loss_type must be one of"),
    ],
)
def test_bad_recipes_name_key_and_file(tmp_path, data, message):
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    assert message in str(err.value)
    assert path in str(err.value)


def test_missing_recipe_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="recipe not found"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lora: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(bad)


def test_dotted_overrides_apply_with_yaml_types(tmp_path):
    path = write(tmp_path, {"lora": {"rank": 8}})
    cfg = load_recipe(path, ["lora.rank=4", "optimizer.lr=3e-4", "tracking.wandb=false", "tracking.tags=[a, b]", "mode=full"])
    assert cfg.lora.rank == 4
    assert cfg.optimizer.lr == pytest.approx(3e-4)
    assert cfg.tracking.wandb is False and cfg.tracking.tags == ["a", "b"]
    assert cfg.mode == "full"
    with pytest.raises(ConfigError, match="unknown key lora.rnak"):
        load_recipe(path, ["lora.rnak=2"])
    with pytest.raises(ConfigError, match="not of the form"):
        load_recipe(path, ["lora.rank"])


def test_ints_accepted_for_floats_and_lr_rule_is_derived_once():
    cfg = load_recipe(None, ["optimizer.lr=1", "optimizer.lr_rule=true"])
    assert isinstance(cfg.optimizer.lr, float)
    assert cfg.derived()["learning_rate"] == pytest.approx(10.0)
    full = load_recipe(None, ["optimizer.lr=1", "optimizer.lr_rule=true", "mode=full"])
    assert full.derived()["learning_rate"] == pytest.approx(1.0)


def test_every_shipped_recipe_validates(repo):
    recipes = sorted((repo / "recipes").glob("*.yaml"))
    assert len(recipes) >= 4
    for path in recipes:
        load_recipe(path)


def test_base_recipe_file_matches_build_settings(repo):
    from_file = load_recipe(repo / "recipes" / "base_tiny_arith.yaml").to_dict()
    from_code = load_recipe(None, BASE_RECIPES["builtin:tiny-arith"]).to_dict()
    assert from_file == from_code


def test_every_field_documented():
    lines = describe()
    assert any(line.startswith("lora.rank: int = 8") for line in lines)
    assert all("#" in line and not line.endswith("# ") for line in lines)


def test_kl_estimator_accepts_exactly_what_its_registry_has():
    import typing

    from align.config import RolloutSettings
    from align.losses.policy import KL_ESTIMATORS

    assert set(typing.get_args(typing.get_type_hints(RolloutSettings)["kl_estimator"])) == set(KL_ESTIMATORS)
    for name in KL_ESTIMATORS:
        assert load_recipe(None, ["method=ppo", f"rollout.kl_estimator={name}"]).rollout.kl_estimator == name


def test_validating_a_recipe_imports_no_trainer():
    """config.py validates reward specs through reward_models, never through the trainers."""
    import subprocess
    import sys

    code = ("import sys; from align.config import load_recipe; "
            "load_recipe('recipes/ppo_lora_rm.yaml'); load_recipe('recipes/ppo_qwen_lora.yaml'); "
            "bad = sorted(m for m in sys.modules if m.startswith('align.trainers')); assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    assert proc.returncode == 0, proc.stderr


def test_every_moved_ppo_key_names_its_new_home():
    from align.config import MOVED_KEYS

    for old, new in MOVED_KEYS.items():
        section, key = new.split(".")
        assert key in {f.name for f in __import__("dataclasses").fields(getattr(RecipeConfig(), section))}, new
        with pytest.raises(ConfigError, match=f"{old} has moved to {new}"):
            load_recipe(None, ["method=ppo", f"{old}=1"])


def test_rollout_engine_settings_are_checked():
    fast = ["method=grpo", "model=scratch:test"]
    assert load_recipe(None, fast).rollout.engine == "hf"  # the default needs nothing new
    assert load_recipe(None, fast + ["rollout.engine=vllm", "rollout.tis_cap=2"]).rollout.tis_cap == 2
    with pytest.raises(ConfigError, match="rollout.engine vllm needs mode lora"):
        load_recipe(None, fast + ["rollout.engine=vllm", "mode=full"])
    with pytest.raises(ConfigError, match="rollout.tis_cap must be at least 1 and needs rollout.engine vllm"):
        load_recipe(None, fast + ["rollout.tis_cap=2"])
    with pytest.raises(ConfigError, match="rollout.tis_cap is implemented for grpo only"):
        load_recipe(None, ["method=ppo", "model=scratch:test", "rollout.engine=vllm", "rollout.tis_cap=2"])
    with pytest.raises(ConfigError, match="rollout.vllm_gpu_memory_utilization"):
        load_recipe(None, fast + ["rollout.vllm_gpu_memory_utilization=1.5"])
    with pytest.raises(ConfigError, match="unknown key|must be one of|rollout.engine"):
        load_recipe(None, fast + ["rollout.engine=sglang"])
