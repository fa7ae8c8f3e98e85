"""Model card and the one loader: round trip, old files, wrong files, templates, the
calibrated verification of raw photos (acceptance of issue 14), reports and CLI manners."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from conftest import require_shared
from ranface.errors import CheckpointError, DataError
from ranface.models.card import ModelCard, Thresholds
from ranface.models.loader import MODEL_FORMAT, load_model, model_package, read_card
from ranface.train.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def small():
    from ranface.models import create_backbone

    torch.manual_seed(0)
    return create_backbone("mobilefacenet", embedding_size=32).eval()


def test_card_round_trip_and_malformed():
    card = ModelCard(architecture="iresnet50", arch_args={"embedding_size": 512}, embedding_size=512,
                     template="arcface", thresholds=Thresholds(best_accuracy=0.3, data="x"))
    back = ModelCard.from_dict(json.loads(json.dumps(card.to_dict())))
    assert back == ModelCard.from_dict(card.to_dict()) and back.threshold == 0.3
    assert back.input_size == (112, 112) and back.template == "arcface"
    with pytest.raises(CheckpointError, match="m.pt: malformed model card: template"):
        ModelCard.from_dict(dict(card.to_dict(), template="mtcnn"), "m.pt")
    with pytest.raises(CheckpointError, match="unknown keys"):
        ModelCard.from_dict(dict(card.to_dict(), colour="rgb"), "m.pt")


def test_model_pt_carries_card_and_old_files_still_load(tmp_path, small):
    faces = tmp_path / "faces"
    faces.mkdir()
    (faces / "prepare_config.yaml").write_text("template: dlib\nsize: [112, 112]\n")
    cfg = {"stage": "hr", "data": {"train": str(faces)}, "model": {"backbone": "mobilefacenet"}}
    pkg = model_package(small, "mobilefacenet", {"embedding_size": 32}, cfg)
    new = str(tmp_path / "new.pt")
    save_checkpoint(new, pkg)
    m, card = load_model(new)
    assert card.template == "dlib" and card.provenance.stage == "hr"  # from the training faces
    assert card.provenance.config_digest.startswith("sha256:") and card.embedding_size == 32
    assert card.provenance.source == os.path.abspath(new)
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(m(x), small(x))
    old = {k: v for k, v in pkg.items() if k != "card"}  # written before cards existed
    save_checkpoint(str(tmp_path / "old.pt"), old)
    _, derived = load_model(str(tmp_path / "old.pt"))
    assert derived.template == "dlib" and derived.architecture == "mobilefacenet"
    assert read_card(str(tmp_path / "old.pt")).embedding_size == 32
    assert pkg["format"] == MODEL_FORMAT


def test_wrong_files_get_one_line(tmp_path):
    g = tmp_path / "people.npz"
    np.savez(g, templates=np.zeros((1, 2)), means=np.zeros((1, 2)), counts=np.ones(1), meta=np.zeros(1))
    with pytest.raises(CheckpointError, match=r"people.npz: is a ranface gallery .* not a model; --model expects"):
        load_model(str(g))
    a = tmp_path / "a.npz"
    np.savez(a, x=np.zeros(3))
    with pytest.raises(CheckpointError, match="NumPy .npz archive"):
        load_model(str(a))
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"\x08\x07")
    with pytest.raises(CheckpointError, match="needs its model.json"):
        load_model(str(onnx))


def test_faceapi_card_and_prepare_model():
    folder = require_shared("models", "faceapi-resnet29")
    card = read_card(folder)
    assert card.template == "dlib" and card.input_size == (150, 150) and card.embedding_size == 128
    assert card.threshold is not None and "LFW" in card.thresholds.data
    assert card.thresholds.at_far is not None and card.thresholds.at_far >= card.threshold
    from ranface.cli import main

    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["prepare", "in", "--out", "o", "--model", folder, "--dry-run"]) == 0
    text = buf.getvalue()
    assert "template: dlib" in text and "size: [150, 150]" in text


def test_template_mismatch_refused_or_warned(tmp_path, capsys):
    from ranface.align.prepare import check_template

    (tmp_path / "prepare_config.yaml").write_text("template: arcface\n")
    with pytest.raises(DataError, match="'arcface' template, but the model expects 'dlib'"):
        check_template(str(tmp_path), "dlib")
    assert check_template(str(tmp_path), "dlib", force=True) == "arcface"
    assert "warning" in capsys.readouterr().err
    assert check_template(str(tmp_path), "arcface") == "arcface"


def test_every_pil_format_is_an_image(tmp_path):
    from PIL import Image

    from ranface.align.prepare import list_photos
    from ranface.config import PrepareConfig
    from ranface.data.image import image_extensions, read_image

    assert {".pgm", ".ppm", ".pbm", ".jpg", ".png", ".tif"} <= set(image_extensions())
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (20, 16), dtype=np.uint8)).save(tmp_path / "s1.pgm")
    Image.fromarray(rng.integers(0, 255, (20, 16, 3), dtype=np.uint8)).save(tmp_path / "s2.ppm")
    _, rels = list_photos(PrepareConfig(input=str(tmp_path)))
    assert rels == ["s1.pgm", "s2.ppm"]
    assert read_image(tmp_path / "s1.pgm").shape == (20, 16, 3)


def test_mixed_sizes_embed():
    from ranface.inference import Embedder
    from ranface.models import create_backbone

    torch.manual_seed(0)
    emb = Embedder(create_backbone("mobilefacenet", embedding_size=32).eval(), flip=False)
    rng = np.random.default_rng(1)
    a, b = (rng.integers(0, 255, (s, s, 3), dtype=np.uint8) for s in (250, 112))
    both = emb.embed_arrays([a, b])
    np.testing.assert_allclose(both[1], emb.embed_arrays([b])[0], atol=1e-5)
    assert both.shape == (2, 32)


def test_equal_error_rate_against_brute_force():
    from ranface.eval.metrics import equal_error_rate

    rng = np.random.default_rng(0)
    g, i = rng.normal(1, 1, 300), rng.normal(-1, 1, 500)
    eer, t = equal_error_rate(g, i)
    # brute force over a fine grid: the point where FAR and FRR are closest
    grid = np.linspace(-5, 5, 200001)
    far = np.array([(i > x).mean() for x in grid[::50]])
    frr = np.array([(g <= x).mean() for x in grid[::50]])
    k = np.argmin(np.abs(far - frr))
    assert abs(eer - (far[k] + frr[k]) / 2) < 4e-3
    assert abs(eer - 0.1587) < 0.03  # two unit normals 2 apart: Phi(-1)


def test_markdown_to_html_is_self_contained(tmp_path):
    from ranface.eval.report import markdown_to_html, plot_curves

    plot_curves({"a": {"x": [0, 1], "y": [0, 1], "x_label": "x", "y_label": "y"}}, str(tmp_path / "p.png"))
    md = "# Title\n\n- model: `m`\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n![p](p.png)\n"
    html = markdown_to_html(md, str(tmp_path))
    assert "<h1>Title</h1>" in html and "<td>1</td><td>2</td>" in html and "<code>m</code>" in html
    assert 'src="data:image/png;base64,iVBOR' in html and "p.png\"" not in html


def test_every_option_has_help_and_shows_defaults():
    import argparse

    from ranface.cli import _optional_commands, build_parser

    parser = build_parser(_optional_commands())
    missing = []
    examples = set()

    def walk(p, name):
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for n, sp in a.choices.items():
                    walk(sp, f"{name} {n}")
            elif not a.help and a.dest != "help":
                missing.append(f"{name}: {a.dest}")
            elif a.dest == "overrides":
                examples.add(a.help)
    walk(parser, "ranface")
    assert not missing
    assert len(examples) >= 8  # a --set example per command, not one for all
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert "(default: 64)" in sub.choices["evaluate"].format_help().replace("\n", " ").replace("  ", " ")


def test_text_table():
    from ranface.io_utils import text_table

    t = text_table(["probe", "score"], [["a.jpg", "0.9"], ["long_name.jpg", "0.12"]]).splitlines()
    assert t[0] == "probe          score" and t[1].startswith("-------------  -----")
    assert t[3] == "long_name.jpg  0.12"


def test_compare_raw_lfw_photos_with_the_cards_threshold(capsys):
    """Issue 14 acceptance: raw LFW photos, bundled model, no --threshold."""
    from ranface.cli import main

    lfw = require_shared("lfw-gray", "images")
    model = require_shared("models", "faceapi-resnet29")
    gore1, gore2 = (os.path.join(lfw, "Al_Gore", f"Al_Gore_000{i}.jpg") for i in (1, 2))
    sandler = os.path.join(lfw, "Adam_Sandler", "Adam_Sandler_0001.jpg")
    assert main(["compare", gore1, gore2, "-m", model]) == 0
    same = json.loads(capsys.readouterr().out)
    assert same["same"] is True and same["template"] == "dlib"
    assert same["threshold_source"].startswith("model card")
    assert main(["compare", gore1, sandler, "-m", model]) == 0
    diff = json.loads(capsys.readouterr().out)
    assert diff["same"] is False and diff["threshold"] == same["threshold"]
    assert diff["cosine"] < diff["threshold"] < same["cosine"]


def test_gallery_aligned_enrol_checks_and_records_the_template(tmp_path, small, capsys):
    from PIL import Image

    from ranface.api import FaceRecognizer

    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)).save(tmp_path / name / "1.png")
    (tmp_path / "prepare_config.yaml").write_text("template: dlib\n")
    rec = FaceRecognizer(small, device="cpu", template="arcface")
    with pytest.raises(DataError, match="'dlib' template, but the model expects 'arcface'"):
        rec.enrol(str(tmp_path), aligned=True)
    rec.force = True
    g, report = rec.enrol(str(tmp_path), aligned=True)
    assert report["identities"] == 2 and g.embedding["template"] == "dlib"
    assert "warning" in capsys.readouterr().err
