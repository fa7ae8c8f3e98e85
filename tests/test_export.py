"""``ranface export``: ONNX and TorchScript reproduce PyTorch; a failed check writes nothing."""
from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import torch

from conftest import require_shared
from ranface.deploy import export as export_mod
from ranface.deploy.export import ExportConfig, export_model
from ranface.deploy.gallery import model_fingerprint
from ranface.errors import RanfaceError

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def small_model():
    """MobileFaceNet, 64-d, untrained; one train-mode forward sets non-trivial BN stats."""
    from ranface.models import create_backbone

    torch.manual_seed(0)
    m = create_backbone("mobilefacenet", embedding_size=64)
    m.train()
    with torch.no_grad():
        m(torch.randn(8, 3, 112, 112) * 0.5 + 0.1)
    return m.eval()


def test_onnx_and_torchscript_match_pytorch(tmp_path, small_model):
    import onnxruntime as ort

    lfw = require_shared("lfw-gray", "images")
    out = str(tmp_path / "export")
    cfg = ExportConfig(out=out, check_count=2, data_root=os.path.dirname(os.path.dirname(lfw)))
    side = export_model(cfg, small_model, {"backbone": "mobilefacenet", "kind": "ranface",
                                           "kwargs": {"embedding_size": 64}})
    assert sorted(os.listdir(out)) == ["model.json", "model.onnx", "model.torchscript.pt"]
    on_disk = json.load(open(os.path.join(out, "model.json")))
    assert on_disk == json.loads(json.dumps(side))
    assert side["input"]["size"] == [112, 112] and side["input"]["color"] == "rgb"
    assert side["input"]["mean"] == [127.5] * 3 and side["input"]["std"] == [127.5] * 3
    assert side["output"]["embedding_size"] == 64 and side["alignment"]["template"] is None
    assert side["fingerprint"] == model_fingerprint(small_model)
    assert len(side["check"]["images"]) == 2 and side["check"]["batch_sizes"] == [1, 2]
    assert side["check"]["onnx"]["min_cosine"] >= 1 - 1e-4
    assert side["check"]["torchscript"]["min_cosine"] >= 1 - 1e-4

    # Independent check at a batch size the export never saw (dynamic batch axis).
    x = torch.randn(5, 3, 112, 112)
    with torch.inference_mode():
        ref = small_model(x).numpy()
    sess = ort.InferenceSession(os.path.join(out, "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})[0]
    cos = np.sum(got * ref, 1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert got.shape == (5, 64) and cos.min() >= 1 - 1e-4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load is deprecated in favour of torch.export
        ts = torch.jit.load(os.path.join(out, "model.torchscript.pt"))
    with torch.inference_mode(), torch.jit.optimized_execution(False):
        np.testing.assert_allclose(ts(x).numpy(), ref, rtol=1e-4, atol=1e-5)

    # the sidecar's model card lets the one loader run the ONNX file (and the folder)
    from ranface.models.loader import load_model

    assert side["card"]["architecture"] == "mobilefacenet" and side["card"]["embedding_size"] == 64
    for target in (os.path.join(out, "model.onnx"), out):
        onnx_model, card = load_model(target)
        assert card.provenance.kind == "onnx" and tuple(card.input_size) == (112, 112)
        np.testing.assert_allclose(onnx_model(x).numpy(), ref, rtol=1e-4, atol=1e-4)
        assert model_fingerprint(onnx_model) == side["fingerprint"]  # galleries work with either


def test_failed_parity_check_writes_nothing(tmp_path, small_model, monkeypatch):
    from ranface.models import create_backbone

    torch.manual_seed(5)
    impostor = create_backbone("mobilefacenet", embedding_size=64).eval()
    real = export_mod._export_torchscript
    monkeypatch.setattr(export_mod, "_export_torchscript", lambda m, x: real(impostor, x))
    faces = tmp_path / "faces"
    faces.mkdir()
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(1):
        Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)).save(faces / f"{i}.png")
    out = tmp_path / "export"
    cfg = ExportConfig(out=str(out), formats=["torchscript"], check_images=[str(faces)])
    with pytest.raises(RanfaceError, match="TorchScript export check failed: cosine"):
        export_model(cfg, small_model, {"backbone": "mobilefacenet"})
    assert not os.path.exists(out) or os.listdir(out) == []  # the check creates no folder


def test_export_cli_dry_run_and_bad_format(capsys):
    from ranface.cli import main

    assert main(["export", "some/model.pt", "--out", "x", "--formats", "onnx", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "formats: [onnx]" in text and "model: some/model.pt" in text
    assert main(["export", "m.pt", "--out", "x", "--formats", "tflite"]) == 2
    assert "formats must be a non-empty subset" in capsys.readouterr().err
