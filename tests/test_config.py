import dataclasses

import pytest
import yaml

from ranface.config import EmbedConfig, TrainConfig, dump_yaml, from_dict, load_config, to_dict
from ranface.errors import ConfigError


def test_defaults_match_paper():
    cfg = TrainConfig()
    assert cfg.model.backbone == "iresnet34"
    assert cfg.model.scale == 64.0 and cfg.model.head == "arcface"
    assert cfg.optim.lr == 0.1 and cfg.optim.milestones == [60000, 100000, 140000]


def test_yaml_then_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim:\n  lr: 0.05\n  milestones: [10, 20]\nmodel:\n  backbone: mobilefacenet\n")
    cfg = load_config(TrainConfig, str(p), ["optim.lr=0.01", "run.seed=3", "optim.milestones=[1,2,3]",
                                            "model.margin=0.4", "data.train=/x"])
    assert cfg.optim.lr == 0.01
    assert cfg.run.seed == 3
    assert cfg.optim.milestones == [1, 2, 3]
    assert cfg.model.backbone == "mobilefacenet"
    assert cfg.model.margin == 0.4
    assert cfg.data.train == "/x"


def test_int_to_float_and_none():
    cfg = load_config(TrainConfig, None, ["optim.lr=1", "optim.clip_grad_norm=null"])
    assert isinstance(cfg.optim.lr, float) and cfg.optim.lr == 1.0
    assert cfg.optim.clip_grad_norm is None


@pytest.mark.parametrize("override,needle", [
    ("optim.lrr=0.1", "optim.lrr"),
    ("nope.x=1", "nope"),
    ("optim.lr=abc", "optim.lr"),
    ("run.seed=1.5", "run.seed"),
    ("data.hflip=3", "data.hflip"),
    ("optim=3", "optim"),
    ("noequals", "KEY=VALUE"),
])
def test_bad_overrides(override, needle):
    with pytest.raises(ConfigError) as ei:
        load_config(TrainConfig, None, [override])
    assert needle in str(ei.value)


def test_unknown_key_in_file_names_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError) as ei:
        load_config(TrainConfig, str(p))
    assert "bad.yaml" in str(ei.value) and "optim.learning_rate" in str(ei.value)


def test_invalid_yaml(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("optim: [unclosed\n")
    with pytest.raises(ConfigError, match="x.yaml"):
        load_config(TrainConfig, str(p))


def test_roundtrip_dump_and_rebuild():
    cfg = load_config(TrainConfig, None, ["optim.lr=0.02", "run.name=abc"])
    d = yaml.safe_load(dump_yaml(cfg))
    assert from_dict(TrainConfig, d) == cfg
    assert to_dict(cfg)["optim"]["lr"] == 0.02


def test_shipped_configs_load():
    import glob
    import os

    root = os.path.join(os.path.dirname(__file__), "..", "configs")
    files = glob.glob(os.path.join(root, "train_*.yaml"))
    assert files, "no shipped train configs"
    for f in files:
        cfg = load_config(TrainConfig, f)
        assert cfg.stage in ("hr", "lr", "mr")


def test_embed_config():
    cfg = load_config(EmbedConfig, None, ["model=/m.pt", "threshold=0.3"])
    assert cfg.model == "/m.pt" and cfg.threshold == 0.3
