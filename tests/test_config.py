import pytest

from darkknowledge import DKError
from darkknowledge.config import (
    DistillConfig,
    RunConfig,
    TeacherConfig,
    TrainConfig,
    TransferConfig,
    build_configs,
    load_yaml,
)

ALL = (TrainConfig, DistillConfig, TeacherConfig, TransferConfig, RunConfig)


def test_defaults_and_overrides():
    cfgs = build_configs(ALL, {"epochs": 3, "lr": 1, "teachers": ["a", "b"], "omit_classes": 3, "unlabelled": True})
    assert cfgs[TrainConfig].epochs == 3 and cfgs[TrainConfig].lr == 1.0 and isinstance(cfgs[TrainConfig].lr, float)
    assert cfgs[TeacherConfig].teachers == ("a", "b") and cfgs[TransferConfig].omit_classes == (3,)
    assert cfgs[DistillConfig] == DistillConfig() and cfgs[TransferConfig].unlabelled is True


def test_unknown_key_is_named_with_allowed_keys():
    with pytest.raises(DKError, match=r"unknown key 'temprature' in recipe x.yaml; allowed: .*temperature"):
        build_configs(ALL, {"temprature": 3}, "recipe x.yaml")


@pytest.mark.parametrize("key,value", [("epochs", "ten"), ("epochs", 2.5), ("lr", "fast"), ("unlabelled", 1),
                                       ("epochs", True), ("omit_classes", ["three"])])
def test_wrong_type_is_named(key, value):
    with pytest.raises(DKError, match=f"key '{key}' must be"):
        build_configs(ALL, {key: value})


@pytest.mark.parametrize("overrides,match", [
    ({"temperature": 0}, "temperature must be > 0"), ({"temperature": -2.0}, "temperature must be > 0"),
    ({"arch": "vgg"}, "unknown architecture"), ({"combine": "median"}, "unknown combine"),
    ({"epochs": 0}, "epochs must be > 0"), ({"fraction": 1.5}, "fraction"), ({"device": "tpu"}, "unknown device"),
    ({"soft_weight": 0, "hard_weight": 0}, "nothing to learn"), ({"warmup_epochs": -1}, "warmup_epochs must be >= 0"),
])
def test_invalid_values(overrides, match):
    with pytest.raises(DKError, match=match):
        build_configs(ALL, overrides)


def test_yaml_recipe(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("epochs: 4\ntemperature: 2.5\n")
    assert load_yaml(p) == {"epochs": 4, "temperature": 2.5}
    p.write_text("- a\n- b\n")
    with pytest.raises(DKError, match="must be a mapping"):
        load_yaml(p)
    p.write_text("epochs: [\n")
    with pytest.raises(DKError, match="not valid YAML"):
        load_yaml(p)
    with pytest.raises(DKError, match="cannot read recipe"):
        load_yaml(tmp_path / "missing.yaml")


def test_every_command_s_config_classes_share_no_key():
    """A key owned by two classes would route one value to one of them silently: build_configs refuses."""
    import pytest

    from darkknowledge.cli import COMMAND_CONFIGS
    from darkknowledge.config import DistillConfig, SpecialistConfig, TrainConfig, build_configs

    for classes in [*COMMAND_CONFIGS.values(), (TrainConfig, SpecialistConfig)]:
        build_configs(classes, {})
    with pytest.raises(ValueError, match="is a field of both DistillConfig and SpecialistConfig"):
        build_configs((DistillConfig, SpecialistConfig), {})
