"""Config presets, YAML round trip, overrides and validation."""

from __future__ import annotations

import pytest

from spot_core.config import ConfigError, SpotConfig


def test_presets() -> None:
    anet = SpotConfig.preset("anet")
    assert (anet.model.feat_dim, anet.model.num_snippets, anet.model.num_classes, anet.model.num_heads) == (
        400,
        100,
        200,
        4,
    )
    assert anet.model.d_head == 400
    assert (anet.train.lr, anet.train.weight_decay, anet.train.batch_size, anet.train.epochs) == (
        4e-4,
        5e-3,
        100,
        25,
    )
    assert anet.decode.mask_thresholds == (0.0, 0.2, 0.4, 0.6, 0.8)
    toy = SpotConfig.preset("toy")
    assert toy.model.feat_dim < anet.model.feat_dim
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        SpotConfig.preset("nope")


def test_yaml_roundtrip(tmp_path) -> None:
    cfg = SpotConfig.preset("toy").override(["model.head_dim=null", "decode.class_thresholds=[0.5]"])
    p = tmp_path / "c.yaml"
    cfg.to_yaml(p)
    back = SpotConfig.from_yaml(p)
    assert back == cfg
    assert back.config_hash() == cfg.config_hash()
    assert back.model.head_dim is None and back.decode.class_thresholds == (0.5,)


@pytest.mark.parametrize(
    "override, msg",
    [
        (["model.num_heads=0"], "num_heads must be >= 1"),
        (["model.nope=1"], "unknown key"),
        (["nope.x=1"], "unknown section"),
        (["model.num_heads"], "section.key=value"),
        (["model.num_heads=two"], "expected an integer"),
        (["data.mode=chunks"], "data.mode"),
        (["decode.class_mode=x"], "class_mode"),
        (["model.attn_dropout=1.5"], "attn_dropout"),
    ],
)
def test_bad_overrides(override, msg) -> None:
    with pytest.raises(ConfigError, match=msg):
        SpotConfig.preset("toy").override(override)


def test_bad_yaml(tmp_path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        SpotConfig.from_yaml(p)
    p.write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        SpotConfig.from_yaml(p)
    with pytest.raises(ConfigError, match="not found"):
        SpotConfig.from_yaml(tmp_path / "none.yaml")


def test_class_names_must_match() -> None:
    with pytest.raises(ConfigError, match="class_names has 2 names"):
        SpotConfig.preset("toy").replace(class_names=("a", "b"))


def test_float_in_exponent_notation() -> None:
    assert SpotConfig.preset("toy").override(["train.lr=1e-2"]).train.lr == 0.01
