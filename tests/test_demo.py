"""`ranface demo --profile quick` end to end on the bundled real data (the CI-sized run)."""
import json
import math
import os

import pytest

from conftest import require_shared
from ranface.cli import main

SECTIONS = ("## Verification accuracy, HR-vs-LR", "## Realism of synthesized LR faces", "## LR-vs-LR", "## TAR@FAR", "## Accuracy vs probe pixels",
            "## ROC curves", "## Synthesized faces", "## Translation gate W", "## Stages", "## Models")


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_quick_demo_end_to_end(tmp_path, capsys):
    require_shared("lfw-gray", "pairs.txt")
    out = str(tmp_path / "demo")
    assert main(["demo", "--profile", "quick", "--out", out, "--set", "progress=false"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    report = open(res["report"]).read()
    for s in SECTIONS:
        assert s in report, s
    html = open(os.path.join(out, "report", "report.html")).read()
    assert html.count("data:image/png;base64") >= 4
    summary = json.load(open(os.path.join(out, "report", "summary.json")))
    assert set(summary) >= {"HR", "LR (mrgan)", "MR (mrgan)", "LR (bicubic)", "MR (bicubic)",
                            "MR (mrgan, no translator)"}
    for label, row in summary.items():
        assert all(math.isfinite(v) for v in row.values()), label
    # a wrong weight import or alignment shows here
    assert summary["HR"]["full"] > 0.90
    # rerun: every stage reused
    assert main(["demo", "--profile", "quick", "--out", out, "--set", "progress=false"]) == 0
    assert "running" not in capsys.readouterr().out.replace("[demo] report", "")
