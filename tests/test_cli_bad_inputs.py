"""Every subcommand fed bad arguments, paths and config values (issue 15): exit status 2,
exactly one line on stderr (no traceback, no usage dump), and nothing left in the output
location. A new subcommand or case is one more row of :data:`CASES`.

Placeholders: {faces} a folder of aligned faces, {img} one face, {model} a trained
model.pt, {gallery} a gallery file, {tmp} the test's folder, {out} an output path inside
it that must not exist afterwards, {file} a regular file (an output "folder" under it
can never be created, also as root), {bomb} a YAML alias bomb, {nan} a config file with
a NaN learning rate.
"""
import os
import sys

import pytest

from conftest import make_face_folder
from ranface.cli import main

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("one_thread")]

SMALL = ["--set", "run.progress=false", "--set", "run.tensorboard=false", "--set", "run.device=cpu",
         "--set", "data.batch_size=4", "--set", "data.num_workers=0", "--set", "model.backbone=mobilefacenet",
         "--set", "model.embedding_size=32", "--set", "optim.max_steps=1", "--set", "run.precision=fp32"]

CASES = {
    # train
    "train/nan-lr": ["train", "--set", "optim.lr=.nan", "--set", "run.out_dir={out}"],
    "train/batch-0": ["train", "--set", "data.batch_size=0", "--set", "run.out_dir={out}"],
    "train/device": ["train", "--set", "run.device=tpu", "--set", "run.out_dir={out}"],
    "train/unknown-key": ["train", "--set", "optim.lrr=0.1", "--set", "run.out_dir={out}"],
    "train/bad-int": ["train", "--set", "optim.max_steps=many", "--set", "run.out_dir={out}"],
    "train/bad-stage": ["train", "--stage", "xr"],
    "train/missing-config": ["train", "-c", "{tmp}/nope.yaml"],
    "train/alias-bomb": ["train", "-c", "{bomb}", "--set", "run.out_dir={out}"],
    "train/nan-file": ["train", "-c", "{nan}", "--set", "run.out_dir={out}"],
    "train/missing-data": ["train", *SMALL, "--set", "data.train={tmp}/none", "--set", "run.out_dir={out}"],
    "train/one-identity": ["train", *SMALL, "--set", "data.train={one}", "--set", "run.out_dir={out}"],
    "train/out-under-file": ["train", *SMALL, "--set", "data.train={faces}", "--set", "run.out_dir={file}/runs"],
    # embed / compare
    "embed/missing-model": ["embed", "{faces}", "-m", "{tmp}/none.pt", "--out", "{out}/e"],
    "embed/missing-input": ["embed", "{tmp}/none", "-m", "{model}", "--out", "{out}/e"],
    "embed/not-a-model": ["embed", "{faces}", "-m", "{img}", "--out", "{out}/e"],
    "embed/batch-0": ["embed", "{faces}", "-m", "{model}", "--out", "{out}/e", "--set", "batch_size=0"],
    "embed/out-under-file": ["embed", "{faces}", "-m", "{model}", "--out", "{file}/sub/e"],
    "embed/no-out": ["embed", "{faces}", "-m", "{model}"],
    "compare/missing-image": ["compare", "{img}", "{tmp}/none.png", "-m", "{model}"],
    "compare/threshold": ["compare", "{img}", "{img}", "-m", "{model}", "--threshold", "nan"],
    "compare/bad-threshold": ["compare", "{img}", "{img}", "-m", "{model}", "--threshold", "x"],
    # prepare
    "prepare/missing-input": ["prepare", "{tmp}/none", "--out", "{out}"],
    "prepare/workers-0": ["prepare", "{faces}", "--out", "{out}", "--set", "workers=0"],
    "prepare/bad-size": ["prepare", "{faces}", "--out", "{out}", "--set", "size=[0, 112]"],
    "prepare/lr-select": ["prepare", "{faces}", "--out", "{out}", "--lr-select", "30:x"],
    "prepare/bad-mode": ["prepare", "{faces}", "--out", "{out}", "--mode", "some"],
    # evaluate / report
    "evaluate/unknown-protocol": ["evaluate", "-p", "nope", "-r", "{faces}", "-m", "{model}", "--out", "{out}"],
    "evaluate/missing-root": ["evaluate", "-p", "pairs", "-r", "{tmp}/none", "-m", "{model}", "--out", "{out}"],
    "evaluate/batch-0": ["evaluate", "-p", "pairs", "-r", "{pairs}", "-m", "{model}", "--out", "{out}",
                         "--batch-size", "0"],
    "evaluate/bad-option": ["evaluate", "-p", "pairs", "-r", "{pairs}", "-m", "{model}", "--out", "{out}",
                            "--set", "probe_sizes=[16, x]"],
    "evaluate/device": ["evaluate", "-p", "pairs", "-r", "{pairs}", "-m", "{model}", "--out", "{out}",
                        "--device", "tpu"],
    "report/missing-result": ["report", "{tmp}/none.json", "--out", "{out}"],
    "report/not-json": ["report", "{img}", "--out", "{out}"],
    "report/out-under-file": ["report", "{tmp}/none.json", "--out", "{file}/r"],
    # GAN / synthesize
    "train-gan/batch-0": ["train-gan", "--set", "data.batch_size=0", "--set", "run.out_dir={out}"],
    "train-gan/missing-hr": ["train-gan", "--hr", "{tmp}/none", "--lr-pool", "{faces}",
                             "--set", "run.out_dir={out}", "--set", "run.device=cpu"],
    "synthesize/missing-input": ["synthesize", "{tmp}/none", "{out}", "-d", "bicubic"],
    "synthesize/unknown-degrader": ["synthesize", "{faces}", "{out}", "-d", "nope"],
    "synthesize/inside-input": ["synthesize", "{faces}", "{faces}/lr", "-d", "bicubic"],
    "synthesize/jpeg-quality": ["synthesize", "{faces}", "{out}", "-d", "bicubic", "--set", "jpeg_quality=0"],
    "synthesize/bad-seed": ["synthesize", "{faces}", "{out}", "-d", "bicubic", "--seed", "x"],
    # demo / export
    "demo/bad-profile": ["demo", "--profile", "huge", "--out", "{out}"],
    "demo/bad-value": ["demo", "--out", "{out}", "--set", "workers=0"],
    "export/missing-model": ["export", "{tmp}/none.pt", "--out", "{out}"],
    "export/bad-format": ["export", "{model}", "--out", "{out}", "--formats", "tflite"],
    # gallery
    "gallery/enrol-missing-input": ["gallery", "enrol", "{tmp}/none", "-m", "{model}", "--aligned",
                                    "--out", "{out}/g.npz"],
    "gallery/enrol-out-under-file": ["gallery", "enrol", "{faces}", "-m", "{model}", "--aligned",
                                     "--out", "{file}/g.npz"],
    "gallery/enrol-fpir": ["gallery", "enrol", "{faces}", "-m", "{model}", "--aligned", "--fpir", "2",
                           "--out", "{out}/g.npz"],
    "gallery/search-missing-gallery": ["gallery", "search", "{tmp}/none.npz", "{faces}", "-m", "{model}",
                                       "--out", "{out}/r.json"],
    "gallery/search-top-k": ["gallery", "search", "{gallery}", "{faces}", "-m", "{model}", "--aligned",
                             "--set", "top_k=0", "--out", "{out}/r.json"],
    "gallery/search-out-under-file": ["gallery", "search", "{gallery}", "{faces}", "-m", "{model}",
                                      "--aligned", "--out", "{file}/r.json"],
    "gallery/add-missing-gallery": ["gallery", "add", "{tmp}/none.npz", "{faces}", "-m", "{model}",
                                    "--out", "{out}/g.npz"],
    "gallery/remove-missing": ["gallery", "remove", "{tmp}/none.npz", "x", "--out", "{out}/g.npz"],
    "gallery/calibrate-missing": ["gallery", "calibrate", "{gallery}", "{tmp}/none", "-m", "{model}",
                                  "--aligned", "--out", "{out}/g.npz"],
    "gallery/info-not-gallery": ["gallery", "info", "{img}"],
    # identify
    "identify/missing-gallery": ["identify", "{img}", "--gallery", "{tmp}/none.npz", "-m", "{model}",
                                 "--out", "{out}/r.json"],
    "identify/every-0": ["identify", "{img}", "--gallery", "{gallery}", "-m", "{model}", "--every", "0",
                         "--out", "{out}/r.json"],
    # no subcommand / unknown option
    "top/unknown-command": ["nope"],
    "top/unknown-option": ["embed", "{faces}", "--out", "{out}/e", "--bogus"],
}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from ranface.config import TrainConfig, load_config
    from ranface.train.recognition import run_recognition

    root = tmp_path_factory.mktemp("badcli")
    faces = make_face_folder(str(root / "faces"), n_ids=2, per_id=3)
    one = make_face_folder(str(root / "one"), n_ids=1, per_id=4)
    quiet = [s for s in SMALL if s != "--set"]
    run_recognition(load_config(TrainConfig, None, quiet + [f"data.train={faces}", f"run.out_dir={root}/runs",
                                                            "run.name=hr", "data.batch_size=2"]))
    model = str(root / "runs" / "hr" / "model.pt")
    gallery = str(root / "g.npz")
    assert main(["gallery", "enrol", faces, "-m", model, "--aligned", "--out", gallery]) == 0
    pairs = root / "pairs"
    (pairs / "images").mkdir(parents=True)
    (pairs / "pairs.txt").write_text("2 1\nA 1 2\nA 1 B 1\nC 1 2\nC 1 D 1\n")
    (root / "file").write_text("a regular file")
    bomb = "optim: {lr: [&a0 [" + ", ".join(["x"] * 10) + "]"
    for i in range(1, 9):
        bomb += f", &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]"
    (root / "bomb.yaml").write_text(bomb + "]}\n")
    (root / "nan.yaml").write_text("optim:\n  lr: .nan\n")
    return {"faces": faces, "one": one, "img": os.path.join(faces, "id000", "000.png"), "model": model,
            "gallery": gallery, "pairs": str(pairs), "file": str(root / "file"),
            "bomb": str(root / "bomb.yaml"), "nan": str(root / "nan.yaml")}


def _tree(folder: str):
    out = set()
    for dirpath, dirnames, files in os.walk(folder):
        out.update(os.path.join(dirpath, n) for n in dirnames + files)
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_exit_2_one_line_no_output(case, env, tmp_path, capsys):
    values = dict(env, tmp=str(tmp_path), out=str(tmp_path / "out"))
    argv = [a.format(**values) for a in CASES[case]]
    before = _tree(str(tmp_path)) | _tree(os.path.dirname(env["faces"]))
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse
        rc = exc.code
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert rc == 2, (case, captured.err)
    assert len(lines) == 1 and "Traceback" not in captured.err, (case, captured.err)
    assert lines[0].startswith("ranface"), lines[0]
    if os.environ.get("SHOW_ERRORS"):
        print(f"\n{case}: {lines[0][:230]}", file=sys.__stdout__)
    assert not os.path.exists(tmp_path / "out"), (case, _tree(str(tmp_path / "out")))
    after = _tree(str(tmp_path)) | _tree(os.path.dirname(env["faces"]))
    assert after == before, (case, sorted(after ^ before))
