"""``synthesize``: degrader registry, folder and .rec twins (labels, counts, layout),
resume after interruption, mrgan degrader, bad input."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_face_folder
from ranface.cli import main
from ranface.config import load_config
from ranface.data.datasets import ImageFolderDataset, PairedDataset, RecordDataset
from ranface.data.image import encode_image, read_image
from ranface.data.recordio import RecordReader, write_insightface_rec
from ranface.degrade import down_up
from ranface.errors import CheckpointError, ConfigError, DataError
from ranface.gan.config import GeneratorConfig, SynthConfig
from ranface.gan.degraders import (LEVELS_NAME, MANIFEST_NAME, Degrader, batch_generator, create_degrader,
                                   list_degraders, register_degrader, synthesize)
from ranface.gan.generator import MRGenerator, generator_package
from ranface.train.checkpoint import save_checkpoint


pytestmark = pytest.mark.usefixtures("one_thread")


class Interrupt(Exception):
    pass


@register_degrader("test-flaky")
class Flaky(Degrader):
    """A user-added degrader (one class): darkens by ``amount`` and a random offset;
    raises on call number ``fail_at`` (simulated crash mid-run)."""

    defaults = {"amount": 0.5, "fail_at": -1}
    calls = 0

    def __call__(self, batch, generator):
        Flaky.calls += 1
        if Flaky.calls == self.options["fail_at"]:
            raise Interrupt()
        off = torch.rand(batch.shape[0], 1, 1, 1, generator=generator) * 0.1
        return (batch - self.options["amount"] - off).clamp(-1, 1)


def cfg(inp, out, degrader="bicubic", **kw):
    over = {"input": str(inp), "output": str(out), "degrader": degrader, "batch_size": 3,
            "num_workers": 0, "progress": False, "device": "cpu", **kw}
    return load_config(SynthConfig, None, [f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
                                           for k, v in over.items()])


@pytest.fixture
def hr(tmp_path):
    return make_face_folder(str(tmp_path / "hr"), n_ids=3, per_id=3, size=32)


def tree(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
                  if f not in (MANIFEST_NAME, LEVELS_NAME) and not f.startswith("."))


def test_registry_lists_and_validates():
    assert {"bicubic", "mrgan", "random-degrade", "test-flaky"} <= set(list_degraders())
    with pytest.raises(ConfigError, match="unknown degrader 'nope'"):
        create_degrader("nope")
    with pytest.raises(ConfigError, match="unknown option"):
        create_degrader("bicubic", {"sizes": [1, 2]})
    with pytest.raises(ConfigError, match="size_range"):
        create_degrader("bicubic", {"size_range": [20, 10]})
    with pytest.raises(ConfigError, match="random-degrade"):
        create_degrader("random-degrade", {"blur_p": 2.0})
    with pytest.raises(ConfigError, match="already registered"):
        register_degrader("bicubic")(Flaky)


def test_bicubic_band_option_sets_widths_and_is_recorded(hr, tmp_path):
    d = create_degrader("bicubic", {"eye_mouth_range": [10, 30], "template": "dlib"})
    assert d.size_range == (25, 76)
    assert d.info()["band"] == {"widths_px": [25, 76], "eye_mouth_px": [9.88, 30.05], "template": "dlib"}
    assert create_degrader("bicubic", {"size_range": [8, 32]}).info()["band"]["eye_mouth_px"] == [2.91, 11.62]
    for bad in ([30, 10], [0, 5], "10:30", [10]):
        with pytest.raises(ConfigError, match="eye_mouth_range"):
            create_degrader("bicubic", {"eye_mouth_range": bad})
    with pytest.raises(ConfigError, match="template"):
        create_degrader("bicubic", {"template": "nope"})
    out = tmp_path / "lr"
    synthesize(cfg(hr, out, options={"eye_mouth_range": [3, 4], "template": "arcface"}, num_workers=1))
    m = json.load(open(out / MANIFEST_NAME))
    assert m["degrader_info"]["band"]["widths_px"] == [8, 11]  # 3 / 0.3633, 4 / 0.3633


def test_bicubic_folder_twin_preserves_labels_and_layout(hr, tmp_path):
    out = tmp_path / "lr"
    s = synthesize(cfg(hr, out, options={"size_range": [6, 10]}, seed=3, num_workers=1))
    assert s["status"] == "complete" and s["counts"]["written"] == 9 and s["faces_per_s"] > 0
    assert tree(out) == tree(hr)
    # every face's level (the width it was shrunk to) is recorded, inside the size range
    rows = [ln.split("\t") for ln in (out / LEVELS_NAME).read_text().splitlines()[1:]]
    assert sorted(r[0] for r in rows) == tree(hr) and all(6 <= int(r[1]) <= 10 for r in rows)
    a, b = ImageFolderDataset(hr), ImageFolderDataset(str(out))
    assert a.classes == b.classes and list(a.labels) == list(b.labels)
    PairedDataset(a, b)  # the LR twin pairs with its HR set
    m = json.load(open(out / MANIFEST_NAME))
    assert m["degrader"] == "bicubic" and m["seed"] == 3 and m["options"]["size_range"] == [6, 10]
    assert m["counts"]["written"] == 9 and m["num_images"] == 9
    # the first face is down_up(x, S) with S drawn from the batch's generator
    x = torch.from_numpy(read_image(os.path.join(hr, "id000", "000.png"))).permute(2, 0, 1)[None].float() / 127.5 - 1
    size = int(torch.randint(6, 11, (3,), generator=batch_generator(3, 0))[0])
    want = ((down_up(x, size).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()
    got = read_image(str(out / "id000" / "000.png"))
    assert np.array_equal(got, want)


def test_folder_resume_after_crash_and_deleted_outputs(hr, tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "out"
    synthesize(cfg(hr, ref, "test-flaky"))
    Flaky.calls = 0
    with pytest.raises(Interrupt):
        synthesize(cfg(hr, out, "test-flaky", options={"fail_at": 2}))
    assert len(tree(out)) == 3  # the first batch was written, atomically
    assert json.load(open(out / MANIFEST_NAME))["status"] == "running"
    os.remove(out / "id000" / "001.png")  # and one finished file lost
    s = synthesize(cfg(hr, out, "test-flaky", options={"fail_at": 2}))  # calls is now > 2
    assert s["status"] == "complete"
    assert s["counts"] == {"written": 7, "existing": 2, "degraded": 9, "copied_unreadable": 0}
    assert tree(out) == tree(ref)
    for f in tree(ref):  # identical pixels to an uninterrupted run
        assert open(ref / f, "rb").read() == open(out / f, "rb").read(), f
    # interrupted through stop_after, then resumed: same again
    out2 = tmp_path / "out2"
    assert synthesize(cfg(hr, out2, "test-flaky"), stop_after=1)["status"] == "partial"
    synthesize(cfg(hr, out2, "test-flaky"))
    assert all(open(ref / f, "rb").read() == open(out2 / f, "rb").read() for f in tree(ref))


def test_resume_with_other_settings_is_refused(hr, tmp_path):
    out = tmp_path / "lr"
    synthesize(cfg(hr, out, seed=1))
    with pytest.raises(ConfigError, match=r"other settings: seed 1 \(now 2\)"):
        synthesize(cfg(hr, out, seed=2))
    s = synthesize(cfg(hr, out, seed=2, overwrite=True))
    assert s["counts"]["written"] == 9 and s["seed"] == 2


def test_unreadable_input_is_copied_and_counted(hr, tmp_path):
    bad = os.path.join(hr, "id001", "001.png")
    with open(bad, "wb") as fh:
        fh.write(b"not a png")
    with pytest.raises(DataError, match="001.png"):
        synthesize(cfg(hr, tmp_path / "a"))
    s = synthesize(cfg(hr, tmp_path / "b", on_error="skip"))
    assert s["counts"]["copied_unreadable"] == 1 and s["counts"]["written"] == 8
    assert open(tmp_path / "b" / "id001" / "001.png", "rb").read() == b"not a png"


def _rec(folder, n_ids=3, per_id=2, size=24):
    rng = np.random.default_rng(0)
    samples = []
    for c in range(n_ids):
        for _ in range(per_id):
            arr = (rng.random((size, size, 3)) * 255).astype(np.uint8)
            samples.append((encode_image(arr, "png"), c))
    os.makedirs(folder)
    write_insightface_rec(folder, samples)
    with open(os.path.join(folder, "property"), "w") as fh:
        fh.write(f"{n_ids},{size},{size}\n")
    return folder


def test_rec_twin_same_keys_labels_and_headers(tmp_path):
    src = _rec(str(tmp_path / "rec"))
    out = tmp_path / "lr"
    s = synthesize(cfg(src, out, "random-degrade", options={"size_range": [6, 12], "jpeg_p": 0.0}))
    assert s["format"] == "rec" and s["counts"]["written"] == 6 and s["counts"]["copied_records"] == 4
    a, b = RecordDataset(src), RecordDataset(str(out))
    assert list(a.keys) == list(b.keys) and list(a.labels) == list(b.labels)
    ra, rb = RecordReader(a.reader.rec_path, a.reader.idx_path), RecordReader(b.reader.rec_path, b.reader.idx_path)
    assert ra.keys == rb.keys  # header and identity records too, in file order
    for k in ra.keys:
        ha, hb = ra.read_header(k), rb.read_header(k)
        assert (ha.flag, ha.id, ha.id2) == (hb.flag, hb.id, hb.id2)
        assert np.array_equal(np.asarray(ha.label), np.asarray(hb.label))
    img_a, img_b = a[0][0], b[0][0]
    assert img_b.shape == img_a.shape and not np.array_equal(img_a, img_b)
    assert open(out / "property").read() == "3,24,24\n"
    # a second run finds it complete; an interrupted one leaves no partial .rec
    assert synthesize(cfg(src, out, "random-degrade",
                          options={"size_range": [6, 12], "jpeg_p": 0.0}))["written"] == 0
    out2 = tmp_path / "lr2"
    s2 = synthesize(cfg(src, out2, "bicubic"), stop_after=1)
    assert s2["status"] == "partial" and not os.path.exists(out2 / "train.rec")
    assert [f for f in os.listdir(out2) if f != MANIFEST_NAME] == []


def _generator_file(tmp_path, size=32):
    torch.manual_seed(0)
    G = MRGenerator(GeneratorConfig(base_width=4, num_stages=1, blocks_per_stage=1, z_dim=4,
                                    local_width=4, fuse_width=8), face_size=size)
    with torch.no_grad():  # a residual generator starts at G(x) = x_r3 for every z: stand in for a trained one
        for p in G.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = str(tmp_path / "generator.pt")
    save_checkpoint(path, generator_package(G, step=7))
    return path


def test_mrgan_degrader_random_z_per_image_and_cli(tmp_path):
    gen = _generator_file(tmp_path)
    inp = tmp_path / "same" / "id0"
    inp.mkdir(parents=True)
    face = (np.random.default_rng(1).random((32, 32, 3)) * 255).astype(np.uint8)
    for i in range(4):
        Image.fromarray(face).save(inp / f"{i}.png")
    out = tmp_path / "lr"
    rc = main(["synthesize", str(tmp_path / "same"), str(out), "-d", "mrgan", "--checkpoint", gen,
               "--seed", "5", "--set", "batch_size=4", "--set", "num_workers=0", "--set", "progress=false",
               "--set", "device=cpu"])
    assert rc == 0
    imgs = [read_image(str(out / "id0" / f"{i}.png")) for i in range(4)]
    assert all(im.shape == (32, 32, 3) for im in imgs)
    # one input face, four outputs: z differs per image
    assert len({im.tobytes() for im in imgs}) == 4
    m = json.load(open(out / MANIFEST_NAME))
    assert m["degrader"] == "mrgan" and m["seed"] == 5 and m["degrader_info"]["checkpoint_step"] == 7


def test_mrgan_bad_inputs(hr, tmp_path):
    gen = _generator_file(tmp_path, size=16)  # a generator for 16 px faces; hr has 32 px
    with pytest.raises(DataError, match="image is 32x32, expected 16x16"):
        synthesize(cfg(hr, tmp_path / "lr", "mrgan", options={"checkpoint": gen}))
    save_checkpoint(str(tmp_path / "model.pt"), {"format": "ranface-model/1", "state_dict": {}})
    with pytest.raises(CheckpointError, match="not an MR-GAN generator"):
        create_degrader("mrgan", {"checkpoint": str(tmp_path / "model.pt")})
    with pytest.raises(CheckpointError, match="no MR-GAN generator given"):
        create_degrader("mrgan", {})


def test_input_output_errors(hr, tmp_path):
    with pytest.raises(DataError, match="input dataset not found"):
        synthesize(cfg(tmp_path / "missing", tmp_path / "o"))
    with pytest.raises(ConfigError, match="input's folder"):
        synthesize(cfg(hr, hr))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        synthesize(cfg(tmp_path / "empty", tmp_path / "o"))
    foreign = tmp_path / "foreign" / "id000"
    foreign.mkdir(parents=True)
    (foreign / "000.png").write_bytes(b"someone else's file")
    with pytest.raises(ConfigError, match="holds outputs but no synth_manifest.json"):
        synthesize(cfg(hr, tmp_path / "foreign"))


def test_readme_synthesize_lines_verbatim_from_a_relative_cwd(hr, tmp_path, monkeypatch):
    """Each `ranface synthesize ... -d bicubic` line of the README, exactly as written, run
    from a working directory holding work/faces (relative paths, default outputs)."""
    import shlex
    import shutil

    from ranface.cli import main

    readme = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")).read()
    lines = [ln.strip() for ln in readme.splitlines() if ln.strip().startswith("ranface synthesize")
             and "-d bicubic" in ln]
    assert len(lines) == 2  # plain bicubic and the eye-to-mouth band
    shutil.copytree(hr, tmp_path / "work" / "faces")
    monkeypatch.chdir(tmp_path)
    for ln in lines:
        argv = shlex.split(ln)
        assert argv[0] == "ranface"
        assert main(argv[1:] + ["--set", "progress=false"]) == 0, ln
        out = tmp_path / argv[3]
        assert tree(out) == tree(tmp_path / "work" / "faces")
    band = json.load(open(tmp_path / "work" / "faces_lr_band" / MANIFEST_NAME))["degrader_info"]["band"]
    assert band["eye_mouth_px"][0] >= 9.5 and band["eye_mouth_px"][1] <= 30.5  # the real band, not below it


def test_mrgan_with_levels_records_each_face_width_and_refuses_untrained_levels(hr, tmp_path):
    torch.manual_seed(0)
    G = MRGenerator(GeneratorConfig(base_width=4, num_stages=1, blocks_per_stage=1, z_dim=4, local_width=4,
                                    fuse_width=8, level_widths=[6, 20]), face_size=32)
    gen = str(tmp_path / "generator.pt")
    save_checkpoint(gen, generator_package(G, step=3))
    out = tmp_path / "lr"
    s = synthesize(cfg(hr, out, "mrgan", options={"checkpoint": gen, "level_widths": [8, 12]}))
    assert s["degrader_info"]["band"]["widths_px"] == [8, 12]
    assert s["degrader_info"]["band"]["trained_widths_px"] == [6, 20]
    rows = [ln.split("\t") for ln in (out / LEVELS_NAME).read_text().splitlines()[1:]]
    assert sorted(r[0] for r in rows) == tree(hr) and all(8 <= int(r[1]) <= 12 for r in rows)
    # the recorded width is the one G used: re-run the first batch by hand
    deg = create_degrader("mrgan", {"checkpoint": gen, "level_widths": [8, 12]})
    n = min(3, s["batch_size"])
    assert deg.levels(n, batch_generator(s["seed"], 0)).tolist() == [int(r[1]) for r in sorted(rows)[:n]]
    assert s["degrader_info"]["band"]["extrapolated"] is False
    with pytest.raises(ConfigError, match="outside the levels.*extrapolate=true"):
        create_degrader("mrgan", {"checkpoint": gen, "level_widths": [4, 12]})
    # past the trained levels only when asked, and recorded as such
    far = synthesize(cfg(hr, tmp_path / "far", "mrgan",
                         options={"checkpoint": gen, "level_widths": [3, 5], "extrapolate": True}))
    assert far["degrader_info"]["band"]["widths_px"] == [3, 5] and far["degrader_info"]["band"]["extrapolated"]
    rows = [ln.split("\t") for ln in (tmp_path / "far" / LEVELS_NAME).read_text().splitlines()[1:]]
    assert rows and all(3 <= int(r[1]) <= 5 for r in rows)
    with pytest.raises(ConfigError, match="extrapolate must be true or false"):
        create_degrader("mrgan", {"checkpoint": gen, "level_widths": [4, 12], "extrapolate": "yes"})
    (tmp_path / "fixed").mkdir()
    with pytest.raises(ConfigError, match="outside the levels"):  # one fixed level: nothing to extrapolate
        create_degrader("mrgan", {"checkpoint": _generator_file(tmp_path / "fixed"), "level_widths": [8, 12],
                                  "extrapolate": True})


def test_second_order_degrader_is_registered_and_records_levels(hr, tmp_path):
    out = tmp_path / "lr"
    s = synthesize(cfg(hr, out, "second-order", options={"size_range": [6, 10]}))
    assert s["status"] == "complete" and tree(out) == tree(hr)
    rows = [ln.split("\t") for ln in (out / LEVELS_NAME).read_text().splitlines()[1:]]
    assert len(rows) == 9 and all(6 <= int(r[1]) <= 10 for r in rows)
    with pytest.raises(ConfigError, match="second-order"):
        create_degrader("second-order", {"jpeg_quality": [0, 200]})


def test_mrgan_codec_jpeg_at_each_face_level_width(hr, tmp_path):
    """codec_p = 0 leaves G(x) as it was; codec_p = 1 is G(x) through lr_jpeg at the face's own
    level width and a drawn quality (reproduced by hand); bad codec options are one-line errors."""
    from ranface.degrade import lr_jpeg

    torch.manual_seed(0)
    G = MRGenerator(GeneratorConfig(base_width=4, num_stages=1, blocks_per_stage=1, z_dim=4, local_width=4,
                                    fuse_width=8, level_widths=[6, 20]), face_size=32)
    gen = str(tmp_path / "generator.pt")
    save_checkpoint(gen, generator_package(G, step=3))
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    plain = create_degrader("mrgan", {"checkpoint": gen})
    off = create_degrader("mrgan", {"checkpoint": gen, "codec_p": 0.0})
    on = create_degrader("mrgan", {"checkpoint": gen, "codec_p": 1.0, "codec_quality": [20, 40]})
    a, b, c = (d(x, batch_generator(7, 0)) for d in (plain, off, on))
    assert torch.equal(a, b)
    # by hand: the batch generator's draws in the degrader's order (widths, z, then the codec's)
    g = batch_generator(7, 0)
    widths = on.levels(4, g)
    on.G.sample_z(4, g)
    assert (torch.rand(4, generator=g) < 1.0).all()
    q = torch.randint(20, 41, (4,), generator=g)
    want = lr_jpeg(a, widths.tolist(), q.tolist())
    assert torch.allclose(c, want, atol=1e-6)
    assert (c - a).abs().mean() > 1e-3  # the codec did something
    assert on.info()["codec"] == {"p": 1.0, "quality": [20, 40], "at": "each face's level width (degrade.lr_jpeg)"}
    for bad, msg in (({"codec_p": 1.5}, "codec_p must be a probability"),
                     ({"codec_p": True}, "codec_p must be a probability"),
                     ({"codec_quality": [50, 20]}, "codec_quality must be"),
                     ({"codec_quality": [0, 20]}, "codec_quality must be"),
                     ({"codec_quality": 50}, "codec_quality must be")):
        with pytest.raises(ConfigError, match=msg):
            create_degrader("mrgan", {"checkpoint": gen, **bad})
    # a synthesis made before the codec options existed resumes (they are at their defaults)
    out = tmp_path / "lr"
    synthesize(cfg(hr, out, "mrgan", options={"checkpoint": gen}))
    m = json.loads((out / MANIFEST_NAME).read_text())
    for k in ("codec_p", "codec_quality"):
        m["options"].pop(k)
    (out / MANIFEST_NAME).write_text(json.dumps(m))
    assert synthesize(cfg(hr, out, "mrgan", options={"checkpoint": gen}))["status"] == "complete"
    with pytest.raises(ConfigError, match="made with other settings"):
        synthesize(cfg(hr, out, "mrgan", options={"checkpoint": gen, "codec_p": 0.5}))


def test_bicubic_codec_is_the_same_codec_after_the_same_widths():
    """The codec's control (Table 1's bicubic+codec): bicubic's faces, then lr_jpeg at each
    face's own width; codec_p 0 is bicubic as before."""
    from ranface.degrade import lr_jpeg
    from ranface.demo import DemoConfig
    from ranface.pipelines.table1 import CODEC_CONTROL, realism_methods

    x = torch.rand(3, 3, 32, 32) * 2 - 1
    plain = create_degrader("bicubic", {"size_range": [8, 16]})(x, batch_generator(3, 0))
    on = create_degrader("bicubic", {"size_range": [8, 16], "codec_p": 1.0, "codec_quality": [40, 40]})
    g = batch_generator(3, 0)
    out = on(x, g)
    widths = on.levels(3, batch_generator(3, 0))
    assert torch.allclose(out, lr_jpeg(plain, widths.tolist(), [40] * 3), atol=1e-6)
    assert torch.equal(create_degrader("bicubic", {"size_range": [8, 16], "codec_p": 0.0})(x, batch_generator(3, 0)),
                       plain)
    assert CODEC_CONTROL not in realism_methods(DemoConfig(mrgan_codec_p=0.0))
    assert realism_methods(DemoConfig())[-1] == CODEC_CONTROL  # the default: codec on
