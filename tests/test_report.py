"""Reports: result.json / result.md / PNG plots of one run, the ``ranface report``
comparison of several, and the ``evaluate`` / ``report`` command lines."""
import json
import os

import pytest

from ranface.cli import main
from ranface.errors import DataError
from ranface.eval.protocols import get_protocol
from ranface.eval.comparison import compare_results, write_comparison
from ranface.eval.report import (far_label, fmt_pct, fmt_rate, md_table, method_label, plot_curves,
                                 write_result)

PNG = b"\x89PNG\r\n\x1a\n"


def fake_ijbc(source, tars, n_imp=1000):
    """A hand-written ijbc result (as `ranface evaluate` writes it)."""
    fars = ["1e-7", "0.001", "0.1"]
    tar = {f: {"tar": t, "threshold": 0.3, "achieved_far": None, "false_accepts": None,
               "measurable": t is not None} for f, t in zip(fars, tars)}
    return {"format": "ranface-eval/1", "protocol": "ijbc",
            "model": {"source": source, "backbone": "iresnet34"}, "data_root": "/data/ijbc",
            "options": {}, "counts": {"scored": 1010, "skipped": 2},
            "metrics": {"fars": fars, "tar": tar, "n_genuine": 10, "n_impostor": n_imp},
            "curves": {"roc": {"x": [0, 0.001, 0.1, 1.0], "y": [0, 0.4, 0.7, 1.0],
                               "x_label": "FAR", "y_label": "TAR", "log_x": True,
                               "compare": True}},
            "skipped_examples": ["a.jpg: not a decodable image"]}


def test_formatting_helpers():
    assert fmt_pct(0.98612) == "98.61"
    assert fmt_pct(0.5, 0.0125) == "50.00 ± 1.25"
    assert fmt_pct(None) == fmt_rate(None) == "n/m"
    assert fmt_rate(0.32734) == "0.3273"
    assert far_label(1e-7) == "1e-7" and far_label(0.1) == "0.1" and far_label(1e-3) == "0.001"
    t = md_table(["a", "b|c"], [[1, "x|y"]])
    assert t == "| a | b\\|c |\n|---|---|\n| 1 | x\\|y |\n"
    assert method_label({"model": {"source": "/runs/hr-0003/model.pt"}}) == "hr-0003"
    assert method_label({"model": {"source": "/runs/mr-1/checkpoints/ckpt-500.pt"}}) == \
        "mr-1/ckpt-500.pt"
    assert method_label({"model": {"source": "/data/models/faceapi-resnet29"}}) == \
        "faceapi-resnet29"


def test_write_result_files(tmp_path):
    proto = get_protocol("ijbc")
    res = fake_ijbc("/runs/a/model.pt", [None, 0.25, 0.75])
    res["curves"]["roc"]["y"][1] = float("nan")  # JSON must stay valid
    files = write_result(proto, res, str(tmp_path))
    data = json.load(open(files["json"]))
    assert data["format"] == "ranface-eval/1" and data["counts"] == {"scored": 1010, "skipped": 2}
    assert data["curves"]["roc"]["y"][1] == "nan"
    assert data["files"]["plots"] == [str(tmp_path / "roc.png")]
    md = open(files["markdown"]).read()
    assert "| Method | 1e-7 | 0.001 | 0.1 |" in md
    assert "| a | n/m | 0.2500 | 0.7500 |" in md
    assert "scored: 1010, skipped: 2" in md and "a.jpg: not a decodable image" in md
    assert "![roc](roc.png)" in md
    assert open(tmp_path / "roc.png", "rb").read(8) == PNG
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_plot_curves_writes_png(tmp_path):
    c = {"x": [8, 16, 32], "y": [0.6, 0.8, 0.9], "y_err": [0.01, 0.02, 0.01],
         "x_label": "px", "y_label": "acc", "log_x": False, "hline": 0.95}
    p = plot_curves({"hr-lr": c, "lr-lr": dict(c, y_err=None)}, str(tmp_path / "p.png"))
    assert open(p, "rb").read(8) == PNG
    with pytest.raises(ValueError):
        plot_curves({}, str(tmp_path / "q.png"))


def test_compare_results_merges_tables(tmp_path):
    paths = []
    for k, (src, tars) in enumerate([("/runs/hr/model.pt", [0.01, 0.2, 0.6]),
                                     ("/runs/mr/model.pt", [None, 0.3, 0.7]),
                                     ("/runs/mr/model.pt", [0.02, 0.31, 0.71])]):
        p = tmp_path / f"r{k}.json"
        p.write_text(json.dumps(fake_ijbc(src, tars)))
        paths.append(str(p))
    out = tmp_path / "cmp"
    res = write_comparison(paths, str(out))
    t = res["tables"]["ijbc"]
    assert t["columns"] == ["TAR@1e-7", "TAR@0.001", "TAR@0.1"]
    assert [r["label"] for r in t["rows"]] == ["hr", "mr", "mr #2"]
    assert t["rows"][1]["values"]["TAR@1e-7"] == "n/m"
    md = open(out / "report.md").read()
    assert "| Method | TAR@1e-7 | TAR@0.001 | TAR@0.1 | scored |" in md
    assert "| hr | 0.0100 | 0.2000 | 0.6000 | 1010 |" in md
    assert open(out / "ijbc_roc.png", "rb").read(8) == PNG
    saved = json.load(open(out / "report.json"))
    assert saved["format"] == "ranface-report/1" and len(saved["tables"]["ijbc"]["rows"]) == 3
    lab = compare_results(paths[:2], ["HR", "RAN"])
    assert [r["label"] for r in lab["tables"]["ijbc"]["rows"]] == ["HR", "RAN"]
    with pytest.raises(DataError, match="2 labels for 1 results"):
        compare_results(paths[:1], ["a", "b"])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "other"}))
    with pytest.raises(DataError, match="bad.json: not a ranface evaluation result"):
        compare_results([str(bad)])
    broken = tmp_path / "broken.json"
    broken.write_text("{\n  \"format\": ")
    with pytest.raises(DataError, match=r"broken.json \(line 2\): not valid JSON"):
        compare_results([str(broken)])


# ----------------------------------------------------------------------------- CLI
def test_cli_evaluate_dry_run_and_list(capsys):
    assert main(["evaluate", "--protocol", "pairs", "--dry-run", "--set", "probe_sizes=[32,16]",
                 "--set", "flip=false"]) == 0
    out = capsys.readouterr().out
    assert "probe_sizes: [32, 16]" in out and "flip: false" in out
    assert main(["evaluate", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ("pairs", "bin", "ijbc", "ijbc-tiny", "ijbc-tiny-templates", "tinyface",
                 "scface", "survface"):
        assert name in out
    lines = out.strip().splitlines()
    assert all("Follows: " in ln and not ln.endswith("Follows: ranface") for ln in lines)
    prov = {ln.split()[0]: ln for ln in lines}
    assert "insightface" in prov["ijbc"] and "AdaFace" in prov["tinyface"]
    assert "covariate" in prov["ijbc-tiny"] and "Cheng et al. 2018" in prov["survface"]


def test_cli_errors_exit_2(tmp_path, capsys):
    assert main(["evaluate", "--protocol", "tinyface", "--root", str(tmp_path),
                 "--model", "x.pt"]) == 2
    err = capsys.readouterr().err
    assert "not a TinyFace root" in err and "Gallery_Distractor/" in err
    assert main(["evaluate", "--protocol", "nope", "--dry-run"]) == 2
    assert "unknown protocol" in capsys.readouterr().err
    assert main(["evaluate", "--protocol", "pairs", "--set", "probe_size=1", "--dry-run"]) == 2
    assert "unknown config key" in capsys.readouterr().err


def test_cli_evaluate_and_report_end_to_end(tmp_path, capsys):
    """model.pt of a small MobileFaceNet -> ranface evaluate pairs -> ranface report."""
    import torch

    from ranface.inference import model_package
    from ranface.models import create_backbone
    from test_protocols import PEOPLE, crop, lfw, save

    torch.manual_seed(0)
    bb = create_backbone("mobilefacenet", embedding_size=32)
    run = tmp_path / "run-1"
    run.mkdir()
    torch.save(model_package(bb, "mobilefacenet", {"embedding_size": 32}), str(run / "model.pt"))
    data = tmp_path / "faces"
    lines = ["1 2"]
    for k, person in enumerate(PEOPLE[:2]):
        for i in (1, 2):
            save(crop(lfw(person, i)), str(data / person / f"{person}_{i:04d}.png"))
    lines += [f"{PEOPLE[0]} 1 2", f"{PEOPLE[1]} 1 2", f"{PEOPLE[0]} 1 {PEOPLE[1]} 2",
              f"{PEOPLE[1]} 1 {PEOPLE[0]} 2"]
    (data / "pairs.txt").write_text("\n".join(lines) + "\n")
    assert main(["evaluate", "-p", "pairs", "--root", str(data), "--model", str(run / "model.pt"),
                 "--device", "cpu", "--set", "ext=png", "--set", "probe_sizes=[16]",
                 "--set", "fars=[0.5]", "--set", "modes=[hr-lr]", "--set", "flip=false",
                 "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    res_dir = run / "eval" / "pairs"  # default: <run dir>/eval/<protocol>
    assert out["out"] == str(res_dir) and out["counts"]["scored"] == 4
    res = json.load(open(res_dir / "result.json"))
    assert res["model"]["backbone"] == "mobilefacenet" and res["options"]["ext"] == "png"
    assert res["data_root"] == str(data) and res["counts"]["skipped"] == 0
    assert 0.0 <= res["metrics"]["hr-lr"]["16"]["acc"] <= 1.0
    assert main(["report", str(res_dir / "result.json"), str(res_dir / "result.json"),
                 "--out", str(tmp_path / "cmp")]) == 0
    md = open(tmp_path / "cmp" / "report.md").read()
    assert "| run-1 |" in md and "| run-1 #2 |" in md and "full acc" in md
    assert os.path.exists(tmp_path / "cmp" / "pairs_acc-vs-pixels_hr-lr.png")
