"""The ``pairs`` protocol: pairs.txt parsing (malformed lines by line number), the
identity-disjoint LFW split, and the probe-resolution sweep on real LFW faces checked
against an independent brute-force 10-fold scorer."""
import json
import os

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from conftest import require_shared
from ranface.degrade import down_up
from ranface.errors import ConfigError, DataError, ProtocolError
from ranface.eval.features import resize_to
from ranface.eval.protocols import evaluate, get_protocol
from ranface.eval.protocols.pairs import Pair, lfw_split, parse_pairs
from test_protocols import PEOPLE, TinyNet, brute_tar, crop, ctx_for, lfw, save

GOOD = """2 2
Alice 1 2
Bob 3 14
Carol 1 Dave 2
Eve 10 Alice 3
Frank 1 2
Gina 2 3
Hank 4 Ivan 1
Jill 1 Kate 1
"""


def write(tmp_path, text, name="pairs.txt"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_parse_pairs_fields(tmp_path):
    pairs = parse_pairs(write(tmp_path, GOOD))
    assert len(pairs) == 8
    assert pairs[0] == Pair(0, "Alice/Alice_0001.jpg", "Alice/Alice_0002.jpg", True, 2)
    assert pairs[1].path2 == "Bob/Bob_0014.jpg"
    assert pairs[2] == Pair(0, "Carol/Carol_0001.jpg", "Dave/Dave_0002.jpg", False, 4)
    assert pairs[3].path1 == "Eve/Eve_0010.jpg"
    assert [p.fold for p in pairs] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [p.same for p in pairs] == [True, True, False, False] * 2
    assert [p.line for p in pairs] == list(range(2, 10))
    png = parse_pairs(write(tmp_path, GOOD), ext="png")
    assert png[0].path1 == "Alice/Alice_0001.png"
    # One-number header (pairsDevTrain.txt): one fold; blank lines are ignored.
    one = parse_pairs(write(tmp_path, "1\nA 1 2\n\nB 1 C 1\n\n", "dev.txt"))
    assert [(p.fold, p.same, p.line) for p in one] == [(0, True, 2), (0, False, 4)]


@pytest.mark.parametrize("text,line,what", [
    ("2 2\nAlice 1 2\nBob 3 Carl 14\n", 3, "expected a matched pair"),
    ("1 2\nA 1 2\nB 1 2\nC 1 D 2\nE 1 2\n", 5, "expected a mismatched pair"),
    ("1 1\nA 1 x\nC 1 D 2\n", 2, "'x' is not a positive integer"),
    ("1 1\nA 0 2\nC 1 D 2\n", 2, "'0' is not a positive integer"),
    ("1 1\nA 1 2\nC 1 D 2\nE 1 2\n", 4, "more pairs than the header"),
    ("1 2\nA 1 2\nB 1 2\nC 1 D 2\n", 4, "ends after 3 pairs"),
    ("ten 300\nA 1 2\n", 1, "header must be"),
    ("1 2 3\n", 1, "header must be"),
])
def test_malformed_pairs_name_the_line(tmp_path, text, line, what):
    path = write(tmp_path, text)
    with pytest.raises(ProtocolError) as e:
        parse_pairs(path)
    assert f"{path} (line {line}): " in str(e.value)
    assert what in str(e.value)


def test_lfw_split_identity_disjoint(tmp_path):
    pairs = parse_pairs(write(tmp_path, GOOD))
    out = str(tmp_path / "split.json")
    train, test = lfw_split(pairs, [1], out)
    assert test == ["Frank", "Gina", "Hank", "Ivan", "Jill", "Kate"]
    assert train == ["Alice", "Bob", "Carol", "Dave", "Eve"]
    saved = json.load(open(out))
    assert saved["test_folds"] == [1] and saved["train_identities"] == train
    assert saved["n_test_identities"] == 6
    # A person in both folds goes to test; everyone of the folder outside test trains.
    pairs2 = parse_pairs(write(tmp_path, GOOD.replace("Jill 1 Kate 1", "Jill 1 Alice 5")))
    train2, test2 = lfw_split(pairs2, [1], all_identities=["Zed", "Alice", "Bob"])
    assert "Alice" in test2 and "Alice" not in train2
    assert train2 == ["Bob", "Zed"]
    with pytest.raises(ConfigError, match="test_folds"):
        lfw_split(pairs, [7])


# ----------------------------------------------------------------------------- protocol
# 2 folds x 3 pairs per class from real LFW people (fold 1 uses other people).
LFW_PAIRS = """2 3
George_W_Bush 1 2
Colin_Powell 1 2
Tony_Blair 1 2
George_W_Bush 3 Colin_Powell 3
Tony_Blair 3 George_W_Bush 4
Colin_Powell 4 Tony_Blair 4
Donald_Rumsfeld 1 2
Gerhard_Schroeder 1 2
Ariel_Sharon 1 2
Donald_Rumsfeld 3 Gerhard_Schroeder 3
Ariel_Sharon 3 Donald_Rumsfeld 4
Gerhard_Schroeder 4 Ariel_Sharon 4
"""


@pytest.fixture(scope="module")
def lfw_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("lfwpairs")
    for person in PEOPLE:
        for k in (1, 2, 3, 4):
            save(crop(lfw(person, k)), str(root / "images" / person / f"{person}_{k:04d}.jpg"))
    (root / "pairs.txt").write_text(LFW_PAIRS)
    return str(root)


def brute_kfold(scores, same, folds):
    """10-fold accuracy the slow way: on the training folds try every threshold (the
    midpoints between consecutive distinct scores, and +-inf; accept score > t), keep
    the lowest of the best, and test it on the held-out fold."""
    accs = []
    for f in np.unique(folds):
        tr, te = folds != f, folds == f
        u = np.unique(scores[tr])
        cands = [-np.inf] + [(a + b) / 2 for a, b in zip(u[:-1], u[1:])] + [np.inf]
        best_t, best = None, -1.0
        for t in cands:
            acc = np.mean((scores[tr] > t) == same[tr])
            if acc > best:
                best, best_t = acc, t
        accs.append(np.mean((scores[te] > best_t) == same[te]))
    return float(np.mean(accs)), float(np.std(accs))


def test_pairs_sweep_against_reference(lfw_folder, tmp_path):
    from ranface.inference import Embedder

    model = TinyNet()
    o = get_protocol("pairs").Options(probe_sizes=[16, 8], fars=[0.5, 0.1])
    res = evaluate("pairs", ctx_for(model), lfw_folder, o, str(tmp_path / "out"))
    # Each of the 24 images once at full size; LR copies: hr-lr needs second images,
    # lr-lr all images -> all 24 at 16 and 8 px; the model sees each and its mirror.
    assert model.calls == 2 * (24 + 2 * 24)
    c = res["counts"]
    assert (c["scored"], c["skipped"], c["images"], c["matched"]) == (12, 0, 24, 6)

    emb = Embedder(model, batch_size=1)
    pairs = parse_pairs(os.path.join(lfw_folder, "pairs.txt"))
    read = lambda rel: np.array(Image.open(os.path.join(lfw_folder, "images", rel)).convert("RGB"))  # noqa: E731
    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])

    cache = {}

    def feat(rel, size):
        """One image, one by one: read, (down-up at its aligned size), resize, embed."""
        if (rel, size) not in cache:
            arr = read(rel)
            if size is not None:
                arr = down_up(arr, size)
            cache[rel, size] = emb.embed_arrays([resize_to(arr, (32, 32))])[0]
        return cache[rel, size]

    for mode in ("full", "hr-lr", "lr-lr"):
        for size in ((None,) if mode == "full" else (16, 8)):
            # hr-lr: the second image of each line is the probe; lr-lr: both images.
            s = [float(feat(p.path1, size if mode == "lr-lr" else None) @ feat(p.path2, size))
                 for p in pairs]
            s = np.array(s)
            got = res["metrics"]["full"] if mode == "full" else res["metrics"][mode][str(size)]
            acc, std = brute_kfold(s, same, folds)
            assert got["acc"] == pytest.approx(acc), (mode, size)
            assert got["acc_std"] == pytest.approx(std), (mode, size)
            assert got["pairs"] == 12
            assert got["auc"] == pytest.approx(roc_auc_score(same, s))
            assert got["tar"]["0.5"]["tar"] == brute_tar(s[same], s[~same], 0.5)
    for f in ("result.json", "result.md", "accuracy_vs_pixels.png", "roc.png"):
        assert os.path.exists(tmp_path / "out" / f), f
    md = open(tmp_path / "out" / "result.md").read()
    assert "| probe px | hr-lr acc (%) | lr-lr acc (%) |" in md
    assert [ln.split("|")[1].strip() for ln in md.splitlines() if ln.startswith("| ")][1:4] == \
        ["full", "16", "8"]


def test_pairs_exact_scores_through_embed_images(lfw_folder):
    """Exact check of the metric wiring: feed the protocol's own features back."""
    from ranface.eval.features import embed_images
    from ranface.eval.metrics import kfold_verification_accuracy

    model = TinyNet()
    o = get_protocol("pairs").Options(probe_sizes=[12], modes=["hr-lr"], fars=[0.5])
    res = get_protocol("pairs").run(ctx_for(model), lfw_folder, o)
    pairs = parse_pairs(os.path.join(lfw_folder, "pairs.txt"))
    rels = sorted({r for p in pairs for r in (p.path1, p.path2)})
    emb = ctx_for(model).embedder(True)
    feats = embed_images(emb, [os.path.join(lfw_folder, "images", r) for r in rels],
                         variants={"full": None, "lr": lambda x: down_up(x, 12)})
    ix = {r: i for i, r in enumerate(rels)}
    s = np.array([feats["full"][ix[p.path1]] @ feats["lr"][ix[p.path2]] for p in pairs])
    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])
    got = res["metrics"]["hr-lr"]["12"]
    assert got["acc"] == pytest.approx(brute_kfold(s, same, folds)[0])
    ref = kfold_verification_accuracy(s, same, folds=folds)
    assert got["fold_acc"] == pytest.approx(list(ref["fold_accuracies"]))
    assert got["tar"]["0.5"]["tar"] == brute_tar(s[same], s[~same], 0.5)


def test_pairs_missing_and_corrupt_images(lfw_folder, tmp_path):
    import shutil

    root = str(tmp_path / "copy")
    shutil.copytree(lfw_folder, root)
    p = get_protocol("pairs")
    o = p.Options(probe_sizes=[16], modes=["hr-lr"])
    os.remove(os.path.join(root, "images", "Tony_Blair", "Tony_Blair_0003.jpg"))
    with pytest.raises(ProtocolError, match=r"Tony_Blair_0003.jpg: image not found \(named in "
                                            r".*pairs.txt line 6\)"):
        p.run(ctx_for(), root, o)
    res = p.run(ctx_for(on_error="skip"), root, o)
    assert res["counts"]["scored"] == 11 and res["counts"]["skipped"] == 1
    assert res["counts"]["images_skipped"] == 1
    shutil.copy(os.path.join(lfw_folder, "images", "Tony_Blair", "Tony_Blair_0003.jpg"),
                os.path.join(root, "images", "Tony_Blair", "Tony_Blair_0003.jpg"))
    bad = os.path.join(root, "images", "Ariel_Sharon", "Ariel_Sharon_0001.jpg")
    with open(bad, "wb") as fh:
        fh.write(b"\xff\xd8\xff garbage")
    with pytest.raises(DataError, match="Ariel_Sharon_0001.jpg"):
        p.run(ctx_for(on_error="raise"), root, p.Options(probe_sizes=[16]))
    res = p.run(ctx_for(on_error="skip"), root, o)
    # Ariel_Sharon_0001 is in one matched pair (fold 1): 11 pairs left.
    assert res["counts"]["scored"] == 11 and res["counts"]["images_skipped"] == 1
    assert any("Ariel_Sharon_0001.jpg" in m for m in res["skipped_examples"])
    # Options are checked before any work.
    with pytest.raises(ConfigError, match="modes"):
        p.validate_root(root, p.Options(modes=["hr-hr"]))


@pytest.mark.slow
def test_pretrained_resnet29_on_lfw_pairs(tmp_path):
    """~50 real LFW pairs (crude centre crops, no alignment) with the pretrained dlib
    ResNet-29: far above chance at full resolution."""
    from ranface.inference import load_model

    model_dir = require_shared("models", "faceapi-resnet29")
    src = require_shared("lfw-gray", "pairs.txt")
    lines = open(src).read().splitlines()
    out = ["2 12"]
    for f in range(2):
        base = 1 + 600 * f
        out += lines[base:base + 12] + lines[base + 300:base + 312]
    root = tmp_path / "lfw"
    for ln in out[1:]:
        t = ln.split()
        ims = [(t[0], t[1]), (t[0], t[2])] if len(t) == 3 else [(t[0], t[1]), (t[2], t[3])]
        for name, k in ims:
            dst = root / name / f"{name}_{int(k):04d}.jpg"
            if not dst.exists():
                save(crop(lfw(name, int(k)), 150), str(dst))
    (root / "pairs.txt").write_text("\n".join(out) + "\n")
    model, info = load_model(model_dir)
    from ranface.eval.protocols import EvalContext

    ctx = EvalContext(model, info, batch_size=16)
    res = get_protocol("pairs").run(ctx, str(root), get_protocol("pairs").Options(
        probe_sizes=[16], modes=["hr-lr"]))
    assert res["counts"]["scored"] == 48
    assert res["metrics"]["full"]["acc"] > 0.75
    assert res["metrics"]["full"]["auc"] > 0.8


def test_pairs_undetected_faces_are_dropped_and_named(lfw_folder, tmp_path):
    """A photo that `prepare` listed in failures.csv (no face found) drops its pairs,
    counted per fold and named; an unlisted missing image is still an error."""
    import shutil

    root = str(tmp_path / "copy")
    shutil.copytree(lfw_folder, root)
    images = os.path.join(root, "images")
    os.remove(os.path.join(images, "Tony_Blair", "Tony_Blair_0003.jpg"))
    with open(os.path.join(images, "failures.csv"), "w") as fh:
        fh.write("source,reason\nTony_Blair/Tony_Blair_0003.jpg,no face detected\n")
    p = get_protocol("pairs")
    o = p.Options(probe_sizes=[16], modes=["hr-lr"])
    res = p.run(ctx_for(), root, o)  # on_error=raise: no error for a listed failure
    d = res["dropped"]
    assert d["pairs"] == 1 and d["matched"] == 0 and d["mismatched"] == 1
    assert d["per_fold"] == {"0": 1, "1": 0}
    assert d["images"] == [{"image": "Tony_Blair/Tony_Blair_0003.jpg", "reason": "no face detected"}]
    assert res["counts"]["scored"] == 11 and res["counts"]["skipped"] == 0
    assert res["counts"]["dropped_undetected"] == 1 and res["counts"]["folds"] == 2
    md = p.markdown(res)
    assert "Dropped 1 pairs (0 matched, 1 mismatched; fold 0: 1, fold 1: 0)" in md
    assert "Tony_Blair/Tony_Blair_0003.jpg" in md and "2-fold" in md and "10-fold" not in md
    # the per-pair decisions line up with the scored pairs and reproduce the accuracy
    lines = res["scored_pairs"]["lines"]
    assert len(lines) == 11 and 6 not in lines  # pairs.txt line 6 holds the dropped pair
    for got in (res["metrics"]["full"], res["metrics"]["hr-lr"]["16"]):
        c = np.array([ch == "1" for ch in got["correct"]])
        folds = np.array(res["scored_pairs"]["folds"])
        assert np.mean([c[folds == f].mean() for f in np.unique(folds)]) == pytest.approx(got["acc"])
    # a missing image prepare did not list is an error, as before
    os.remove(os.path.join(images, "Ariel_Sharon", "Ariel_Sharon_0001.jpg"))
    with pytest.raises(ProtocolError, match="Ariel_Sharon_0001.jpg: image not found"):
        p.run(ctx_for(), root, o)


def test_evaluate_cli_relative_paths_resolved_once(lfw_folder, tmp_path, monkeypatch):
    """The README's form: --root and --set pairs=... both relative to the current
    directory; the pairs path must not be joined onto the root (issue 11)."""
    import shutil

    from ranface.cli import main
    from ranface.config import load_config
    from ranface.eval.protocols.pairs import PairsOptions

    work = tmp_path / "cwd"
    shutil.copytree(os.path.join(lfw_folder, "images"), work / "work" / "faces")
    shutil.copy(os.path.join(lfw_folder, "pairs.txt"), tmp_path / "pairs_list.txt")
    monkeypatch.chdir(work)
    o = load_config(PairsOptions, None, ["pairs=../pairs_list.txt", "images=auto"])
    assert o.pairs == str(tmp_path / "pairs_list.txt") and o.images == "auto"
    assert load_config(PairsOptions).pairs == "pairs.txt"  # the default stays root-relative
    import torch

    from ranface.inference import model_package
    from ranface.models import create_backbone

    torch.manual_seed(0)
    (work / "runs").mkdir()
    torch.save(model_package(create_backbone("mobilefacenet", embedding_size=32), "mobilefacenet",
                             {"embedding_size": 32}), str(work / "runs" / "model.pt"))
    # the README's evaluate line, with relative --root, --model and --set pairs=
    assert main(["evaluate", "-p", "pairs", "--root", "work/faces", "--model", "runs/model.pt",
                 "--set", "pairs=../pairs_list.txt", "--set", "probe_sizes=[16]", "--set", "modes=[hr-lr]",
                 "--set", "flip=false", "--device", "cpu", "--no-progress"]) == 0
    res = json.load(open(work / "runs" / "eval" / "pairs" / "result.json"))
    assert res["counts"]["scored"] == 12 and res["options"]["pairs"] == str(tmp_path / "pairs_list.txt")


def test_threaded_decoding_gives_the_sequential_embeddings(lfw_folder, tmp_path):
    """Issue 16: decoding/degrading in worker threads, and the forward passes run there on
    one thread each, must not change the embeddings (order, variants, wanted masks,
    skipped files). A pass's thread count (the workers' share of the cores) may move a
    matmul's float rounding, nothing else; a repeated run gives the same bits however
    the passes interleave."""
    from ranface.eval.features import SkipLog, embed_images

    rels = sorted(os.path.relpath(os.path.join(d, f), os.path.join(lfw_folder, "images"))
                  for d, _, fs in os.walk(os.path.join(lfw_folder, "images")) for f in fs)
    paths = [os.path.join(lfw_folder, "images", r) for r in rels]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    paths.insert(5, str(bad))
    n = len(paths)
    wanted = {"full": np.ones(n, bool), "12": np.arange(n) % 3 != 0, "8": np.arange(n) % 2 == 0}
    variants = {"full": None, "12": lambda x: down_up(x, 12), "8": lambda x: down_up(x, 8)}
    out = {}
    for key, workers in ((0, 0), (1, 1), (3, 3), ("3 again", 3)):
        model = TinyNet()
        emb = ctx_for(model).embedder(True)  # batch 8: many batches, a short look-ahead
        skips = SkipLog("skip")
        f = embed_images(emb, paths, variants=variants, wanted=wanted, skips=skips, workers=workers)
        out[key] = (f, skips.count, model.calls)
    ref, ref_skips, ref_calls = out[0]
    assert ref_skips == 1 and not ref.ok[5] and ref.ok.sum() == n - 1
    assert ref_calls == 2 * ref.n_embedded  # flip-sum: each face and its mirror
    assert ref.n_embedded == sum(int((w & ref.ok).sum()) for w in wanted.values())
    for key in (1, 3, "3 again"):
        got, got_skips, calls = out[key]
        assert got_skips == ref_skips and calls == ref_calls
        np.testing.assert_array_equal(got.ok, ref.ok)
        for v in variants:
            np.testing.assert_array_equal(np.isnan(got[v]), np.isnan(ref[v]))
            np.testing.assert_allclose(got[v], ref[v], rtol=0, atol=1e-6)  # rows in order
    for v in variants:
        np.testing.assert_array_equal(out["3 again"][0][v], out[3][0][v])


def test_probe_degrader_bicubic_equals_default_and_second_order_is_fixed_per_image(lfw_folder, tmp_path):
    """``probe_degrader``: the registry's bicubic gives the default probes exactly; a random
    degrader's probes are a pure function of the image (threads, order and model do not
    change them), they differ from bicubic's, and the result records the probe kind."""
    from ranface.eval.features import embed_images
    from ranface.eval.protocols.pairs import _degrader_probe

    P = get_protocol("pairs")
    run = lambda **kw: P.run(ctx_for(TinyNet()), lfw_folder, P.Options(  # noqa: E731
        probe_sizes=[12], modes=["hr-lr"], fars=[0.5], **kw))
    ref, bic = run(), run(probe_degrader="bicubic")
    assert bic["metrics"]["hr-lr"]["12"]["correct"] == ref["metrics"]["hr-lr"]["12"]["correct"]
    assert bic["metrics"]["hr-lr"]["12"]["auc"] == ref["metrics"]["hr-lr"]["12"]["auc"]
    assert ref["metrics"]["probe"] == {"degrader": "down-up", "kernel": "bicubic"}
    so = run(probe_degrader="second-order", probe_seed=3)
    assert so["metrics"]["probe"] == {"degrader": "second-order", "options": {}, "seed": 3}
    # the protocol used it: other probe scores (the full-resolution row is untouched)
    assert so["metrics"]["hr-lr"]["12"]["best_threshold"] != ref["metrics"]["hr-lr"]["12"]["best_threshold"]
    assert so["metrics"]["full"]["best_threshold"] == ref["metrics"]["full"]["best_threshold"]
    assert "degraded by `second-order` at the probe width" in P.markdown(so)

    img = np.array(Image.open(os.path.join(lfw_folder, "images", PEOPLE[0], f"{PEOPLE[0]}_0001.jpg")).convert("RGB"))
    op = _degrader_probe("second-order", {}, 12, 3)
    a = op(img)
    assert a.shape == img.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, op(img.copy()))  # the pixels pick the draws
    assert not np.array_equal(a, _degrader_probe("second-order", {}, 12, 4)(img))  # and the seed
    assert not np.array_equal(a, down_up(img, 12))
    rels = sorted(os.path.relpath(os.path.join(d, f), os.path.join(lfw_folder, "images"))
                  for d, _, fs in os.walk(os.path.join(lfw_folder, "images")) for f in fs)
    paths = [os.path.join(lfw_folder, "images", r) for r in rels]
    feats = [embed_images(ctx_for(TinyNet()).embedder(False), order, variants={"p": op}, workers=w)
             for order, w in ((paths, 0), (paths[::-1], 3))]
    np.testing.assert_array_equal(feats[0]["p"], feats[1]["p"][::-1])


@pytest.mark.parametrize("name,opts,what", [("nope", {}, "unknown degrader 'nope'"),
                                             ("second-order", {"bogus": 1}, "unknown option(s) bogus"),
                                             ("second-order", [1], "must be a mapping")])
def test_probe_degrader_refused_before_any_work(lfw_folder, name, opts, what, tmp_path, capsys):
    from ranface.cli import main

    P = get_protocol("pairs")
    with pytest.raises(ConfigError, match=what.replace("(", r"\(").replace(")", r"\)")):
        P.validate_root(lfw_folder, P.Options(probe_degrader=name, probe_options=opts))
    # the CLI: one line, exit 2, nothing written
    rc = main(["evaluate", "-p", "pairs", "--model", "tiny-missing-is-checked-later", "--root", lfw_folder,
               "--set", f"probe_degrader={name}", "--set", f"probe_options={json.dumps(opts)}",
               "--out", str(tmp_path / "ev")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and what in err[0] and not (tmp_path / "ev").exists()


def test_pairs_fused_forward_pass_matches_the_model_as_loaded(lfw_folder):
    """The evaluation's default forward pass (a copy with the scales folded into the convs,
    channels_last, faces prepared in the worker threads) gives the decisions and, up to
    float rounding, the scores of the model as loaded (NCHW, unfused, in one thread)."""
    from ranface.models.loader import load_model

    model, info = load_model(require_shared("models", "faceapi-resnet29"))
    o = get_protocol("pairs").Options(probe_sizes=[16], modes=["hr-lr"], fars=[0.5])
    res = {}
    for fuse, workers in ((False, 0), (True, 2)):
        ctx = ctx_for(model, fuse=fuse, workers=workers)
        ctx.info = info.info()
        emb = ctx.embedder(True)
        assert emb.fused is fuse and emb.channels_last is fuse
        res[fuse] = get_protocol("pairs").run(ctx, lfw_folder, o)["metrics"]
    for a, b in ((res[False]["full"], res[True]["full"]), (res[False]["hr-lr"]["16"], res[True]["hr-lr"]["16"])):
        assert a["correct"] == b["correct"] and a["acc"] == b["acc"]
        assert abs(a["auc"] - b["auc"]) < 1e-6 and abs(a["eer_threshold"] - b["eer_threshold"]) < 1e-5
    # the model itself was not folded
    assert type(model.conv32_down.scale).__name__ == "Scale"


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_worker_threads_get_their_share_of_the_cores(lfw_folder, workers):
    """On a CPU each worker runs whole forward passes, on cores // workers intra-op threads
    (at least one): fewer workers than cores leave no core idle, more never oversubscribe."""
    import torch

    from ranface.eval.features import _usable_cores, embed_images

    seen = []

    def prepare(img, i):
        seen.append(torch.get_num_threads())
        return img

    rels = sorted(os.path.relpath(os.path.join(d, f), os.path.join(lfw_folder, "images"))
                  for d, _, fs in os.walk(os.path.join(lfw_folder, "images")) for f in fs)[:6]
    paths = [os.path.join(lfw_folder, "images", r) for r in rels]
    before = torch.get_num_threads()
    f = embed_images(ctx_for(TinyNet()).embedder(False), paths, prepare=prepare, workers=workers)
    assert f.n_ok == len(paths) and torch.get_num_threads() == before  # the caller's own is kept
    assert set(seen) == {max(1, _usable_cores() // workers)}
