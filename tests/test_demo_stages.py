"""The demo's stage cache and its report helpers, without training anything."""
import json
import os

import pytest

from ranface.demo import DemoConfig, Stages, resolve
from ranface.demo_report import TARGETS, band_section, target_status, targets_table


def test_stage_reused_with_same_settings_and_rerun_clean_with_new_ones(tmp_path, capsys):
    out = tmp_path / "work"
    calls = []

    def work(tag):
        def fn():
            out.mkdir(exist_ok=True)
            (out / f"{tag}.txt").write_text(tag)
            calls.append(tag)
            return {"tag": tag}
        return fn

    st = Stages(str(tmp_path))
    assert st.run("train", {"steps": 1}, work("a"), outputs=[str(out)]) == {"tag": "a"}
    key_a = st.key("train")
    assert Stages(str(tmp_path)).run("train", {"steps": 1}, work("b"), outputs=[str(out)]) == {"tag": "a"}
    assert calls == ["a"] and "reused" in capsys.readouterr().out
    # new settings: the old outputs (a checkpoint of another configuration) are removed first
    st2 = Stages(str(tmp_path))
    assert st2.run("train", {"steps": 2}, work("c"), outputs=[str(out)]) == {"tag": "c"}
    assert sorted(os.listdir(out)) == ["c.txt"] and st2.key("train") != key_a


def test_interrupted_stage_keeps_its_outputs_when_resumed_with_same_settings(tmp_path):
    out = tmp_path / "run"
    st = Stages(str(tmp_path))

    def crash():
        out.mkdir()
        (out / "ckpt-0001.pt").write_text("x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        st.run("train", {"steps": 5}, crash, outputs=[str(out)])
    seen = []
    st.run("train", {"steps": 5}, lambda: seen.append(sorted(os.listdir(out))) or {}, outputs=[str(out)])
    assert seen == [["ckpt-0001.pt"]]  # resumed, not wiped
    # the same interrupted stage restarted with other settings starts clean
    with pytest.raises(KeyboardInterrupt):
        Stages(str(tmp_path)).run("other", {"v": 1}, lambda: (_ for _ in ()).throw(KeyboardInterrupt),
                                  outputs=[str(out)])
    Stages(str(tmp_path)).run("train", {"steps": 6}, lambda: seen.append(os.path.exists(out)) or {},
                              outputs=[str(out)])
    assert seen[-1] is False


def _result(correct_full, correct_16, folds):
    def d(c):
        return {"acc": sum(x == "1" for x in c) / len(c), "acc_std": 0.0, "correct": c}
    return {"metrics": {"full": d(correct_full), "hr-lr": {"16": d(correct_16)}, "sizes": [16]},
            "scored_pairs": {"lines": list(range(len(folds))), "folds": folds}}


def test_targets_table_hand_computed():
    folds = [0] * 100 + [1] * 100
    hr = _result("1" * 200, "1" * 100 + "0" * 100, folds)  # HR: full 100 %, 16 px 50 %
    mr = _result("1" * 199 + "0", "1" * 180 + "0" * 20, folds)  # MR: full 99.5 %, 16 px 90 %
    lr = _result("1" * 198 + "00", "1" * 190 + "0" * 10, folds)  # LR: full 99 %, 16 px 95 %
    md, recs = targets_table({"HR": hr, "MR (x)": mr, "LR (x)": lr}, "MR (x)", "LR (x)", n_boot=200)
    by = {r["target"]: r for r in recs}
    assert set(by) == {"MR >= HR + 3 at 16 px", "MR >= HR - 0.5 at full resolution", "MR >= LR at full resolution",
                       "MR >= LR - 1 at 16 px"}  # no 12-px result: its targets are left out
    assert by["MR >= HR + 3 at 16 px"]["diff"] == pytest.approx(40.0)  # MR 90 % - HR 50 %
    assert by["MR >= HR + 3 at 16 px"]["status"] == "met, interval clear"
    assert by["MR >= HR - 0.5 at full resolution"]["diff"] == pytest.approx(-0.5)
    assert by["MR >= HR - 0.5 at full resolution"]["status"].startswith("met")
    assert by["MR >= LR at full resolution"]["diff"] == pytest.approx(0.5)
    assert by["MR >= LR - 1 at 16 px"]["diff"] == pytest.approx(-5.0)
    assert by["MR >= LR - 1 at 16 px"]["status"].startswith("missed")
    assert all(r["lo"] <= r["diff"] <= r["hi"] for r in recs)
    assert "MR >= HR + 3 at 16 px" in md and len(TARGETS) == 6
    # a difference equal to its bound meets it, whatever the rounding of the fold means
    assert target_status(-0.5000000001, -1.0, 0.1, -0.5) == "met"
    assert target_status(3.2, 3.0, 5.0, 3.0) == "met, interval clear"
    assert target_status(-0.51, -1.0, 0.1, -0.5) == "missed, interval reaches it"
    assert target_status(1.0, -1.0, 2.9, 3.0) == "missed"


def test_band_section_reads_pool_manifest_and_twin_manifests(tmp_path):
    pool = tmp_path / "lr_pool"
    pool.mkdir()
    rows = ["file,eye_mouth_px"] + [f"f{i}.jpg,{v}" for i, v in enumerate([10.0, 12.0, 16.0, 29.0])]
    (pool / "manifest.csv").write_text("\n".join(rows) + "\n")
    twin = tmp_path / "lr_bicubic"
    twin.mkdir()
    (twin / "synth_manifest.json").write_text(json.dumps(
        {"degrader_info": {"band": {"widths_px": [25, 76], "eye_mouth_px": [9.88, 30.05], "template": "dlib"}}}))
    lines, fig = band_section(str(tmp_path), ["bicubic", "mrgan"], [16, 12], "dlib", str(tmp_path / "band.png"))
    text = "\n".join(lines)
    assert "4 faces" in text and "10.0 .. 29.0" in text and "9.9 .. 30.1" in text
    assert "| probe 16 px | width 16 px | 6.3 |" in text  # 16 * 0.3954
    assert fig and os.path.getsize(fig) > 1000


def test_demo_profiles_cover_the_targets():
    """Both profiles evaluate the probe sizes the targets are stated at, HR-vs-LR, and train
    the MR model with LR twins in the top stream (the measured recipe)."""
    for name in ("quick", "default"):
        cfg = resolve(DemoConfig(profile=name, data_root="/nonexistent"))
        assert {16, 12} <= set(cfg.probe_sizes) and "hr-lr" in cfg.eval_modes
        assert cfg.mr_twin_prob == 0.5 and cfg.degraders[0] == "bicubic"
    # an explicit setting wins over the profile
    assert resolve(DemoConfig(profile="default", data_root="/x", mr_twin_prob=0.0)).mr_twin_prob == 0.0


@pytest.mark.parametrize("over,match", [({"degraders": []}, "at least one"),
                                        ({"mr_degraders": ["nope"]}, "not in degraders"),
                                        ({"mr_twin_prob": 1.5}, "probability"),
                                        ({"eval_modes": ["x"]}, "eval_modes"),
                                        ({"profile": "huge"}, "profile"),
                                        ({"mrgan_codec_p": 2.0}, "mrgan_codec_p must be a probability"),
                                        ({"mrgan_codec_quality": [90, 30]}, "mrgan_codec_quality must be")])
def test_demo_config_errors(over, match):
    from ranface.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        resolve(DemoConfig(**{"data_root": "/nonexistent", **over}))


def test_stage_keys_differ_by_name_for_equal_settings(tmp_path):
    st = Stages(str(tmp_path))
    st.run("synth_bicubic", {"v": 1}, lambda: {})
    st.run("synth_mrgan", {"v": 1}, lambda: {})
    assert st.key("synth_bicubic") != st.key("synth_mrgan")


def test_table1_rows_and_markdown_from_results():
    from ranface.pipelines.table1 import table1_markdown, table1_rows

    def res(acc):
        return {"metrics": {"full": {"acc": 0.99}, "hr-lr": {"16": {"acc": acc}, "12": {"acc": acc - 0.1}}}}

    realism = [{"options": {"label": "bicubic"}, "metrics": {"frechet_distance": 0.02, "frechet_ci95": [0.018, 0.023],
                                                             "domain_accuracy": 0.8, "domain_chance_ci95": [0.45, 0.55],
                                                             "identity_cosine": 0.9}},
               {"options": {"label": "second-order"}, "metrics": {
                   "frechet_distance": 0.01, "domain_accuracy": 0.6,
                   "frechet_vs_reference": {"diff": -0.01, "ci95": [-0.012, -0.008], "reference": "bicubic"}}}]
    rows = table1_rows(["bicubic", "mrgan"], {"LR (bicubic)": res(0.9), "MR (bicubic)": res(0.92),
                                              "LR (mrgan)": res(0.85)}, realism, [16, 12])
    assert [r["degrader"] for r in rows] == ["bicubic", "mrgan", "second-order"]
    assert rows[0]["LR"]["16"] == 0.9 and rows[0]["MR"]["12"] == pytest.approx(0.82) and "MR" not in rows[1]
    md = table1_markdown(rows, [16, 12])
    assert "Fréchet − bicubic [95% paired]" in md
    assert "| bicubic | 0.0200 [0.0180, 0.0230] | — | 0.800 [0.450, 0.550] | 0.900 | 90.00 | 80.00 | 92.00 | 82.00 |" in md
    assert "| mrgan | n/a | — | n/a | n/a | 85.00 | 75.00 | — | — |" in md
    assert "| second-order | 0.0100 | -0.0100 [-0.0120, -0.0080] | 0.600 | n/a | — | — | — | — |" in md

    # held-out probes: extra LR columns at their own sizes, named by the probe's degrader
    def held(acc):
        return {"metrics": {"sizes": [16], "probe": {"degrader": "second-order"}, "hr-lr": {"16": {"acc": acc}}}}

    rows = table1_rows(["bicubic", "mrgan"], {"LR (bicubic)": res(0.9), "LR (mrgan)": res(0.85)}, realism[:1],
                       [16, 12], heldout={"LR (bicubic)": held(0.7), "LR (mrgan)": held(0.75), "HR": held(0.6)})
    assert rows[1]["LR_heldout"] == {"16": 0.75} and rows[0]["heldout_probe"] == "second-order"
    md = table1_markdown(rows, [16, 12])
    assert md.splitlines()[0].endswith("| LR model 16 px (second-order probes) |")
    assert "| mrgan | n/a | — | n/a | n/a | 85.00 | 75.00 | — | — | 75.00 |" in md


def test_table1_over_seeds_aggregates_accuracy_pairs_and_realism(tmp_path):
    from ranface.eval.metrics import seeds_paired_bootstrap_difference
    from ranface.pipelines.table1 import write_table1_seeds

    lines = [1, 2, 3, 4]

    def res(correct, held=False):
        c = ["1" if x else "0" for x in correct]
        m = {"sizes": [16], "hr-lr": {"16": {"acc": sum(correct) / 4, "correct": c}}}
        if held:
            m["probe"] = {"degrader": "second-order"}
        return {"metrics": m, "scored_pairs": {"lines": lines, "folds": [0, 0, 1, 1]}}

    def realism(label, fd, ref=None):
        m = {"frechet_distance": fd, "domain_accuracy": 0.7}
        if ref is not None:
            m["frechet_vs_reference"] = {"diff": ref, "reference": "bicubic"}
        return {"options": {"label": label}, "metrics": m}

    # seed 0: mrgan right on one more pair than bicubic; seed 1: one fewer
    runs = {0: {"results": {"LR (bicubic)": res([1, 1, 0, 0]), "LR (mrgan)": res([1, 1, 1, 0])},
                "heldout": {"LR (bicubic)": res([1, 0, 0, 0], True), "LR (mrgan)": res([1, 1, 0, 0], True)},
                "realism": [realism("bicubic", 0.02), realism("mrgan", 0.01, -0.01)]},
            1: {"results": {"LR (bicubic)": res([1, 1, 0, 0]), "LR (mrgan)": res([1, 0, 0, 0])},
                "heldout": {"LR (bicubic)": res([1, 0, 0, 0], True), "LR (mrgan)": res([1, 1, 1, 0], True)},
                "realism": [realism("bicubic", 0.04), realism("mrgan", 0.02, -0.02)]}}
    out = write_table1_seeds(str(tmp_path), ["bicubic", "mrgan"], runs, [16])
    agg = out["seeds_summary"]
    assert agg["accuracy"]["LR (mrgan)"] == {"16": [0.75, 0.25], "second-order:16": [0.5, 0.75]}
    d = agg["paired"]["LR (mrgan)"]["16"]
    assert d["per_seed"] == [0.25, -0.25] and d["diff"] == 0.0 and d["n_positive"] == 1
    ref = seeds_paired_bootstrap_difference([[1, 1, 1, 0], [1, 0, 0, 0]], [[1, 1, 0, 0], [1, 1, 0, 0]],
                                            folds=[0, 0, 1, 1])
    assert (d["lo"], d["hi"]) == (ref["lo"], ref["hi"])
    assert agg["paired"]["LR (mrgan)"]["second-order:16"]["per_seed"] == [0.25, 0.5]
    assert agg["realism"]["mrgan"]["frechet_minus_reference"] == [-0.01, -0.02]
    md = open(tmp_path / "seeds.md").read()
    # mean ± sd (ddof 1) over seeds, by hand: 75 and 25 -> 50.00 ± 35.36
    assert "| LR (mrgan) | 50.00 ± 35.36 | 62.50 ± 17.68 |" in md
    assert "16 px (second-order probes)" in md and "(1/2 > 0; +25.0 -25.0)" in md
    assert "| mrgan | 0.0150 ± 0.0071 | -0.0150 ± 0.0071 | 0.700 ± 0.000 | — |" in md
    assert json.load(open(tmp_path / "seeds.json"))["seeds"] == [0, 1]
    # a seed that scored other pairs gets no paired comparison
    runs[1]["results"]["LR (mrgan)"]["scored_pairs"] = {"lines": [9, 9, 9, 9], "folds": [0, 0, 1, 1]}
    agg = write_table1_seeds(str(tmp_path), ["bicubic", "mrgan"], runs, [16])["seeds_summary"]
    assert "16" not in agg["paired"]["LR (mrgan)"] and "second-order:16" in agg["paired"]["LR (mrgan)"]


def test_every_chain_and_eval_stage_is_keyed_by_the_seed(tmp_path):
    """A rerun with another seed in the same folder must not reuse the other seed's models."""
    from ranface.pipelines.table1 import evaluate_models, run_degrader_chain

    class Recorder:
        def __init__(self):
            self.settings = {}

        def run(self, name, settings, fn, outputs=()):
            self.settings[name] = settings
            return {"run_dir": str(tmp_path / name), "result": ""}

        def key(self, name):
            return name

    cfg = resolve(DemoConfig(profile="quick", seed=3, data_root="/nonexistent"))
    st = Recorder()
    chain = run_degrader_chain(cfg, str(tmp_path), st, "faces", "pool", "hr", {"x": 1})
    evaluate_models(cfg, str(tmp_path), st, chain["models"], chain["model_keys"], "test", "pairs", {})
    assert {"expert", "gan", "lr_mrgan", "mr_bicubic", "eval_lr_mrgan_second_order"} <= set(st.settings)
    assert all(s.get("seed") == 3 for s in st.settings.values()), \
        [n for n, s in st.settings.items() if s.get("seed") != 3]


def test_seeds_are_validated_and_refused_by_the_demo():
    from ranface.demo import run_demo
    from ranface.errors import ConfigError

    with pytest.raises(ConfigError, match="distinct"):
        resolve(DemoConfig(profile="quick", seeds=[1, 1]))
    with pytest.raises(ConfigError, match="table1"):
        run_demo(DemoConfig(profile="quick", seeds=[0, 1], data_root="/nonexistent"))


def test_heldout_probe_must_be_held_out():
    from ranface.errors import ConfigError

    with pytest.raises(ConfigError, match="would not be held out"):
        resolve(DemoConfig(profile="quick", degraders=["bicubic", "second-order"]))
    with pytest.raises(ConfigError, match="heldout_probe_sizes"):
        resolve(DemoConfig(profile="quick", heldout_probe_sizes=[]))
    assert resolve(DemoConfig(profile="quick", heldout_probe="", heldout_probe_sizes=[])).heldout_probe == ""


def test_table1_command_refuses_missing_inputs_in_one_line(tmp_path, capsys):
    from ranface.cli import main

    (tmp_path / "faces").mkdir()
    rc = main(["table1", "--faces", str(tmp_path / "faces"), "--lr-pool", str(tmp_path / "nope"),
               "--test-faces", str(tmp_path / "faces"), "--pairs", str(tmp_path / "pairs.txt"),
               "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "nope" in err[0] and "real LR pool" in err[0]
    assert not (tmp_path / "out").exists()
