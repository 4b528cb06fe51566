"""Unit tests for icpc/config.py (and the compress config built on it): ``--set`` overrides, type coercion,
all-at-once validation."""

from __future__ import annotations

import pytest

from icpc.config import (
    ConfigError,
    EvalConfig,
    ModelConfig,
    TrainConfig,
    apply_overrides,
    finalize,
    from_dict,
    to_dict,
)
from icpc.pipeline.config import CompressConfig
from icpc.pipeline.modalities.image import ImageConfig

# ----------------------------------------------------------------------------- overrides


def test_nested_overrides():
    cfg = CompressConfig(input="data")
    assert apply_overrides(cfg, ["image.sides=28,20,12", "image.patch=2", "shard_samples=10"]) == []
    assert cfg.image.sides == [28, 20, 12]
    assert cfg.image.patch == 2 and cfg.shard_samples == 10
    cfg = TrainConfig()
    assert apply_overrides(cfg, ["model.dim=128", "model.dropout=0.25", "lr=3e-4", "strategy=corner"]) == []
    assert cfg.model.dim == 128 and isinstance(cfg.model.dim, int)
    assert cfg.model.dropout == 0.25 and cfg.lr == 3e-4 and cfg.strategy == "corner"


@pytest.mark.parametrize("text, expected", [
    ("[1, 2, 0.5]", [1.0, 2.0, 0.5]),
    ("1,2", [1.0, 2.0]),
    ("[]", []),
    ("", []),
])
def test_list_overrides(text, expected):
    cfg = TrainConfig()
    assert apply_overrides(cfg, [f"level_weights={text}"]) == []
    assert cfg.level_weights == expected
    assert all(isinstance(w, float) for w in cfg.level_weights)


def test_list_override_json_form_for_ints_and_floats():
    cfg = CompressConfig()
    assert apply_overrides(cfg, ["image.sides=[32, 16]"]) == []
    assert cfg.image.sides == [32, 16]
    cfg = EvalConfig()
    assert apply_overrides(cfg, ["thresholds=[0.5,0.9]"]) == []
    assert cfg.thresholds == [0.5, 0.9]


@pytest.mark.parametrize("text, expected", [
    ("true", True), ("True", True), ("1", True), ("false", False), ("FALSE", False), ("0", False),
])
def test_bool_parsing(text, expected):
    cfg = TrainConfig(baseline=not expected)
    assert apply_overrides(cfg, [f"baseline={text}"]) == []
    assert cfg.baseline is expected


@pytest.mark.parametrize("text", ["yes", "maybe", "2", ""])
def test_bad_bool_is_an_error(text):
    cfg = TrainConfig()
    errors = apply_overrides(cfg, [f"baseline={text}"])
    assert len(errors) == 1 and "baseline" in errors[0]
    assert cfg.baseline is False


def test_optional_fields():
    cfg = CompressConfig(address="ray://x:10001", num_cpus=4)
    assert apply_overrides(cfg, ["address=none", "num_cpus=2"]) == []
    assert cfg.address is None and cfg.num_cpus == 2.0
    assert apply_overrides(cfg, ["address=127.0.0.1:6379", "num_cpus=null"]) == []
    assert cfg.address == "127.0.0.1:6379" and cfg.num_cpus is None


@pytest.mark.parametrize("item, needle", [
    ("nope=1", "nope"),
    ("model.nope=2", "nope"),
    ("nosection.dim=2", "nosection"),
    ("epochs=abc", "epochs"),
    ("model.dim=1.5", "model.dim"),
    ("level_weights=[1, \"x\"]", "level_weights"),
    ("epochs", "KEY=VALUE"),
])
def test_single_bad_override_is_reported(item, needle):
    errors = apply_overrides(TrainConfig(), [item])
    assert len(errors) == 1
    assert needle in errors[0]


def test_unknown_key_lists_known_ones():
    [error] = apply_overrides(TrainConfig(), ["model.width=3"])
    assert "width" in error and "dim" in error and "heads" in error


def test_all_errors_reported_at_once():
    overrides = ["nope=1", "model.nope=2", "epochs=abc", "model.heads=5", "lr=-1"]
    with pytest.raises(ConfigError) as info:
        finalize(TrainConfig(), overrides)
    errors = info.value.errors
    # three override errors + two validation errors (96 % 5 != 0, lr <= 0)
    assert len(errors) == 5, errors
    text = str(info.value)
    for needle in ("nope", "model.nope", "epochs", "heads=5", "lr=-1"):
        assert needle in text
    assert isinstance(info.value, ValueError)


def test_setting_a_section_as_a_value_is_a_config_error():
    """``--set model=3`` names a section, not a field: it must be reported, not crash validate()."""
    with pytest.raises(ConfigError) as info:
        finalize(TrainConfig(), ["model=3"])
    assert "model" in str(info.value)


def test_finalize_returns_valid_config():
    cfg = finalize(TrainConfig(), ["epochs=2", "model.dim=64", "model.heads=8"])
    assert (cfg.epochs, cfg.model.dim, cfg.model.heads) == (2, 64, 8)


# ----------------------------------------------------------------------------- validate


def test_default_image_config_is_valid():
    assert ImageConfig().validate() == []


@pytest.mark.parametrize("cfg, needle", [
    (ImageConfig(sides=[28, 22, 12], patch=4), "22"),
    (ImageConfig(sides=[28, 32, 12], patch=4), "larger"),
    (ImageConfig(sides=[], patch=4), "image.sides"),
    (ImageConfig(sides=[28], patch=0), "image.patch"),
    (ImageConfig(sides=[28, 0], patch=4), "multiple"),
    (ImageConfig(channels=2), "channels"),
])
def test_bad_image_ladders(cfg, needle):
    errors = cfg.validate()
    assert len(errors) == 1, errors
    assert needle in errors[0]


def test_bad_ladder_through_finalize_reports_both_problems():
    with pytest.raises(ConfigError) as info:
        finalize(CompressConfig(input="data"), ["image.sides=28,30,12"])
    errors = info.value.errors
    assert len(errors) == 2, errors  # 30 is not a multiple of 4, and 30 > 28
    assert any("30" in e and "multiple" in e for e in errors)
    assert any("larger" in e for e in errors)


def test_compress_config_validation():
    assert CompressConfig(input="data").validate() == []
    errors = CompressConfig(input="", val_fraction=0.6, test_fraction=0.5, shard_samples=0, limit=-1).validate()
    assert len(errors) == 4, errors
    assert any("input" in e for e in errors)
    assert any("shard_samples" in e for e in errors)


@pytest.mark.parametrize("cfg, needle", [
    (ModelConfig(dim=96, heads=5), "heads"),
    (ModelConfig(dim=0), "positive"),
    (ModelConfig(dropout=1.0), "dropout"),
])
def test_model_config_validation(cfg, needle):
    errors = cfg.validate()
    assert len(errors) == 1 and needle in errors[0]


@pytest.mark.parametrize("overrides, needle", [
    (["strategy=diagonal"], "strategy"),
    (["level_weights=[0, 0]"], "level_weights"),
    (["level_weights=[1, -1]"], "level_weights"),
    (["warmup_fraction=1"], "warmup_fraction"),
    (["grad_accum=0"], "grad_accum"),
])
def test_train_config_validation(overrides, needle):
    with pytest.raises(ConfigError) as info:
        finalize(TrainConfig(), overrides)
    assert len(info.value.errors) == 1 and needle in info.value.errors[0]


@pytest.mark.parametrize("overrides, needle", [
    (["split=dev"], "split"),
    (["thresholds=[0.5, -0.1]"], "thresholds"),
    (["batch_size=0"], "batch_size"),
    (["strategy=diagonal"], "strategy"),
])
def test_eval_config_validation(overrides, needle):
    with pytest.raises(ConfigError) as info:
        finalize(EvalConfig(), overrides)
    assert needle in str(info.value)


def test_eval_config_empty_strategy_means_checkpoint_strategy():
    assert EvalConfig(strategy="").validate() == []


# ----------------------------------------------------------------------------- save / load


def test_to_dict_from_dict_round_trip():
    cfg = finalize(TrainConfig(), ["model.dim=64", "model.heads=8", "level_weights=[1, 2]", "baseline=true"])
    back = from_dict(TrainConfig, to_dict(cfg))
    assert back == cfg
    assert isinstance(back.model, ModelConfig)
    cfg = finalize(CompressConfig(input="x"), ["image.sides=16,8"])
    back = from_dict(CompressConfig, to_dict(cfg))
    assert back == cfg and isinstance(back.image, ImageConfig) and back.image.sides == [16, 8]
