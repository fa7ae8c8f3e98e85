"""Gallery file, enrol/add/remove, search back ends and the open-set calibration."""
from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest
import torch

from ranface.deploy.gallery import Gallery, list_enrolment, list_probes, model_fingerprint
from ranface.deploy.search import ExactIndex, FaissIndex, build_index, calibrate_threshold
from ranface.errors import DataError, RanfaceError
from ranface.eval.metrics import tar_at_far


def _unit(x):
    x = np.asarray(x, np.float64)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _gallery(dim=4):
    return Gallery.empty({"fingerprint": "sha256:abc", "backbone": "toy", "source": "x"},
                         {"flip": True, "template": "arcface", "face_size": [112, 112]}, dim)


# ------------------------------------------------------------------ gallery object + file
def test_templates_are_normalised_means_and_edits_keep_the_rest(tmp_path):
    g = _gallery()
    a = _unit([[1, 0, 0, 0], [0, 1, 0, 0]])
    b = _unit([[0, 0, 3, 4]])
    assert g.add_embeddings("a", a, ["a1.jpg", "a2.jpg"]) == "added"
    assert g.add_embeddings("b", b, ["b1.jpg"]) == "added"
    # mean of (1,0,0,0) and (0,1,0,0) is (.5,.5,0,0) -> normalised (1/sqrt2, 1/sqrt2, 0, 0)
    s = 1 / np.sqrt(2)
    np.testing.assert_allclose(g.templates[0], [s, s, 0, 0], atol=1e-7)
    np.testing.assert_allclose(g.templates[1], [0, 0, 0.6, 0.8], atol=1e-7)
    np.testing.assert_allclose(g.means[0], [0.5, 0.5, 0, 0], atol=1e-7)

    path = str(tmp_path / "g.npz")
    g.save(path)
    h = Gallery.load(path)
    assert h.names == ["a", "b"] and h.counts.tolist() == [2, 1]
    assert h.sources == [["a1.jpg", "a2.jpg"], ["b1.jpg"]]
    np.testing.assert_array_equal(h.templates, g.templates)
    assert h.fingerprint == "sha256:abc" and h.embedding["dim"] == 4

    before_b = h.templates[1].copy()
    with pytest.raises(RanfaceError, match="already enrolled"):
        h.add_embeddings("a", _unit([[0, 0, 1, 0]]))
    # merge: mean over all 3 images = (1/3, 1/3, 1/3, 0)
    assert h.add_embeddings("a", _unit([[0, 0, 1, 0]]), ["a3.jpg"], on_exists="merge") == "merged"
    np.testing.assert_allclose(h.templates[0], _unit([1, 1, 1, 0]), atol=1e-6)
    assert h.counts.tolist() == [3, 1] and h.sources[0][-1] == "a3.jpg"
    np.testing.assert_array_equal(h.templates[1], before_b)
    assert h.add_embeddings("c", _unit([[0, 0, 0, 1]])) == "added"
    np.testing.assert_array_equal(h.templates[1], before_b)  # untouched: nothing re-embedded
    assert h.add_embeddings("a", _unit([[0, 1, 0, 0]]), on_exists="replace") == "replaced"
    np.testing.assert_allclose(h.templates[0], [0, 1, 0, 0], atol=1e-7)
    assert h.counts.tolist() == [1, 1, 1]

    assert h.remove(["a"]) == ["a"]
    assert h.names == ["b", "c"] and len(h) == 2
    np.testing.assert_array_equal(h.templates[0], before_b)
    with pytest.raises(RanfaceError, match="not in the gallery"):
        h.remove(["zz"])
    h.save()
    k = Gallery.load(path)
    assert k.names == ["b", "c"] and k.counts.tolist() == [1, 1]
    assert [e["event"] for e in k.meta["history"]] == ["added", "added", "merged", "added",
                                                        "replaced", "removed"]


def test_edits_clear_a_stored_calibration():
    g = _gallery()
    g.add_embeddings("a", _unit([[1, 0, 0, 0]]))
    g.set_calibration({"threshold": 0.5, "fpir": 0.1})
    assert g.calibration["threshold"] == 0.5
    g.add_embeddings("b", _unit([[0, 1, 0, 0]]))
    assert g.calibration is None
    assert g.meta["history"][-1]["calibration_cleared"] is True


def test_model_mismatch_is_refused(tmp_path):
    g = _gallery()
    g.save(str(tmp_path / "g.npz"))
    g = Gallery.load(str(tmp_path / "g.npz"))
    g.check_model("sha256:abc")
    with pytest.raises(DataError, match=r"g\.npz: gallery was built with model abc .* cannot be compared"):
        g.check_model("sha256:def")


def _write_npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def test_corrupt_gallery_files_name_the_file(tmp_path):
    g = _gallery()
    g.add_embeddings("a", _unit([[1, 0, 0, 0]]))
    good = g.save(str(tmp_path / "good.npz"))
    data = open(good, "rb").read()

    cases = {}
    p = tmp_path / "garbage.npz"
    p.write_bytes(b"this is not a gallery at all" * 10)
    cases[str(p)] = "not a readable gallery"
    p = tmp_path / "truncated.npz"
    p.write_bytes(data[: len(data) // 2])
    cases[str(p)] = "not a readable gallery"
    p = tmp_path / "array.npz"
    with open(p, "wb") as fh:
        np.save(fh, np.zeros(3))
    cases[str(p)] = "single .npy array"
    cases[_write_npz(tmp_path / "other.npz", x=np.zeros(2))] = "missing templates, means, counts, meta"
    meta = np.frombuffer(json.dumps({"format": "something/1"}).encode(), np.uint8)
    cases[_write_npz(tmp_path / "fmt.npz", templates=np.zeros((0, 4)), means=np.zeros((0, 4)),
                     counts=np.zeros(0, np.int64), meta=meta)] = "not a ranface-gallery/1 file"
    cases[_write_npz(tmp_path / "pickled.npz", templates=np.array([object()], dtype=object),
                     means=np.zeros((0, 4)), counts=np.zeros(0), meta=meta)] = "not a readable gallery"
    # Templates edited by hand so they no longer match the stored means.
    with np.load(good) as z:
        arr = {k: z[k] for k in z.files}
    arr["templates"] = arr["templates"][:, ::-1].copy()
    cases[_write_npz(tmp_path / "edited.npz", **arr)] = "do not match their means"
    arr2 = dict(arr, meta=np.frombuffer(b"\xff\xfe{", np.uint8))
    cases[_write_npz(tmp_path / "badmeta.npz", **arr2)] = "corrupt gallery metadata"
    cases[str(tmp_path / "missing.npz")] = "gallery file not found"
    for path, msg in cases.items():
        with pytest.raises(DataError) as ei:
            Gallery.load(path)
        assert str(ei.value).startswith(path), str(ei.value)
        assert msg in str(ei.value), (path, str(ei.value))
    assert zipfile.is_zipfile(good)


def test_empty_gallery_search_is_a_clear_error(tmp_path):
    g = _gallery()
    g.save(str(tmp_path / "e.npz"))
    g = Gallery.load(str(tmp_path / "e.npz"))
    assert len(g) == 0
    with pytest.raises(RanfaceError, match="holds no identities"):
        g.search(_unit([[1, 0, 0, 0]]), 1)


# ------------------------------------------------------------------ search
def _brute_force(q, t, k):
    sim = q.astype(np.float64) @ t.astype(np.float64).T
    rows = np.array([sorted(range(t.shape[0]), key=lambda j: (-sim[i, j], j))[:k]
                     for i in range(q.shape[0])])
    return np.take_along_axis(sim, rows, 1), rows


def test_exact_top_k_matches_brute_force_with_ties():
    rng = np.random.default_rng(1)
    t = _unit(rng.normal(size=(60, 16)))
    t[7] = t[3]  # exact ties: the lower row must come first
    t[50] = t[3]
    q = np.concatenate([_unit(rng.normal(size=(20, 16))), t[3:4]])
    for k in (1, 3, 10, 60, 100):
        s, r = ExactIndex(t).search(q, k)
        bs, br = _brute_force(q, t, min(k, 60))
        np.testing.assert_array_equal(r, br)
        np.testing.assert_allclose(s, bs, atol=1e-5)
    s, r = ExactIndex(t).search(t[3:4], 3)
    assert r.tolist() == [[3, 7, 50]]


def test_faiss_flat_equals_exact_and_auto_switches():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(2)
    t = _unit(rng.normal(size=(3000, 64)))
    q = _unit(rng.normal(size=(40, 64)))
    es, er = ExactIndex(t).search(q, 10)
    fi = FaissIndex(t, "flat")
    fs, fr = fi.search(q, 10)
    np.testing.assert_array_equal(fr, er)
    np.testing.assert_allclose(fs, es, atol=1e-5)
    hs, hr = FaissIndex(t, "hnsw").search(q, 1)
    assert np.mean(hr[:, 0] == er[:, 0]) >= 0.95
    assert isinstance(build_index(t, "auto", faiss_above=5000), ExactIndex)
    assert build_index(t, "auto", faiss_above=100).kind == "faiss"
    assert build_index(t, "faiss-hnsw").kind == "faiss-hnsw"
    g = _gallery(64)
    for i in range(50):
        g.add_embeddings(f"id{i}", t[i:i + 1])
    a = g.search(q, 5, "exact")
    b = g.search(q, 5, "faiss")
    np.testing.assert_array_equal(a[1], b[1])


# ------------------------------------------------------------------ calibration
def test_calibration_order_statistic_by_hand():
    s = np.arange(1, 11) / 10.0  # 0.1 .. 1.0
    c = calibrate_threshold(s, 0.2)  # 2 false accepts allowed: t = 3rd largest = 0.8
    assert c.threshold == pytest.approx(0.8) and c.false_accepts == 2 and c.achieved_fpir == 0.2
    c = calibrate_threshold(s, 0.25)  # floor(2.5) = 2
    assert c.threshold == pytest.approx(0.8)
    c = calibrate_threshold(s, 0.05)  # none allowed: the largest score, nothing accepted
    assert c.threshold == pytest.approx(1.0) and c.false_accepts == 0 and not c.measurable
    assert calibrate_threshold(s, 1.0).threshold == -np.inf
    c = calibrate_threshold([0.5, 0.5, 0.5, 0.1], 0.5)  # ties with t are rejected
    assert c.threshold == 0.5 and c.false_accepts == 0
    with pytest.raises(RanfaceError):
        calibrate_threshold([], 0.1)


def test_calibration_agrees_with_metrics_tar_at_far():
    rng = np.random.default_rng(3)
    imp = rng.normal(size=997)
    gen = rng.normal(1, 1, size=50)
    ops = tar_at_far(gen, imp, fars=(0.3, 0.1, 0.01))
    for f, op in ops.items():
        c = calibrate_threshold(imp, f)
        assert c.threshold == op.threshold
        assert c.achieved_fpir == op.achieved_far <= f
        # the threshold is the lowest one meeting the target: the next lower score breaks it
        lower = np.max(imp[imp < c.threshold])
        assert np.mean(imp > lower) > f


# ------------------------------------------------------------------ listing inputs
def test_listing_enrolment_and_probes(tmp_path):
    for name in ("ann", "bob"):
        (tmp_path / "g" / name).mkdir(parents=True)
        for i in range(2):
            (tmp_path / "g" / name / f"{i}.png").write_bytes(b"")
    pairs = list_enrolment(str(tmp_path / "g"))
    assert [(n, os.path.basename(p)) for n, p in pairs] == [("ann", "0.png"), ("ann", "1.png"),
                                                           ("bob", "0.png"), ("bob", "1.png")]
    lst = tmp_path / "list.tsv"
    lst.write_text("# comment\nann\tg/ann/0.png\n\nbob\t/abs/x.png\n")
    assert list_enrolment(str(lst)) == [("ann", str(tmp_path / "g/ann/0.png")), ("bob", "/abs/x.png")]
    bad = tmp_path / "bad.tsv"
    bad.write_text("ann\tx.png\nno-label.png\n")
    with pytest.raises(DataError, match="without an identity"):
        list_enrolment(str(bad))
    (tmp_path / "g" / "loose.png").write_bytes(b"")
    with pytest.raises(DataError, match="directly in the folder"):
        list_enrolment(str(tmp_path / "g"))
    probes = list_probes([str(tmp_path / "g"), str(lst)])
    assert probes[0] == (None, str(tmp_path / "g/loose.png"))  # unlabelled: not in a subfolder
    assert probes[1] == ("ann", str(tmp_path / "g/ann/0.png"))
    assert probes[-1] == ("bob", "/abs/x.png")


# ------------------------------------------------------------------ with a model
@pytest.fixture(scope="module")
def toy_model(face_folder):
    """An untrained MobileFaceNet (64-d) whose BN statistics are those of the faces."""
    from ranface.data.image import read_image
    from ranface.inference import Embedder
    from ranface.models import create_backbone

    torch.manual_seed(0)
    m = create_backbone("mobilefacenet", embedding_size=64)
    for mod in m.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.momentum = None  # cumulative: one pass sets the exact batch statistics
    imgs = [read_image(os.path.join(face_folder, p, f)) for p in sorted(os.listdir(face_folder))
            for f in sorted(os.listdir(os.path.join(face_folder, p)))]
    m.train()
    with torch.no_grad():
        m(Embedder(m).preprocess(imgs))
    return m.eval()


def _faces_of(folder, name):
    from ranface.data.image import read_image

    d = os.path.join(folder, name)
    return [read_image(os.path.join(d, f)) for f in sorted(os.listdir(d))]


def test_enrol_add_remove_round_trip(tmp_path, face_folder, toy_model):
    import shutil

    from ranface.api import FaceRecognizer

    first = tmp_path / "first"
    for n in ("id000", "id001"):
        shutil.copytree(os.path.join(face_folder, n), first / n)
    rec = FaceRecognizer(toy_model, device="cpu", flip=False)  # flip-sum: Embedder's business
    g, rep = rec.enrol(str(first), aligned=True)
    assert rep["identities"] == 2 and rep["images"] == 12 and rep["skipped"] == 0
    for i, n in enumerate(("id000", "id001")):
        e = rec.embedder.embed_arrays(_faces_of(face_folder, n))
        np.testing.assert_allclose(g.templates[i], _unit(e.astype(np.float64).mean(0)), atol=1e-6)
    path = g.save(str(tmp_path / "g.npz"))
    g = Gallery.load(path)
    assert g.fingerprint == model_fingerprint(toy_model)
    t01 = g.templates.copy()

    second = tmp_path / "second"
    shutil.copytree(os.path.join(face_folder, "id002"), second / "id002")
    g, rep = rec.enrol(str(second), g, aligned=True)
    assert rep["added"] == 1 and g.names == ["id000", "id001", "id002"]
    np.testing.assert_array_equal(g.templates[:2], t01)
    with pytest.raises(RanfaceError, match="already enrolled.*id002"):
        rec.enrol(str(second), g, aligned=True)
    g.remove(["id000"])
    np.testing.assert_array_equal(g.templates[0], t01[1])
    # Each probe's own identity comes first (the template holds its own image).
    res = rec.search(g, _faces_of(face_folder, "id002")[:2], k=2, aligned=True)
    assert [r["top_k"][0]["identity"] for r in res] == ["id002", "id002"]
    assert all(r["status"] == "no_threshold" for r in res)

    from ranface.models import create_backbone

    torch.manual_seed(1)
    stranger = FaceRecognizer(create_backbone("mobilefacenet", embedding_size=64).eval(),
                              device="cpu", flip=False)
    with pytest.raises(DataError, match="gallery was built with model"):
        stranger.enrol(str(second), g, aligned=True, on_exists="merge")
    with pytest.raises(DataError, match="gallery was built with model"):
        stranger.search(g, _faces_of(face_folder, "id002")[:1], aligned=True)
    flipping = FaceRecognizer(toy_model, device="cpu", flip=True)
    with pytest.raises(DataError, match="flip=False"):
        flipping.check_gallery(g)


def test_calibrated_threshold_gives_the_fpir_on_the_calibration_set(face_folder, toy_model):
    from ranface.api import FaceRecognizer

    rec = FaceRecognizer(toy_model, device="cpu", flip=False)
    g, _ = rec.enrol({n: _faces_of(face_folder, n)[:2] for n in ("id000", "id001")}, aligned=True)
    strangers = _faces_of(face_folder, "id002") + _faces_of(face_folder, "id003")  # 12 faces
    cal = rec.calibrate(g, strangers, 0.25, aligned=True)
    res = rec.search(g, strangers, 1, cal.threshold, aligned=True)
    accepted = sum(r["status"] == "match" for r in res)
    assert accepted == cal.false_accepts <= 3 and cal.achieved_fpir == accepted / 12
    top1 = np.array([r["score"] for r in res])
    for fpir in (0.1, 0.25, 0.5):
        c = calibrate_threshold(top1, fpir)
        allowed = int(np.floor(fpir * 12))
        assert np.sum(top1 > c.threshold) == c.false_accepts <= allowed
        # the lowest such threshold: one more accepted face would break the target
        assert np.sort(top1)[::-1][allowed] == pytest.approx(c.threshold)
    assert calibrate_threshold(top1, 0.25) == cal
    with pytest.raises(RanfaceError, match="non-enrolled"):
        rec.calibrate(g, os.path.join(face_folder), 0.1, aligned=True)


def test_evaluate_search_by_hand():
    from ranface.api import evaluate_search

    g = _gallery()
    g.add_embeddings("a", _unit([[1, 0, 0, 0]]))
    g.add_embeddings("b", _unit([[0, 1, 0, 0]]))

    def r(label, top, score):
        return {"label": label, "score": score,
                "top_k": [{"identity": top, "score": score}] if top else []}

    res = [r("a", "a", 0.9), r("b", "a", 0.8), r("a", "a", 0.6),  # mated: 2 of 3 right
           r("x", "a", 0.7), r("y", "b", 0.5), r("z", None, None)]  # unmated (one no face)
    ev = evaluate_search(res, g, threshold=0.65, fpirs=(0.5, 0.1))
    assert ev["mated"] == 3 and ev["unmated"] == 3 and ev["no_face"] == 1
    assert ev["rank1"] == pytest.approx(2 / 3)
    assert ev["tpir_at_threshold"] == pytest.approx(1 / 3)  # only 0.9 > 0.65 among hits
    assert ev["fpir_at_threshold"] == pytest.approx(1 / 2)  # 0.7 of x, of 2 unmated with a face
    # FPIR 0.5 over 2 unmated scores (0.7, 0.5): 1 false accept -> t = 0.5 -> hits 0.9, 0.6
    assert ev["tpir_at_fpir"]["0.5"]["tpir"] == pytest.approx(2 / 3)
    assert ev["tpir_at_fpir"]["0.1"] is None  # 0.1 * 2 < 1: not measurable


def test_cli_gallery_round_trip(tmp_path, face_folder, toy_model, capsys):
    from ranface.cli import main
    from ranface.inference import model_package

    model = str(tmp_path / "model.pt")
    torch.save(model_package(toy_model, "mobilefacenet", {"embedding_size": 64}), model)
    lst = tmp_path / "enrol.tsv"
    lst.write_text("".join(f"id00{i}\t{os.path.join(face_folder, f'id00{i}', '000.png')}\n"
                           for i in range(3)))
    gal = str(tmp_path / "g.npz")
    assert main(["gallery", "enrol", str(lst), "--model", model, "--aligned", "--out", gal]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["identities"] == 3
    assert main(["gallery", "remove", gal, "id001"]) == 0
    capsys.readouterr()
    assert main(["gallery", "info", gal]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["identities"] == 2 and info["embedding"]["aligned_input"] is True
    probe = os.path.join(face_folder, "id002", "000.png")
    res = str(tmp_path / "r.csv")
    assert main(["gallery", "search", gal, probe, "--aligned", "--threshold", "0.5", "-k", "2",
                 "--out", res]) == 0
    capsys.readouterr()
    rows = open(res).read().splitlines()
    assert rows[0].startswith("probe,label,status") and ",match,id002," in rows[1]
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"junk")
    assert main(["gallery", "search", str(bad), probe, "--aligned"]) == 2
    assert "bad.npz: not a readable gallery file" in capsys.readouterr().err


def test_first_copies_maps_each_row_to_its_lowest_identical_row():
    from ranface.deploy.search import _first_copies
    rng = np.random.default_rng(3)
    a, b, c = rng.normal(size=(3, 8)).astype(np.float32)
    t = np.stack([a, b, a, c, b, a])
    assert _first_copies(t).tolist() == [0, 1, 0, 3, 1, 0]
    assert _first_copies(np.stack([a, b, c])) is None
    near = a.copy()
    near[5] = np.nextafter(near[5], np.float32(9))  # one ulp apart: not a copy
    assert _first_copies(np.stack([a, near])) is None


def test_first_copies_never_joins_rows_whose_hashes_collide(monkeypatch):
    from ranface.deploy import search
    monkeypatch.setattr(search, "_row_hashes", lambda bits: np.zeros(len(bits), np.uint64))
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(2, 8)).astype(np.float32)
    # every row collides with row 0: only a's copy joins it; b and its copy stay apart
    assert search._first_copies(np.stack([a, b, a, b])).tolist() == [0, 1, 0, 3]
    assert search._first_copies(np.stack([a, b])) is None
