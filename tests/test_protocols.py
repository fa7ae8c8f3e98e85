"""Evaluation protocols: registry and options, root checks, template aggregation and
pair scoring by hand, and each protocol end to end on a fixture in its exact on-disk
layout built from real LFW faces, checked against an independent brute-force scorer."""
import math
import os
import threading

import numpy as np
import pytest
import scipy.io
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from conftest import require_shared
from ranface.config import load_config
from ranface.errors import ConfigError, DataError, ProtocolError
from ranface.eval.features import embed_arrays, resize_to
from ranface.eval.protocols import EvalContext, evaluate, get_protocol, list_protocols
from ranface.models.registry import BackboneSpec

PEOPLE = ["George_W_Bush", "Colin_Powell", "Tony_Blair", "Donald_Rumsfeld", "Gerhard_Schroeder",
          "Ariel_Sharon"]
# Rough 5-point positions (l/r eye, nose, l/r mouth corner) of an LFW 250x250 photo.
LFW_POINTS = np.array([[102, 115], [148, 115], [125, 140], [107, 165], [143, 165]], float)


# ----------------------------------------------------------------------------- helpers
class TinyNet(nn.Module):
    """Stand-in backbone: a fixed random projection of the 8x8-pooled face. Counts the
    images it sees (``calls``) so tests can check each image is embedded once; the count
    is locked, as evaluation threads run forward passes side by side."""

    _lock = threading.Lock()  # on the class: a module with a lock in it cannot be deep-copied

    def __init__(self, size=32, dim=24, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.spec = BackboneSpec(input_size=(size, size), embedding_size=dim)
        self.proj = nn.Parameter(torch.randn(3 * 64, dim, generator=g), requires_grad=False)
        self.calls = 0

    def forward(self, x):
        with self._lock:
            self.calls += x.shape[0]
        return F.adaptive_avg_pool2d(x, 8).flatten(1) @ self.proj


def ctx_for(model=None, **kw):
    model = model or TinyNet()
    kw.setdefault("fuse", False)  # embed with TinyNet itself, so that its call count is seen
    return EvalContext(model.eval(), {"source": "tiny", "backbone": "tiny"}, batch_size=8, **kw)


def lfw(name, k):
    """Image k (1-based) of a person in the shared grey LFW, as 250x250x3 uint8."""
    root = require_shared("lfw-gray", "images")
    with Image.open(os.path.join(root, name, f"{name}_{k:04d}.jpg")) as im:
        return np.array(im.convert("RGB"))


def crop(arr, size=112):
    """Crude centre crop of an LFW photo around the face, resized to ``size``."""
    im = Image.fromarray(arr[70:190, 65:185])
    if isinstance(size, int):
        size = (size, size)
    return np.array(im.resize((size[1], size[0]), Image.BICUBIC))


def save(arr, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path)


def cell(names):
    c = np.empty((len(names), 1), dtype=object)
    c[:, 0] = list(names)
    return c


def brute_tar(gen, imp, far):
    """Largest TAR over every threshold whose FAR (score > t) is <= far; None if none
    allows a false accept... computed by trying every observed score and -inf."""
    gen, imp = np.asarray(gen, float), np.asarray(imp, float)
    if far * imp.size < 1:
        return None
    best = 0.0
    for t in np.concatenate([[-np.inf], gen, imp]):
        if np.sum(imp > t) / imp.size <= far + 1e-15:
            best = max(best, np.sum(gen > t) / gen.size)
    return best


def brute_ranks(sim, p_lab, g_lab):
    out = []
    for i in range(sim.shape[0]):
        mate = np.asarray(g_lab) == p_lab[i]
        m = sim[i][mate].max()
        out.append(1 + int(np.sum((sim[i] >= m) & ~mate)))
    return np.array(out)


# ----------------------------------------------------------------------------- registry
def test_registry_lists_all_protocols_and_rejects_unknown():
    assert set(list_protocols()) >= {"pairs", "bin", "ijbc", "ijbc-tiny", "tinyface", "scface",
                                     "survface"}
    with pytest.raises(ConfigError, match="unknown protocol 'nope'.*pairs"):
        get_protocol("nope")


def test_options_from_set_overrides():
    p = get_protocol("pairs")
    o = load_config(p.Options, None, ["probe_sizes=[32,16]", "modes=[hr-lr]", "flip=false"])
    assert o.probe_sizes == [32, 16] and o.modes == ["hr-lr"] and o.flip is False
    t = load_config(get_protocol("ijbc-tiny-templates").Options, None,
                    ["min_px=12", "faceness=true"])
    assert t.min_px == 12.0 and t.max_px == 30.0 and t.faceness is True
    with pytest.raises(ConfigError, match="probe_size"):
        load_config(p.Options, None, ["probe_size=[16]"])


@pytest.mark.parametrize("name,expected", [
    ("ijbc", ["loose_crop/", "meta/ijbc_face_tid_mid.txt", "meta/ijbc_template_pair_label.txt",
              "meta/ijbc_name_5pts_score.txt"]),
    ("tinyface", ["Probe/", "Gallery_Match/", "Gallery_Distractor/", "probe_img_ID_pairs.mat",
                  "gallery_match_img_ID_pairs.mat"]),
    ("survface", ["Face_Identification_Test_Set/gallery/", "mated_probe/", "unmated_probe/",
                  "gallery_img_ID_pairs.mat", "mated_probe_img_ID_pairs.mat",
                  "verification_images/", "positive_pairs_names.mat",
                  "negative_pairs_names.mat"]),
    ("pairs", ["pairs.txt"]),
])
def test_missing_protocol_files_listed_in_one_error(tmp_path, name, expected):
    p = get_protocol(name)
    with pytest.raises(ProtocolError) as e:
        p.validate_root(str(tmp_path), p.default_options())
    msg = str(e.value)
    assert str(tmp_path) in msg
    for part in expected:
        assert part in msg, (part, msg)


def test_bin_and_scface_roots_without_data(tmp_path):
    with pytest.raises(ProtocolError, match="no \\*.bin"):
        get_protocol("bin").validate_root(str(tmp_path))
    o = get_protocol("bin").Options(files=["lfw", "cfp_fp"])
    with pytest.raises(ProtocolError, match="lfw.bin.*cfp_fp.bin"):
        get_protocol("bin").validate_root(str(tmp_path), o)
    with pytest.raises(ProtocolError, match="no mugshots.*and no surveillance"):
        get_protocol("scface").validate_root(str(tmp_path))


# ----------------------------------------------------------------------------- IJB-C maths
def test_template_features_hand_worked():
    from ranface.eval.protocols.ijbc import template_features

    # Template 7: media 1 = faces (1,0) and (0,1) -> mean (.5,.5); media 2 = (0,2) -> (0,2).
    # Sum (.5, 2.5) -> normalised (.5, 2.5)/sqrt(6.5). Template 3: one media of (3,4) -> (.6,.8).
    feats = np.array([[1, 0], [0, 2], [0, 1], [3, 4]], float)
    tids = np.array([7, 7, 7, 3])
    mids = np.array([1, 2, 1, 5])
    ids, tf = template_features(feats, tids, mids)
    assert ids.tolist() == [3, 7]
    np.testing.assert_allclose(tf[0], [0.6, 0.8], rtol=1e-6)
    np.testing.assert_allclose(tf[1], np.array([0.5, 2.5]) / math.sqrt(6.5), rtol=1e-6)
    # Weights multiply each face first: face (0,1) weight 3 -> media 1 mean (.5, 1.5).
    _, tw = template_features(feats, tids, mids, weights=np.array([1, 1, 3, 1]))
    np.testing.assert_allclose(tw[1], np.array([0.5, 3.5]) / math.sqrt(12.5), rtol=1e-6)


def test_blocked_pair_scores_equal_direct_products():
    from ranface.eval.protocols.ijbc import iter_pair_scores, score_pairs

    rng = np.random.default_rng(0)
    tf = rng.standard_normal((11, 5)).astype(np.float32)
    p1 = rng.integers(0, 11, 200)
    p2 = rng.integers(0, 11, 200)
    ref = np.einsum("ij,ij->i", tf[p1].astype(float), tf[p2].astype(float))
    for rows in (1, 3, 1024):
        np.testing.assert_allclose(score_pairs(tf, p1, p2, rows), ref, rtol=1e-5, atol=1e-5)
    seen = np.concatenate([sel for sel, _ in iter_pair_scores(tf, p1, p2, 4)])
    assert sorted(seen.tolist()) == list(range(200))  # every pair exactly once
    # Sparse buckets (few pairs over many templates) take the gathered-product path.
    big = rng.standard_normal((3000, 5)).astype(np.float32)
    q1, q2 = rng.integers(0, 3000, 40), rng.integers(0, 3000, 40)
    np.testing.assert_allclose(score_pairs(big, q1, q2, 1024),
                               np.einsum("ij,ij->i", big[q1], big[q2]), rtol=1e-5, atol=1e-5)


def test_subjects_from_genuine_pair_components():
    from ranface.eval.protocols.ijbc import subjects_from_pairs

    t1 = np.array([1, 2, 5, 1, 8])
    t2 = np.array([2, 3, 6, 5, 9])
    lab = np.array([True, True, True, False, False])
    s = subjects_from_pairs(t1, t2, lab, np.array([1, 2, 3, 4, 5, 6]))
    assert s[1] == s[2] == s[3]
    assert s[5] == s[6] != s[1]
    assert len({s[4], s[1], s[5], s[8], s[9]}) == 5


# ----------------------------------------------------------------------------- IJB-C layout
# face row: (image, tid, mid, person, photo number, half-size?)
IJB_FACES = [
    ("1.jpg", 1, 10, 0, 1, False), ("2.jpg", 1, 10, 0, 2, False), ("3.jpg", 1, 11, 0, 3, True),
    ("4.jpg", 2, 12, 0, 4, True), ("5.jpg", 2, 13, 0, 5, True),
    ("6.jpg", 3, 20, 1, 1, False), ("7.jpg", 3, 20, 1, 2, True), ("8.jpg", 4, 21, 1, 3, True),
    ("9.jpg", 5, 30, 2, 1, False), ("10.jpg", 6, 31, 2, 2, True), ("11.jpg", 6, 31, 2, 3, True),
]
IJB_PAIRS = [(1, 2, 1), (3, 4, 1), (5, 6, 1)] + [
    (a, b, 0) for a, b in [(1, 3), (1, 4), (1, 5), (1, 6), (2, 3), (2, 4), (2, 5), (2, 6),
                           (3, 5), (3, 6), (4, 5), (4, 6)]]


def make_ijbc(root):
    os.makedirs(os.path.join(root, "meta"), exist_ok=True)
    lm_lines = []
    for k, (img, tid, mid, person, n, half) in enumerate(IJB_FACES):
        arr = lfw(PEOPLE[person], n)
        pts = LFW_POINTS.copy()
        if half:  # a tiny face: eye-mouth distance 50 px -> 25 px
            arr = np.array(Image.fromarray(arr).resize((125, 125), Image.BICUBIC))
            pts = (pts + 0.5) / 2 - 0.5
        save(arr, os.path.join(root, "loose_crop", img))
        lm_lines.append(img + " " + " ".join(f"{v:.2f}" for v in pts.ravel())
                        + f" {0.5 + 0.04 * k:.2f}")
    with open(os.path.join(root, "meta", "ijbc_face_tid_mid.txt"), "w") as fh:
        fh.writelines(f"{img} {tid} {mid}\n" for img, tid, mid, *_ in IJB_FACES)
    with open(os.path.join(root, "meta", "ijbc_name_5pts_score.txt"), "w") as fh:
        fh.write("\n".join(lm_lines) + "\n")
    with open(os.path.join(root, "meta", "ijbc_template_pair_label.txt"), "w") as fh:
        fh.writelines(f"{a} {b} {lab}\n" for a, b, lab in IJB_PAIRS)
    return root


@pytest.fixture(scope="module")
def ijbc_root(tmp_path_factory):
    return make_ijbc(str(tmp_path_factory.mktemp("ijbc")))


def ijb_reference(model, root, faceness=False):
    """Per-face features computed one by one, outside the protocol's batching."""
    from ranface.align.templates import template_for
    from ranface.align.transform import estimate_similarity, warp_face
    from ranface.inference import Embedder

    emb = Embedder(model, flip=True, batch_size=1)
    dst = template_for(emb.input_size, "arcface")
    lm = {}
    for line in open(os.path.join(root, "meta", "ijbc_name_5pts_score.txt")):
        t = line.split()
        lm[t[0]] = (np.array([float(v) for v in t[1:11]]).reshape(5, 2), float(t[11]))
    feats = {}
    for img, *_ in IJB_FACES:
        with Image.open(os.path.join(root, "loose_crop", img)) as im:
            arr = np.array(im.convert("RGB"))
        face = warp_face(arr, estimate_similarity(lm[img][0], dst), emb.input_size)
        f = emb.embed_arrays([face])[0].astype(float)
        feats[img] = f * (lm[img][1] if faceness else 1.0)
    return feats, lm


def reference_templates(feats, rows):
    """Media average, sum over media, normalise: plain Python dictionaries."""
    media = {}
    for img, tid, mid, *_ in rows:
        media.setdefault(tid, {}).setdefault(mid, []).append(feats[img])
    out = {}
    for tid, ms in media.items():
        v = sum(np.mean(fs, axis=0) for fs in ms.values())
        out[tid] = v / np.linalg.norm(v)
    return out


def test_ijbc_end_to_end_against_reference(ijbc_root, tmp_path):
    model = TinyNet()
    o = get_protocol("ijbc").Options(fars=[0.1, 0.01], faceness=True)
    res = evaluate("ijbc", ctx_for(model), ijbc_root, o, str(tmp_path / "out"))
    assert model.calls == 2 * len(IJB_FACES)  # each face once, plus its mirror
    c = res["counts"]
    assert (c["genuine"], c["impostor"], c["scored"], c["skipped"]) == (3, 12, 15, 0)
    assert c["templates"] == 6
    feats, _ = ijb_reference(model, ijbc_root, faceness=True)
    t = reference_templates(feats, IJB_FACES)
    gen = [t[a] @ t[b] for a, b, lab in IJB_PAIRS if lab]
    imp = [t[a] @ t[b] for a, b, lab in IJB_PAIRS if not lab]
    tar = res["metrics"]["tar"]
    assert tar["0.1"]["tar"] == brute_tar(gen, imp, 0.1)
    assert tar["0.1"]["false_accepts"] == 1 and tar["0.1"]["measurable"]
    assert tar["0.01"]["tar"] is None and not tar["0.01"]["measurable"]
    assert os.path.exists(tmp_path / "out" / "roc.png")
    md = open(tmp_path / "out" / "result.md").read()
    assert "| Method | 0.1 | 0.01 |" in md


def test_ijbc_tiny_templates_rule_counts_and_scores(ijbc_root):
    model = TinyNet()
    o = get_protocol("ijbc-tiny-templates").Options(fars=[0.2])
    res = get_protocol("ijbc-tiny-templates").run(ctx_for(model), ijbc_root, o)
    c = res["counts"]
    tiny = [r for r in IJB_FACES if r[5]]
    assert c["faces_tiny"] == len(tiny) == 7
    assert model.calls == 2 * 7  # only tiny faces are embedded
    # Genuine: A {3,4,5} -> 3 pairs (3 media), B {7,8} -> 1, C {10,11} share media 31 -> 0.
    # Impostors: label-0 pairs between templates with tiny faces (template 5 has none): 8.
    assert (c["genuine"], c["impostor"]) == (4, 8)
    feats, _ = ijb_reference(model, ijbc_root)
    t = reference_templates(feats, tiny)
    imp = [t[a] @ t[b] for a, b, lab in IJB_PAIRS if not lab and a in t and b in t]
    f = {r[0]: feats[r[0]] for r in tiny}
    gen = [f["3.jpg"] @ f["4.jpg"], f["3.jpg"] @ f["5.jpg"], f["4.jpg"] @ f["5.jpg"],
           f["7.jpg"] @ f["8.jpg"]]
    assert len(imp) == 8
    assert res["metrics"]["tar"]["0.2"]["tar"] == brute_tar(gen, imp, 0.2)
    same = get_protocol("ijbc-tiny-templates").run(ctx_for(), ijbc_root,
                                         get_protocol("ijbc-tiny-templates").Options(same_media_genuine=True,
                                                                           fars=[0.2]))
    assert same["counts"]["genuine"] == 5
    none = get_protocol("ijbc-tiny-templates").Options(min_px=26, max_px=40)
    with pytest.raises(ProtocolError, match="eye-to-mouth distance in \\[26"):
        get_protocol("ijbc-tiny-templates").run(ctx_for(), ijbc_root, none)


# IJB-C release layout (NIST): protocols/ijbc_11_covariate_probe_reference.csv has this
# header, one face per TEMPLATE_ID; ijbc_11_covariate_matches.csv is "tid1,tid2" lines.
COV_HEADER = ("TEMPLATE_ID,SUBJECT_ID,FILENAME,SIGHTING_ID,FACE_X,FACE_Y,FACE_WIDTH,FACE_HEIGHT,"
              "FRAME_NUM,FACIAL_HAIR,AGE,INDOOR_OUTDOOR,SKINTONE,GENDER,YAW,ROLL")
# (template, subject, file, person, LFW photo, scale): eye-mouth 50 px x scale
COV_FACES = [(101, 10, "img/1.jpg", 0, 1, 0.5), (102, 10, "frames/20_1.png", 0, 2, 0.25),
             (103, 10, "img/3.jpg", 0, 3, 1.0), (104, 10, "img/4.jpg", 0, 4, 0.5),
             (105, 20, "img/5.jpg", 1, 1, 0.5), (106, 20, "img/6.jpg", 1, 2, 0.5),
             (107, 30, "img/7.jpg", 2, 1, 0.5), (108, 30, "img/8.jpg", 2, 2, 1 / 6),
             (109, 40, "img/9.jpg", 3, 1, 1.0)]
COV_MATCHES = [(a, b) for a in (101, 103, 105, 107) for b in range(a + 1, 110)]


def make_ijbc_covariate(root):
    rows, lms = [COV_HEADER], []
    for tid, sub, name, person, n, scale in COV_FACES:
        arr = lfw(PEOPLE[person], n)
        size = int(round(250 * scale))
        arr = np.array(Image.fromarray(arr).resize((size, size), Image.BICUBIC))
        pts = (LFW_POINTS + 0.5) * (size / 250) - 0.5
        save(arr, os.path.join(root, "images", name))
        x, y, w = (round(v * size / 250) for v in (65, 70, 120))  # the face's box
        rows.append(f"{tid},{sub},{name},{tid + 5000},{x},{y},{w},{w},,0,30,1,3,1,5.0,-2.0")
        lms.append(f"{tid} " + " ".join(f"{v:.3f}" for v in pts.ravel()))
    os.makedirs(os.path.join(root, "protocols"), exist_ok=True)
    with open(os.path.join(root, "protocols", "ijbc_11_covariate_probe_reference.csv"), "w") as fh:
        fh.write("\n".join(rows) + "\n")
    with open(os.path.join(root, "protocols", "ijbc_11_covariate_matches.csv"), "w") as fh:
        fh.writelines(f"{a},{b}\n" for a, b in COV_MATCHES)
    with open(os.path.join(root, "protocols", "ijbc_11_covariate_5pts.txt"), "w") as fh:
        fh.write("\n".join(lms) + "\n")
    return root


def test_ijbc_tinyface_paper_rule_against_reference(tmp_path):
    from ranface.align.templates import template_for
    from ranface.align.transform import estimate_similarity, warp_face
    from ranface.inference import Embedder

    root = make_ijbc_covariate(str(tmp_path / "ijbc"))
    model = TinyNet()
    p = get_protocol("ijbc-tiny")
    o = p.Options(fars=[0.1, 0.05])
    res = evaluate("ijbc-tiny", ctx_for(model), root, o, str(tmp_path / "out"))
    # Independent reference: the paper's rule written out face by face.
    emb = Embedder(model, flip=True, batch_size=1)
    dst = template_for(emb.input_size, "arcface")
    feat, sub, dist = {}, {}, {}
    for tid, s_id, name, _, _, scale in COV_FACES:
        arr = np.array(Image.open(os.path.join(root, "images", name)).convert("RGB"))
        pts = (LFW_POINTS + 0.5) * (arr.shape[0] / 250) - 0.5
        dist[tid] = np.linalg.norm(pts[:2].mean(0) - pts[3:].mean(0))
        face = warp_face(arr, estimate_similarity(pts, dst), emb.input_size)
        feat[tid] = emb.embed_arrays([face])[0].astype(float)
        sub[tid] = s_id
    tiny = sorted(t for t in dist if 10 <= dist[t] <= 30)
    assert tiny == [101, 102, 104, 105, 106, 107]
    gen_pairs = [(a, b) for a in tiny for b in tiny if a < b and sub[a] == sub[b]]
    imp_pairs = [(a, b) for a, b in COV_MATCHES if sub[a] != sub[b]]
    gen = [feat[a] @ feat[b] for a, b in gen_pairs]
    imp = [feat[a] @ feat[b] for a, b in imp_pairs]
    c = res["counts"]
    assert (c["genuine"], c["impostor"]) == (len(gen_pairs), len(imp_pairs)) == (4, 14)
    assert (c["genuine_paper"], c["impostor_paper"]) == (158338, 39584639)
    for far in (0.1, 0.05):
        assert res["metrics"]["tar"][str(far)]["tar"] == pytest.approx(brute_tar(gen, imp, far))
    assert res["metrics"]["level"] == "face"
    # Lists written for reuse: tiny faces, genuine and impostor pairs (template ids).
    lists = tmp_path / "out" / "lists"
    tf = open(lists / "tiny_faces.txt").read().splitlines()
    assert tf[0].split() == ["TEMPLATE_ID", "SUBJECT_ID", "FILENAME", "EYE_MOUTH_PX"]
    assert [int(r.split()[0]) for r in tf[1:]] == tiny
    read_pairs = lambda f: sorted(tuple(map(int, ln.split())) for ln in open(lists / f))  # noqa
    assert read_pairs("genuine_pairs.txt") == sorted(gen_pairs)
    assert read_pairs("impostor_pairs.txt") == sorted(imp_pairs)
    md = open(tmp_path / "out" / "result.md").read()
    assert "face-level" in md and "paper 158,338" in md and "paper 39,584,639" in md


@pytest.mark.slow
def test_ijbc_tinyface_mtcnn_landmarks(tmp_path):
    """landmarks=mtcnn: five points detected in each face's box, written for reuse, and the
    tiny set is exactly the detected faces whose eye-mouth distance is in the band."""
    root = make_ijbc_covariate(str(tmp_path / "ijbc"))
    os.remove(os.path.join(root, "protocols", "ijbc_11_covariate_5pts.txt"))
    p = get_protocol("ijbc-tiny")
    o = load_config(p.Options, None, ["landmarks=mtcnn", "fars=[0.1]"])
    assert o.landmarks == "mtcnn"
    res = evaluate("ijbc-tiny", ctx_for(), root, o, str(tmp_path / "out"))
    lists = tmp_path / "out" / "lists"
    det = {}
    for line in open(lists / "covariate_5pts.txt"):
        t = line.split()
        det[int(t[0])] = np.array([float(v) for v in t[1:]]).reshape(5, 2)
    scale = {tid: sc for tid, _, _, _, _, sc in COV_FACES}
    for tid in (101, 103, 104, 105, 106, 107, 109):  # faces of 50 and 25 px eye-mouth
        assert tid in det, tid
        want = (LFW_POINTS + 0.5) * scale[tid] - 0.5
        d = np.linalg.norm(det[tid][:2].mean(0) - det[tid][3:].mean(0))
        assert abs(d - 50 * scale[tid]) < 0.25 * 50 * scale[tid], (tid, d)
        assert np.abs(det[tid] - want).max() < 0.2 * 50 * scale[tid] + 3, tid
    tiny = sorted(t for t, lm in det.items()
                  if 10 <= np.linalg.norm(lm[:2].mean(0) - lm[3:].mean(0)) <= 30)
    rows = open(lists / "tiny_faces.txt").read().splitlines()[1:]
    assert [int(r.split()[0]) for r in rows] == tiny == sorted(tiny)
    assert res["counts"]["faces_tiny"] == len(tiny)
    assert res["metrics"]["landmarks"].startswith("mtcnn")


def test_ijbc_tinyface_wrong_files_one_line(tmp_path):
    import shutil

    root = make_ijbc_covariate(str(tmp_path / "ijbc"))
    p = get_protocol("ijbc-tiny")
    lm = os.path.join(root, "protocols", "ijbc_11_covariate_5pts.txt")
    shutil.move(lm, lm + ".bak")
    with pytest.raises(ProtocolError, match="ijbc_11_covariate_5pts.txt"):
        p.validate_root(root, p.Options())
    shutil.move(lm + ".bak", lm)
    ref = os.path.join(root, "protocols", "ijbc_11_covariate_probe_reference.csv")
    text = open(ref).read()
    open(ref, "w").write(text.replace("SUBJECT_ID", "SUBJ", 1))
    with pytest.raises(ProtocolError, match="lacks column.*SUBJECT_ID") as e:
        p.run(ctx_for(), root, p.Options())
    assert "ijbc_11_covariate_probe_reference.csv" in str(e.value)
    open(ref, "w").write(text)
    mat = os.path.join(root, "protocols", "ijbc_11_covariate_matches.csv")
    open(mat, "a").write("101;102\n")
    with pytest.raises(ProtocolError, match="line 21") as e:
        p.run(ctx_for(), root, p.Options())
    assert "ijbc_11_covariate_matches.csv" in str(e.value)


def _copy_ijbc(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_ijbc_bad_meta_names_file_and_line(ijbc_root, tmp_path):
    root = _copy_ijbc(ijbc_root, str(tmp_path / "r"))
    p = get_protocol("ijbc")
    faces = os.path.join(root, "meta", "ijbc_face_tid_mid.txt")
    lines = open(faces).read().splitlines()
    bad = lines[:3] + [lines[3] + " extra"] + lines[4:]
    open(faces, "w").write("\n".join(bad) + "\n")
    with pytest.raises(ProtocolError, match=r"ijbc_face_tid_mid.txt \(line 4\): expected 3 columns"):
        p.run(ctx_for(), root, p.Options())
    open(faces, "w").write("\n".join(lines) + "\n")
    pairs = os.path.join(root, "meta", "ijbc_template_pair_label.txt")
    open(pairs, "a").write("1 99 0\n")
    with pytest.raises(ProtocolError, match=r"pair 16\): template 99 has no face"):
        p.run(ctx_for(), root, p.Options(fars=[0.1]))
    res = p.run(ctx_for(on_error="skip"), root, p.Options(fars=[0.1]))
    assert res["counts"]["scored"] == 15 and res["counts"]["skipped"] == 1
    os.remove(os.path.join(root, "loose_crop", "9.jpg"))
    with pytest.raises(ProtocolError, match=r"9.jpg: image not found \(listed in "
                                            r"ijbc_face_tid_mid.txt line 9\)"):
        p.run(ctx_for(), root, p.Options(fars=[0.1]))
    # Skipping the only face of template 5 drops its 5 pairs (besides the dangling one).
    res = p.run(ctx_for(on_error="skip"), root, p.Options(fars=[0.1]))
    assert res["counts"]["scored"] == 10 and res["counts"]["faces_skipped"] == 1
    with open(os.path.join(root, "loose_crop", "9.jpg"), "wb") as fh:
        fh.write(b"not a jpeg")
    with pytest.raises(DataError, match="9.jpg.*not a decodable image"):
        p.run(ctx_for(), root, p.Options(fars=[0.1]))
    open(pairs, "a").write("2 3\n4 5 0 1\n")  # 2 + 4 columns: the totals still add up
    with pytest.raises(ProtocolError, match=r"line 17\): expected 3 columns 'tid1 tid2 label'"):
        p.run(ctx_for(), root, p.Options())
    lm = os.path.join(root, "meta", "ijbc_name_5pts_score.txt")
    open(lm, "a").write("12.jpg 1 2 3\n")
    with pytest.raises(ProtocolError, match=r"line 12\): expected 12 columns"):
        p.run(ctx_for(), root, p.Options())


# ----------------------------------------------------------------------------- TinyFace
def make_tinyface(root, with_ids=True):
    test = os.path.join(root, "Testing_Set")
    sizes = [(20, 16), (24, 20), (18, 15)]
    probes, gal = [], []
    for pid, person in enumerate(PEOPLE[:3], 1):
        for n in (1, 2):
            name = f"{pid}_{n}.jpg"
            save(crop(lfw(person, n), sizes[n % 3]), os.path.join(test, "Probe", name))
            probes.append((name, pid))
        for n in (3, 4) if pid == 1 else (3,):
            name = f"{pid}_{n}.jpg"
            save(crop(lfw(person, n), sizes[(n + pid) % 3]),
                 os.path.join(test, "Gallery_Match", name))
            gal.append((name, pid))
    for k, person in enumerate(PEOPLE[3:]):
        save(crop(lfw(person, 1), (22, 18)), os.path.join(test, "Gallery_Distractor", f"{k}_d.jpg"))
    pm = {"probe_set": cell([n for n, _ in probes])}
    gm = {"gallery_set": cell([n for n, _ in gal])}
    if with_ids:
        pm["probe_ids"] = np.array([[i] for _, i in probes], np.uint16)
        gm["gallery_ids"] = np.array([[i] for _, i in gal], np.uint16)
    scipy.io.savemat(os.path.join(test, "probe_img_ID_pairs.mat"), pm)
    scipy.io.savemat(os.path.join(test, "gallery_match_img_ID_pairs.mat"), gm)
    return root, probes, gal


def test_tinyface_ranks_against_brute_force(tmp_path):
    root, probes, gal = make_tinyface(str(tmp_path / "tf"))
    model = TinyNet()
    o = get_protocol("tinyface").Options(ranks=[1, 2, 20])
    res = evaluate("tinyface", ctx_for(model), root, o, str(tmp_path / "out"))
    test = os.path.join(root, "Testing_Set")
    from ranface.inference import Embedder

    emb = Embedder(model, batch_size=1)
    read = lambda p: np.array(Image.open(p).convert("RGB"))  # noqa: E731
    pf = embed_arrays(emb, [read(os.path.join(test, "Probe", n)) for n, _ in probes])
    dnames = sorted(os.listdir(os.path.join(test, "Gallery_Distractor")))
    gf = embed_arrays(emb, [read(os.path.join(test, "Gallery_Match", n)) for n, _ in gal]
                      + [read(os.path.join(test, "Gallery_Distractor", n)) for n in dnames])
    g_lab = [i for _, i in gal] + [-1] * len(dnames)
    rk = brute_ranks(pf @ gf.T, [i for _, i in probes], g_lab)
    m = res["metrics"]
    assert m["n_gallery"] == len(gal) + 3 and m["n_distractors"] == 3
    for r in (1, 2, 20):
        assert m["rank"][str(r)] == pytest.approx(np.mean(rk <= r))
    assert m["rank"]["20"] == 1.0
    assert res["counts"]["scored"] == 6
    assert os.path.exists(tmp_path / "out" / "cmc.png")
    # Identities from the file-name prefix when the .mat has no *_ids vector.
    root2, _, _ = make_tinyface(str(tmp_path / "tf2"), with_ids=False)
    res2 = get_protocol("tinyface").run(ctx_for(TinyNet()), root2, o)
    assert res2["metrics"]["rank"] == m["rank"]


def test_tinyface_bad_mat_and_missing_image(tmp_path):
    root, probes, _ = make_tinyface(str(tmp_path / "tf"))
    test = os.path.join(root, "Testing_Set")
    p = get_protocol("tinyface")
    scipy.io.savemat(os.path.join(test, "probe_img_ID_pairs.mat"), {"probes": cell(["1_1.jpg"])})
    with pytest.raises(ProtocolError, match=r"probe_img_ID_pairs.mat \(key probe_set\): has no "
                                            r"variable 'probe_set' \(variables: probes\)"):
        p.run(ctx_for(), root, p.Options())
    names = [n for n, _ in probes] + ["9_9.jpg"]
    scipy.io.savemat(os.path.join(test, "probe_img_ID_pairs.mat"),
                     {"probe_set": cell(names), "probe_ids": np.arange(len(names))[:, None]})
    with pytest.raises(ProtocolError, match=r"9_9.jpg: image not found \(listed in .*probe_set\[6\]"):
        p.run(ctx_for(), root, p.Options())


# ----------------------------------------------------------------------------- SCface
def make_scface(root):
    """The release's layout: mugshot_frontal_cropped_all/, surveillance_cameras_distance_d/camc/
    (and an uncropped mugshot copy, which must be ignored)."""
    for k, person in enumerate(PEOPLE[:4]):
        sid = f"{k + 1:03d}"
        save(crop(lfw(person, 1)), os.path.join(root, "mugshot_frontal_cropped_all",
                                                f"{sid}_frontal.JPG"))
        save(lfw(person, 1), os.path.join(root, "mugshot_frontal_original_all", f"{sid}_frontal.JPG"))
        for cam in (1, 2):
            for d, px in ((1, 16), (2, 24), (3, 40)):
                n = 2 + 3 * (cam - 1) + d - 1  # photos 2..7, never the mugshot's
                save(crop(lfw(person, n), px), os.path.join(
                    root, f"surveillance_cameras_distance_{d}", f"cam{cam}", f"{sid}_cam{cam}_{d}.jpg"))
    save(crop(lfw(PEOPLE[0], 9), 20), os.path.join(root, "surveillance_cameras_IR_cam6",
                                                   "001_cam6_1.jpg"))  # IR: ignored
    open(os.path.join(root, "notes.txt"), "w").write("not an image\n")
    return root


def scface_probe(root, sid, cam, d):
    return os.path.join(root, f"surveillance_cameras_distance_{d}", f"cam{cam}", f"{sid}_cam{cam}_{d}.jpg")


def write_split(path, finetune, test):
    with open(path, "w") as fh:
        fh.write("# a test split\n" + "".join(f"finetune {i}\n" for i in finetune)
                 + "".join(f"test {i}\n" for i in test))
    return path


def test_scface_paper_split_file_is_fixed():
    from ranface.eval.protocols.scface import PAPER_SPLIT_FILE, read_split

    ft, test = read_split(PAPER_SPLIT_FILE)
    assert ft == [f"{i:03d}" for i in range(1, 51)] and test == [f"{i:03d}" for i in range(51, 131)]
    assert get_protocol("scface").Options().split == "paper"


def test_scface_per_distance_ranks_and_paper_split(tmp_path):
    root = make_scface(str(tmp_path / "sc"))
    model = TinyNet()
    p = get_protocol("scface")
    res = p.run(ctx_for(model), root, p.Options(ranks=[1, 2], split="none"))
    from ranface.inference import Embedder

    emb = Embedder(model, batch_size=1)
    read = lambda f: np.array(Image.open(f).convert("RGB"))  # noqa: E731
    ids = ["001", "002", "003", "004"]
    gf = embed_arrays(emb, [read(os.path.join(root, "mugshot_frontal_cropped_all",
                                              f"{i}_frontal.JPG")) for i in ids])
    for d in (1, 2, 3):
        files = [(i, scface_probe(root, i, c, d)) for i in ids for c in (1, 2)]
        pf = embed_arrays(emb, [read(f) for _, f in files])
        rk = brute_ranks(pf @ gf.T, [i for i, _ in files], ids)
        got = res["metrics"]["per_distance"][str(d)]
        assert got["probes"] == 8 and got["distance_m"] == {1: 4.2, 2: 2.6, 3: 1.0}[d]
        assert got["rank"]["1"] == pytest.approx(np.mean(rk <= 1))
        assert got["rank"]["2"] == pytest.approx(np.mean(rk <= 2))
    assert res["counts"]["scored"] == 24 and res["counts"]["gallery"] == 4
    md = p.markdown(res)
    assert "| Method | d1 (4.2 m) | d2 (2.6 m) | d3 (1.0 m) |" in md
    assert "rank 1, 2 (%), per probe distance" in md

    # The paper split on a root without subjects 051-130: one line naming the split file.
    with pytest.raises(ProtocolError, match="scface_split.txt.*80 test subject.*051"):
        p.run(ctx_for(), root, p.Options())
    ft = str(tmp_path / "finetune")
    split = write_split(str(tmp_path / "split.txt"), ["001", "002"], ["003", "004"])
    o = p.Options(split="file", split_file=split, write_finetune=ft)
    res = p.run(ctx_for(), root, o)
    assert res["metrics"]["split"]["finetune_ids"] == ["001", "002"]
    assert res["metrics"]["split"]["test_ids"] == ["003", "004"]
    assert res["metrics"]["per_distance"]["1"]["probes"] == 4
    assert sorted(os.listdir(ft)) == ["001", "002"]
    assert sorted(os.listdir(os.path.join(ft, "001"))) == sorted(
        ["001_frontal.JPG"] + [f"001_cam{c}_{d}.jpg" for c in (1, 2) for d in (1, 2, 3)])
    bad = write_split(str(tmp_path / "bad.txt"), ["001"], ["003", "001"])
    with pytest.raises(ProtocolError, match="bad.txt.*subject 001 listed twice"):
        p.run(ctx_for(), root, p.Options(split="file", split_file=bad))
    os.remove(os.path.join(root, "mugshot_frontal_cropped_all", "004_frontal.JPG"))
    with pytest.raises(ProtocolError, match="no mugshot .* 1 test subject.*004"):
        p.run(ctx_for(), root, p.Options(split="none"))
    res = p.run(ctx_for(on_error="skip"), root, p.Options(split="none"))
    assert res["counts"]["test_subjects"] == 3 and res["counts"]["scored"] == 18


@pytest.mark.slow
def test_scface_table3_script_without_and_with_finetuning(tmp_path):
    """scripts/scface_table3.sh end to end on a 4-subject fixture: evaluate (w/o FT) and
    write the fine-tuning faces, `ranface train` with configs/finetune_scface.yaml,
    evaluate the fine-tuned model, one report with both rows."""
    import json
    import subprocess
    import sys

    from ranface.inference import model_package
    from ranface.models import create_backbone

    root = make_scface(str(tmp_path / "sc"))
    split = write_split(str(tmp_path / "split.txt"), ["001", "002"], ["003", "004"])
    torch.manual_seed(0)
    bb = create_backbone("mobilefacenet", embedding_size=32)
    torch.save(model_package(bb, "mobilefacenet", {"embedding_size": 32}), str(tmp_path / "hr.pt"))
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, RANFACE=f"{sys.executable} -m ranface",
               PYTHONPATH=os.path.join(repo, "src"),
               TRAIN_ARGS=" ".join(["--set model.backbone=mobilefacenet",
                                    "--set model.embedding_size=32", "--set optim.max_steps=2",
                                    "--set data.batch_size=4", "--set data.num_workers=0",
                                    "--set run.progress=false", "--set run.tensorboard=false",
                                    "--set run.precision=fp32", "--set run.device=cpu"]))
    out = str(tmp_path / "t3")
    r = subprocess.run(["bash", os.path.join(repo, "scripts", "scface_table3.sh"), root,
                        str(tmp_path / "hr.pt"), out, "--device", "cpu", "--set", "split=file",
                        "--set", f"split_file={split}", "--set", "flip=false"],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    wo = json.load(open(os.path.join(out, "wo_ft", "result.json")))
    w = json.load(open(os.path.join(out, "w_ft", "result.json")))
    for res in (wo, w):
        assert res["metrics"]["split"]["test_ids"] == ["003", "004"]
        assert set(res["metrics"]["per_distance"]) == {"1", "2", "3"}
    assert sorted(os.listdir(os.path.join(out, "finetune_faces"))) == ["001", "002"]
    summary = json.load(open(os.path.join(out, "ft", "summary.json")))
    assert summary["num_classes"] == 2 and summary["steps"] == 2
    md = open(os.path.join(out, "table3", "report.md")).read()
    assert "| w/o FT |" in md and "| FT |" in md and "d1" in md


# ----------------------------------------------------------------------------- SurvFace
def make_survface(root):
    idt = os.path.join(root, "Face_Identification_Test_Set")
    ev = idt  # the release keeps the two .mat lists beside the image folders
    g, m = [], []
    for pid, person in enumerate(PEOPLE[:3], 1):
        for n in (1, 2):
            name = f"{pid}_cam1_{n}.jpg"
            save(crop(lfw(person, n), (24, 20)), os.path.join(idt, "gallery", name))
            g.append((name, pid))
        for n in (3, 4) if pid != 3 else (3,):
            name = f"{pid}_cam2_{n}.jpg"
            save(crop(lfw(person, n), (18, 15)), os.path.join(idt, "mated_probe", name))
            m.append((name, pid))
    for k, person in enumerate(PEOPLE[3:]):
        for n in (1, 2):
            save(crop(lfw(person, n), (20, 16)), os.path.join(idt, "unmated_probe", f"u{k}_{n}.jpg"))
    scipy.io.savemat(os.path.join(ev, "gallery_img_ID_pairs.mat"),
                     {"gallery_set": cell([a for a, _ in g]),
                      "gallery_ids": np.array([[b] for _, b in g], np.uint16)})
    scipy.io.savemat(os.path.join(ev, "mated_probe_img_ID_pairs.mat"),
                     {"mated_probe_set": cell([a for a, _ in m]),
                      "mated_probe_ids": np.array([[b] for _, b in m], np.uint16)})
    ver = os.path.join(root, "Face_Verification_Test_Set")
    imgs = {}
    for k, person in enumerate(PEOPLE):
        for n in (5, 6):
            name = f"v{k}_{n}.jpg"
            save(crop(lfw(person, n), (20, 18)), os.path.join(ver, "verification_images", name))
            imgs[(k, n)] = name
    pos = [(imgs[(k, 5)], imgs[(k, 6)]) for k in range(6)]
    neg = [(imgs[(k, 5)], imgs[((k + 1) % 6, 6)]) for k in range(6)] + \
        [(imgs[(k, 6)], imgs[((k + 2) % 6, 5)]) for k in range(6)]
    for name, key, rows in (("positive_pairs_names.mat", "positive_pairs_names", pos),
                            ("negative_pairs_names.mat", "negative_pairs_names", neg)):
        arr = np.empty((len(rows), 2), dtype=object)
        arr[:] = rows
        scipy.io.savemat(os.path.join(ver, name), {key: arr})
    return root, g, m, pos, neg


def survface_reference(probe, p_lab, gallery, g_lab, rank, fpirs):
    """Cheng et al. 2018's open-set definitions, written out probe by probe: a mated
    probe is identified at threshold t when its identity is within the top ``rank``
    gallery entries (ties with other identities against it) and its mate's score > t;
    an unmated probe is a false alarm when its top score > t. Returns
    ({fpir: tpir}, auc) with TPIR@FPIR the largest TPIR over thresholds whose FPIR <= fpir,
    and AUC the trapezoid over every threshold from +inf to -inf."""
    sim = probe @ gallery.T
    mate_score, top = [], []
    for i in range(len(p_lab)):
        row = sim[i]
        if p_lab[i] == -1 or p_lab[i] not in set(g_lab.tolist()):
            top.append(row.max())
            continue
        best = max(row[j] for j in range(len(g_lab)) if g_lab[j] == p_lab[i])
        others = sum(1 for j in range(len(g_lab)) if g_lab[j] != p_lab[i] and row[j] >= best)
        mate_score.append(best if others + 1 <= rank else -np.inf)
    n_mated = len(mate_score)
    thresholds = sorted(set(np.r_[sim.ravel(), np.inf, -np.inf].tolist()), reverse=True)
    pts = []
    for t in thresholds:
        tpir = sum(1 for v in mate_score if v > t) / n_mated
        fpir = sum(1 for v in top if v > t) / len(top)
        pts.append((fpir, tpir))
    want = {f: max(tp for fp, tp in pts if fp <= f + 1e-12) for f in fpirs}
    # accept score >= v at each distinct score: walk thresholds just below each value
    curve = [(0.0, 0.0)] + [(sum(1 for v in top if v >= t) / len(top),
                            sum(1 for v in mate_score if v >= t) / n_mated)
                           for t in thresholds[1:]]
    auc = sum((b[0] - a[0]) * (a[1] + b[1]) / 2 for a, b in zip(curve, curve[1:]))
    return want, auc


def test_survface_tpir_rank_and_templates_against_benchmark_definition():
    from ranface.eval.protocols.survface import blocked_open_set_scores, identity_templates

    rng = np.random.default_rng(11)
    g_lab = np.repeat(np.arange(1, 31), 2)  # 30 identities, 2 images each
    gallery = rng.standard_normal((60, 6)).astype(np.float32)
    p_lab = np.r_[rng.integers(1, 31, 40), np.full(25, -1)]
    probe = (rng.standard_normal((65, 6)) * 1.5).astype(np.float32)
    probe[:40] += gallery[2 * (p_lab[:40] - 1)]  # mated probes lean towards one mate image
    fpirs = [0.3, 0.2, 0.1, 0.04]
    results = {}
    for rank in (1, 5, 20):
        want, auc = survface_reference(probe, p_lab, gallery, g_lab, rank, fpirs)
        got = blocked_open_set_scores(probe, p_lab, gallery, g_lab, rank=rank, budget=64)
        pts = got.tpir_at_fpir(fpirs)
        for f in fpirs:
            assert pts[f].tar == pytest.approx(want[f]), (rank, f)
        assert got.auc() == pytest.approx(auc)
        results[rank] = [want[f] for f in fpirs] + [auc]
    assert results[1] != results[20] and results[20][-1] > results[1][-1]
    # identity templates: the reference averages by hand
    ids = np.unique(g_lab)
    tmpl = np.stack([gallery[g_lab == i].mean(0) for i in ids])
    tmpl /= np.linalg.norm(tmpl, axis=1, keepdims=True)
    tid, tf = identity_templates(gallery, g_lab)
    assert tid.tolist() == ids.tolist()
    np.testing.assert_allclose(tf, tmpl, rtol=1e-5, atol=1e-6)
    want, auc = survface_reference(probe, p_lab, tmpl.astype(np.float32), ids, 20, fpirs)
    got = blocked_open_set_scores(probe, p_lab, tf, tid, rank=20)
    assert [got.tpir_at_fpir(fpirs)[f].tar for f in fpirs] == pytest.approx(
        [want[f] for f in fpirs])
    assert got.auc() == pytest.approx(auc)


def test_survface_identification_and_verification(tmp_path):
    from sklearn.metrics import roc_auc_score

    from ranface.inference import Embedder

    root, g, m, pos, neg = make_survface(str(tmp_path / "sf"))
    model = TinyNet()
    p = get_protocol("survface")
    o = p.Options(fpirs=[0.5, 0.25], fars=[0.1], rank=2)
    res = evaluate("survface", ctx_for(model), root, o, str(tmp_path / "out"))
    emb = Embedder(model, batch_size=1)
    read = lambda f: np.array(Image.open(f).convert("RGB"))  # noqa: E731
    idt = os.path.join(root, "Face_Identification_Test_Set")
    gf = embed_arrays(emb, [read(os.path.join(idt, "gallery", a)) for a, _ in g])
    unm = sorted(os.listdir(os.path.join(idt, "unmated_probe")))
    pf = embed_arrays(emb, [read(os.path.join(idt, "mated_probe", a)) for a, _ in m]
                      + [read(os.path.join(idt, "unmated_probe", a)) for a in unm])
    labels = np.array([b for _, b in m] + [-1] * len(unm))
    g_lab = np.array([b for _, b in g])
    want, auc = survface_reference(pf, labels, gf, g_lab, 2, [0.5, 0.25])
    ident = res["metrics"]["identification"]
    assert (ident["n_mated"], ident["n_unmated"], ident["n_gallery"]) == (5, 6, 6)
    assert ident["rank"] == 2 and "tpir2" in ident and "tpir" not in ident
    assert ident["tpir2"]["0.5"]["tar"] == pytest.approx(want[0.5])
    assert ident["tpir2"]["0.25"]["tar"] == pytest.approx(want[0.25])
    assert ident["auc_tpir2"] == pytest.approx(auc)
    assert p.summary(res)["TPIR2@FPIR=0.5"]
    # defaults: rank 20, one entry per gallery image; templates: one per identity
    assert p.Options().rank == 20 and p.Options().gallery == "images"
    o20 = p.Options(parts=["identification"], fpirs=[0.5], gallery="templates")
    r20 = p.run(ctx_for(model), root, o20)["metrics"]["identification"]
    tmpl = np.stack([gf[g_lab == i].mean(0) for i in (1, 2, 3)])
    tmpl /= np.linalg.norm(tmpl, axis=1, keepdims=True)
    want20, auc20 = survface_reference(pf, labels, tmpl, np.array([1, 2, 3]), 20, [0.5])
    assert r20["n_gallery"] == 3 and r20["n_gallery_images"] == 6
    assert r20["tpir20"]["0.5"]["tar"] == pytest.approx(want20[0.5])
    assert r20["auc_tpir20"] == pytest.approx(auc20)
    with pytest.raises(ConfigError, match="gallery must be"):
        p.validate_root(root, p.Options(gallery="mean"))

    vdir = os.path.join(root, "Face_Verification_Test_Set", "verification_images")
    feat = {}
    for a, b in pos + neg:
        for n in (a, b):
            if n not in feat:
                feat[n] = embed_arrays(emb, [read(os.path.join(vdir, n))])[0]
    s = np.array([feat[a] @ feat[b] for a, b in pos + neg])
    y = np.array([1] * len(pos) + [0] * len(neg))
    ver = res["metrics"]["verification"]
    assert ver["auc"] == pytest.approx(roc_auc_score(y, s))
    assert ver["tar"]["0.1"]["tar"] == brute_tar(s[y == 1], s[y == 0], 0.1)
    assert (ver["n_positive"], ver["n_negative"]) == (6, 12)
    assert res["counts"]["scored"] == 11 + 18
    for f in ("result.json", "result.md", "tpir_fpir.png", "roc.png"):
        assert os.path.exists(tmp_path / "out" / f), f
    md = open(tmp_path / "out" / "result.md").read()
    assert "TPIR2@FPIR 50%" in md and "AUC (TPIR2-FPIR)" in md and "within rank 2" in md


def test_blocked_open_set_and_ranks_equal_whole_matrix():
    from ranface.eval.metrics import match_ranks, open_set_scores
    from ranface.eval.protocols.survface import blocked_open_set_scores
    from ranface.eval.protocols.tinyface import closed_set_ranks

    rng = np.random.default_rng(3)
    gallery = rng.standard_normal((7, 4)).astype(np.float32)
    g_lab = np.array([1, 1, 2, 3, 4, 5, 5])
    probe = rng.standard_normal((23, 4)).astype(np.float32)
    p_lab = np.array([1, 2, 3, 4, 5, -1, -1, 2, 3, -1, 1, 5, -1, -1, 4, 4, -1, 2, 1, -1, 3, -1, -1])
    whole = open_set_scores(probe @ gallery.T, p_lab, g_lab)
    part = blocked_open_set_scores(probe, p_lab, gallery, g_lab, budget=14)  # 2-row blocks
    assert part.n_mated == whole.n_mated
    np.testing.assert_allclose(np.sort(part.hits), np.sort(whole.hits), rtol=1e-6)
    np.testing.assert_allclose(np.sort(part.unmated), np.sort(whole.unmated), rtol=1e-6)
    assert part.auc() == pytest.approx(whole.auc())
    mated = p_lab != -1
    ranks = closed_set_ranks(probe[mated], p_lab[mated], gallery, g_lab, budget=10)
    assert ranks.tolist() == match_ranks(probe[mated] @ gallery.T, p_lab[mated], g_lab).tolist()


# ----------------------------------------------------------------------------- .bin
def test_bin_sets_against_reference(tmp_path):
    from ranface.data.binfile import write_bin
    from ranface.data.image import encode_image
    from ranface.eval.metrics import kfold_verification_accuracy

    imgs, same = [], []
    for k in range(10):
        a, b = PEOPLE[k % 6], PEOPLE[(k + 1) % 6]
        imgs += [crop(lfw(a, 1 + k // 6)), crop(lfw(a if k % 2 == 0 else b, 3 + k // 6))]
        same.append(k % 2 == 0)
    enc = [encode_image(x, "png") for x in imgs]
    write_bin(str(tmp_path / "lfw.bin"), enc, same)
    write_bin(str(tmp_path / "cfp_fp.bin"), enc[:12], same[:6])
    model = TinyNet()
    res = get_protocol("bin").run(ctx_for(model), str(tmp_path), get_protocol("bin").Options())
    assert res["metrics"]["sets"] == ["lfw", "cfp_fp"]  # the paper's column order
    from ranface.inference import Embedder

    f = Embedder(model, batch_size=4).embed_arrays([resize_to(x, (32, 32)) for x in imgs])
    s = np.einsum("ij,ij->i", f[0::2], f[1::2])
    k = kfold_verification_accuracy(s, np.array(same), n_folds=10)
    assert res["metrics"]["lfw"]["acc"] == pytest.approx(k["mean"])
    assert res["metrics"]["lfw"]["acc_std"] == pytest.approx(k["std"])
    assert res["counts"]["scored"] == 16
    md = get_protocol("bin").markdown(res)
    assert md.splitlines()[0] == "| Method | LFW | CFP-FP |"
    # A corrupt image: an error naming the file and image, or a counted skip.
    enc[3] = b"garbage"
    write_bin(str(tmp_path / "lfw.bin"), enc, same)
    o = get_protocol("bin").Options(files=["lfw"])
    with pytest.raises(DataError, match=r"lfw.bin \(image 3\)"):
        get_protocol("bin").run(ctx_for(), str(tmp_path), o)
    res = get_protocol("bin").run(ctx_for(on_error="skip"), str(tmp_path), o)
    assert res["metrics"]["lfw"]["pairs"] == 9 and res["counts"]["skipped"] == 1


# ----------------------------------------------------------------------------- features
def test_embed_images_variants_skips_and_threads(tmp_path):
    from ranface.eval.features import SkipLog, embed_images

    paths = []
    for k, person in enumerate(PEOPLE[:4]):
        p = str(tmp_path / f"{k}.png")
        save(crop(lfw(person, 1), (40 + 8 * k, 36)), p)  # different sizes, one batch
        paths.append(p)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 broken")
    paths.insert(2, str(tmp_path / "bad.jpg"))
    model = TinyNet()
    emb = ctx_for(model).embedder(True)
    half = {"lr": np.array([False, True, True, True, False])}
    variants = {"": None, "lr": lambda x: x[::2, ::2]}
    with pytest.raises(DataError, match="bad.jpg"):
        embed_images(emb, paths, variants=variants)
    runs = []
    for workers in (0, 3):
        skips = SkipLog("skip")
        model.calls = 0
        runs.append(embed_images(emb, paths, variants=variants, wanted=half, skips=skips,
                                 workers=workers))
        assert skips.count == 1 and "bad.jpg" in skips.examples[0]
        assert model.calls == 2 * (4 + 2)  # full: 4 readable; lr: items 1 and 3; x2 flip
    a, b = runs
    assert a.ok.tolist() == [True, True, False, True, True]
    np.testing.assert_array_equal(a[""], b[""])
    np.testing.assert_array_equal(a["lr"], b["lr"])
    assert np.isnan(a[""][2]).all() and np.isnan(a["lr"][0]).all()
    assert np.isfinite(a["lr"][[1, 3]]).all()
    np.testing.assert_allclose(np.linalg.norm(a[""][a.ok], axis=1), 1.0, rtol=1e-5)


@pytest.mark.slow
def test_scface_mtcnn_alignment_option(tmp_path):
    """align=mtcnn runs the project's FaceAligner on each (unaligned) SCface image."""
    root = make_scface(str(tmp_path / "sc"))
    p = get_protocol("scface")
    res = p.run(ctx_for(on_error="skip"), root, p.Options(align="mtcnn", distances=[3],
                                                              split="none"))
    assert res["counts"]["scored"] >= 4 and res["counts"]["gallery"] >= 3
    assert res["metrics"]["per_distance"]["3"]["probes"] == res["counts"]["scored"]
    assert res["options"]["align"] == "mtcnn"
