import os
import pickle

import pytest
import torch

from ranface.errors import CheckpointError
from ranface.train.checkpoint import (CheckpointManager, capture_rng, load_checkpoint, load_state_strict,
                                      restore_rng, save_checkpoint)


def test_save_load_roundtrip(tmp_path):
    p = str(tmp_path / "a.pt")
    save_checkpoint(p, {"w": torch.arange(4.0), "step": 3, "cfg": {"a": [1, 2]}})
    st = load_checkpoint(p)
    assert st["step"] == 3 and torch.equal(st["w"], torch.arange(4.0)) and st["cfg"] == {"a": [1, 2]}
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []


class Evil:
    def __reduce__(self):
        return (os.system, ("touch EVIL_MARKER_FILE",))


def test_malicious_checkpoint_executes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = tmp_path / "evil.pt"
    with open(p, "wb") as fh:
        pickle.dump({"x": Evil()}, fh)
    with pytest.raises(CheckpointError) as ei:
        load_checkpoint(str(p))
    assert "evil.pt" in str(ei.value)
    assert not (tmp_path / "EVIL_MARKER_FILE").exists()


def test_truncated_checkpoint(tmp_path):
    p = str(tmp_path / "t.pt")
    save_checkpoint(p, {"w": torch.randn(1000)})
    data = open(p, "rb").read()
    open(p, "wb").write(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="t.pt"):
        load_checkpoint(p)


def test_strict_load_lists_problems():
    m = torch.nn.Linear(3, 2)
    sd = {"weight": torch.zeros(2, 4), "extra": torch.zeros(1)}
    with pytest.raises(CheckpointError) as ei:
        load_state_strict(m, sd, "x.pt")
    msg = str(ei.value)
    assert "missing: bias" in msg and "unexpected: extra" in msg and "shape mismatch: weight" in msg


def test_rng_roundtrip(tmp_path):
    import random

    import numpy as np

    st = capture_rng()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    p = str(tmp_path / "r.pt")
    save_checkpoint(p, {"rng": st})
    restore_rng(load_checkpoint(p)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_manager_keeps_last_and_best(tmp_path):
    m = CheckpointManager(str(tmp_path), keep_last=2, keep_best=1)
    metrics = {10: 0.5, 20: 0.9, 30: 0.6, 40: 0.7, 50: None}
    for s, v in metrics.items():
        m.save(s, {"step": s}, v)
    assert m.steps() == [20, 40, 50]  # last two + best (20)
    assert m.best().endswith("ckpt-00000020.pt")
    assert m.latest().endswith("ckpt-00000050.pt")
