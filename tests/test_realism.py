import os

import numpy as np
import pytest
import torch
from PIL import Image

from ranface.eval.protocols import EvalContext, evaluate
from ranface.errors import ProtocolError
from ranface.eval.protocols.realism import (RealismOptions, domain_classifier_accuracy, frechet_distance,
                                            frechet_paired_bootstrap, realism_table)
from ranface.models import create_backbone


def test_frechet_hand_values():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    b = a + np.array([3.0, 0.0, 4.0])  # same covariance, mean shifted by a vector of norm 5
    assert frechet_distance(a, b) == pytest.approx(25.0, abs=1e-6)
    c = a * 2.0  # same mean (0), covariance 4I vs I: Tr(I + 4I - 2*2I) = 3 per unit cov
    assert frechet_distance(a, c) == pytest.approx(np.trace(np.cov(a, rowvar=False)), rel=1e-3)


def test_domain_classifier_chance_and_separable():
    rng = np.random.default_rng(1)
    same_a, same_b = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    assert abs(domain_classifier_accuracy(same_a, same_b) - 0.5) < 0.08
    far = rng.normal(size=(400, 8)) + 3.0
    assert domain_classifier_accuracy(same_a, far) > 0.97


def _folder(root, n, seed, blur=False):
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    for i in range(n):
        img = rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)
        if blur:
            img = np.asarray(Image.fromarray(img).resize((8, 8)).resize((112, 112)))
        Image.fromarray(img).save(os.path.join(root, f"{i:03d}.png"))
    return root


def test_protocol_end_to_end(tmp_path):
    torch.manual_seed(0)
    model = create_backbone("mobilefacenet", embedding_size=16)
    model.train()(torch.randn(4, 3, 112, 112))  # set BN statistics
    model.eval()
    hr = _folder(str(tmp_path / "hr"), 12, 0)
    synth = _folder(str(tmp_path / "synth"), 12, 0, blur=True)
    real = _folder(str(tmp_path / "real"), 12, 5, blur=True)
    ctx = EvalContext(model=model, info={"source": "test"})
    res = evaluate("lr-realism", ctx, str(tmp_path), RealismOptions(synth="synth", real="real", hr="hr",
                                                                     label="blur"),
                   out_dir=str(tmp_path / "out"))
    m = res["metrics"]
    assert m["frechet_distance"] >= 0 and 0 <= m["domain_accuracy"] <= 1
    assert m["identity_pairs"] == 12 and -1 <= m["identity_cosine"] <= 1
    assert res["counts"]["synth"] == 12 and res["counts"]["real"] == 12
    assert os.path.exists(tmp_path / "out" / "result.json")
    assert "blur" in realism_table([res])
    # a paired comparison with another method's twins of the same faces
    ref = _folder(str(tmp_path / "ref"), 12, 0)
    res2 = evaluate("lr-realism", ctx, str(tmp_path), RealismOptions(synth="synth", real="real", reference="ref",
                                                                      reference_label="sharp", bootstrap=20),
                    out_dir=str(tmp_path / "out2"))
    pv = res2["metrics"]["frechet_vs_reference"]
    assert pv["reference"] == "sharp" and pv["ci95"][0] <= pv["diff"] <= pv["ci95"][1]
    assert pv["diff"] == pytest.approx(res2["metrics"]["frechet_distance"] - frechet_distance(
        *[np.asarray(x) for x in (_embed_all(model, str(tmp_path / "real")), _embed_all(model, ref))]), abs=1e-3)
    os.remove(os.path.join(ref, "003.png"))
    with pytest.raises(ProtocolError, match="reference twins lack 1 of the synthesized faces"):
        evaluate("lr-realism", ctx, str(tmp_path), RealismOptions(synth="synth", real="real", reference="ref"),
                 out_dir=str(tmp_path / "out3"))


def _embed_all(model, folder):
    from ranface.eval.features import embed_images, list_image_files

    ctx = EvalContext(model=model, info={"source": "test"})
    feats = embed_images(ctx.embedder(flip=False), [os.path.join(folder, r) for r in list_image_files(folder)])
    return feats[""]


def test_paired_frechet_bootstrap_is_narrower_than_unpaired_and_centred():
    rng = np.random.default_rng(3)
    real = rng.normal(size=(300, 4))
    base = rng.normal(size=(300, 4)) + 0.5
    a, b = base + 0.05 * rng.normal(size=base.shape), base + np.array([0.2, 0, 0, 0])  # b shifted further away
    pv = frechet_paired_bootstrap(real, a, b, resamples=100, seed=0)
    assert pv["diff"] == pytest.approx(frechet_distance(real, a) - frechet_distance(real, b))
    assert pv["diff"] < 0 and pv["ci95"][1] < 0  # a is closer, and the paired interval says so
    # unpaired: the spread of one method's distance alone is wider than the paired difference's
    rs = np.random.default_rng(1)
    single = [frechet_distance(real[rs.integers(0, 300, 300)], a[rs.integers(0, 300, 300)]) for _ in range(100)]
    assert pv["std"] < np.std(single)
    none = frechet_paired_bootstrap(real, a, b, resamples=0)
    assert none["diff"] == pv["diff"] and none["ci95"] is None and none["std"] is None
    with pytest.raises(ValueError, match="paired sets differ"):
        frechet_paired_bootstrap(real, a, b[:10])


def test_missing_folder_listed(tmp_path):
    from ranface.errors import ProtocolError

    model = create_backbone("mobilefacenet", embedding_size=16).eval()
    with pytest.raises(ProtocolError, match="nope"):
        evaluate("lr-realism", EvalContext(model=model), str(tmp_path), RealismOptions(synth="nope", real="nope2"))


def test_frechet_bootstrap_interval_and_chance_band():
    from ranface.eval.protocols.realism import chance_interval, frechet_bootstrap

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 4)), rng.normal(size=(300, 4)) + 1.0  # true distance 4
    sd, lo, hi, bias = frechet_bootstrap(a, b, 100, seed=1)
    est = frechet_distance(a, b)
    assert (lo + hi) / 2 == pytest.approx(est) and hi - lo == pytest.approx(2 * 1.96 * sd)
    assert 0 < sd < 1.0 and lo < 4.0 < hi
    # resampling with replacement repeats faces: the distance of a resample is larger on average
    assert bias > 0
    assert frechet_bootstrap(a, b, 20, seed=1) == frechet_bootstrap(a, b, 20, seed=1)
    # 100 test faces: 1.96 * 0.5 / 10 = 0.098 either side of 0.5
    assert chance_interval(100) == pytest.approx((0.402, 0.598))
