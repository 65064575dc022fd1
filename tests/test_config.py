"""afmrl.config: YAML + dotted overrides -> validated frozen dataclasses."""
import dataclasses

import pytest

from afmrl.config import (REPO_ROOT, AfmrlConfig, ConfigError, load_config, parse_override,
                          reference)


def test_defaults_are_the_local_profile():
    config = load_config(REPO_ROOT / "configs" / "local.yaml")
    assert config == dataclasses.replace(AfmrlConfig(), stages=config.stages)
    assert config.train.effective_batch_size == 16 * 2 * 1


@pytest.mark.parametrize("name", ["local.yaml", "mini.yaml", "gpu.yaml"])
def test_shipped_profiles_validate(name):
    config = load_config(REPO_ROOT / "configs" / name)
    assert config.profile in ("local", "gpu")


def test_overrides_are_typed():
    config = load_config(None, ["train.lr=3e-4", "train.epochs=7", "train.use_gpu=true",
                                "extract.attribute_keys=[brand, colour]", "ray.address=auto"])
    assert config.train.lr == pytest.approx(3e-4)
    assert config.train.epochs == 7 and config.train.use_gpu is True
    assert config.extract.attribute_keys == ("brand", "colour")
    assert config.ray.address == "auto"


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        AfmrlConfig().train.lr = 1.0


@pytest.mark.parametrize("override, message", [
    ("train.lrr=1", "did you mean 'lr'"),
    ("train.zero_stage=5", "not one of"),
    ("train.epochs=many", "expected an integer"),
    ("train.per_device_batch_size=1", "contrastive learning needs negatives"),
    ("train.offload=true,train.zero_stage=1", "offload needs train.zero_stage 2 or 3"),
    ("rl.group_size=1", "GRPO compares a group"),
    ("rl.max_steps=0", "exported from the final checkpoint"),
    ("rl.prompts_per_step=1,rl.group_size=3,rl.num_workers=2", "must split evenly"),
    ("stages=[extract, nope]", "unknown"),
    ("trian.lr=1", "did you mean 'train'"),
    ("train", "must look like section.key=value"),
])
def test_bad_config_fails_fast_with_actionable_message(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, override.split(",") if "," in override and "[" not in override
                    else [override])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad)


def test_every_field_is_documented():
    rows = reference()
    assert len(rows) > 60
    undocumented = [key for key, _, help_text in rows if not help_text]
    assert undocumented == []


def test_parse_override_scientific_notation():
    assert parse_override("train.lr=1e-5") == ("train.lr", 1e-5)
    assert parse_override("ray.address=") == ("ray.address", None)
