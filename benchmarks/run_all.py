"""Run every benchmark of ranface as a subprocess and print ONE table.

Sub-benchmarks: ``train_step.py`` (HR step of IResNet-34, fp32 eager vs the fast
paths: bf16 autocast, channels_last, torch.compile), ``eval_pairs.py`` (the ``pairs``
evaluation: sequential vs decoding beside the forward pass vs the fused model vs
precision=auto), ``forward.py`` (the inference forward pass alone: NCHW vs channels_last,
as trained vs BN/scale folded),
``mtcnn_crowd.py`` (MTCNN on the crowd photos, before/after issue 16, with agreement),
``stage_steps.py`` (HR / LR / MR step, ratios to HR), ``gan.py`` (MR-GAN synthesis and
training step), ``eval_far.py`` (exact TAR@FAR: streaming vs batch vs scikit-learn;
template-pair scoring), ``search.py`` when present (gallery search; ``identify`` on a
crowd photo), and two measured here: ``prepare`` faces/s on real LFW photos and
ResNet-29 (imported face-api model) embedding throughput, flip-sum on and off.

Every figure is a median over repeats with its spread (min..max): over the timed
windows the sub-benchmark reports, or, for benchmarks run several times here
(``runs`` > 1), over those runs. Ratios come from the same process, measured side by
side (interleaved where the sub-benchmark does so). A sub-benchmark that fails or
times out becomes a FAILED row; the others still run.

    python benchmarks/run_all.py --quick          # a few minutes on 2 CPU cores
    python benchmarks/run_all.py                  # small default sizes (~15 min on 2 cores)
    python benchmarks/run_all.py --full           # each benchmark's own (paper-scale) sizes
    python benchmarks/run_all.py --quick --only eval_far,embed --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


@dataclass
class Figure:
    """One measured figure of one run; ``windows`` are the per-repeat values the
    sub-benchmark printed (empty when it printed only a median)."""

    bench: str
    name: str
    value: float
    unit: str
    windows: List[float] = field(default_factory=list)
    ratio: str = ""


@dataclass
class Bench:
    name: str
    argv: Callable[[str], Optional[List[str]]]  # size ('quick' | 'default' | 'full') -> argv or None
    parse: Callable[[str, str], List[Figure]]  # (bench name, stdout) -> figures
    runs: Dict[str, int] = field(default_factory=lambda: {"quick": 1, "default": 1, "full": 1})
    timeout: Dict[str, int] = field(default_factory=lambda: {"quick": 240, "default": 1200, "full": 7200})


def _py(script: str, *args: str) -> List[str]:
    return [sys.executable, os.path.join(HERE, script), *args]


def _num(s: str) -> float:
    return float(s.replace(",", ""))


# ---------------------------------------------------------------------------- parsers


def parse_train_step(bench: str, out: str) -> List[Figure]:
    figs = []
    for ln in out.splitlines():
        m = re.match(r"^(fp32 eager|\S.*?)\s{2,}([\d.]+)\s+([\d.]+)\s+(nan|[\d.]+)\s*$", ln)
        if m:
            figs.append(Figure(bench, f"HR step, {m.group(1)}", _num(m.group(2)), "img/s",
                               ratio=f"x{float(m.group(3)):.2f} vs fp32 eager"))
    return figs


def parse_eval_pairs(bench: str, out: str) -> List[Figure]:
    figs = []
    for ln in out.splitlines():
        m = re.match(r"^(sequential fp32|pipelined \S.*?)\s{2,}([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)%"
                     r"\s+(yes|NO)\s+(\S+)$", ln)
        if m:
            figs.append(Figure(bench, f"pairs evaluation, {m.group(1)}", _num(m.group(3)), "images/s",
                               ratio=f"x{float(m.group(4)):.2f} vs sequential fp32; full acc {m.group(5)}%, "
                                     f"same decisions as sequential: {m.group(6)}, max |dAUC| {m.group(7)}"))
    return figs


def parse_mtcnn(bench: str, out: str) -> List[Figure]:
    figs = []
    for ln in out.splitlines():
        m = re.match(r"^(before|zero-skip|now|new-only)\s+([\d.]+)\s+([\d.]+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+) \(\s*(\d+) b\)"
                     r"\s+(\d+) \(\s*(\d+) b\)\s+([\d.]+) /\s+([\d.]+)\s+([\d.]+)\s+(yes|no)$", ln)
        if m:
            g = m.groups()
            figs.append(Figure(bench, f"MTCNN crowd photos, {g[0]}", _num(g[1]), "photos/s",
                               ratio=f"x{float(g[2]):.2f} vs before; {g[3]} faces ({g[4]} in LR band), "
                                     f"{g[6]} only before ({g[7]} in band), {g[8]} only new; landmark "
                                     f"error median {g[10]} px, p95 {g[11]} px; identical: {g[13]}"))
    return figs


def parse_stage_steps(bench: str, out: str) -> List[Figure]:
    figs = []
    for ln in out.splitlines():
        m = re.match(r"^(HR|LR|MR)\s+([\d.]+)\s+([\d.]+)x\s+(.*)$", ln)
        if m:
            windows = [_num(v) for v in m.group(4).split(",") if v.strip()]
            figs.append(Figure(bench, f"{m.group(1)} training step", _num(m.group(2)), "img/s", windows,
                               ratio=f"time x{float(m.group(3)):.2f} of HR"))
    return figs


def parse_gan(bench: str, out: str) -> List[Figure]:
    figs = []
    for ln in out.splitlines():
        cells = [c.strip() for c in ln.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[0] and not cells[0].startswith(("profile", "-")):
            prof = cells[0]
            figs.append(Figure(bench, f"MR-GAN {prof}: synthesis (G, no grad)", _num(cells[3]), "faces/s"))
            figs.append(Figure(bench, f"MR-GAN {prof}: D+G training step", _num(cells[4]), "s/step"))
            figs.append(Figure(bench, f"MR-GAN {prof}: train-gan mean step (D+G every g_interval)",
                               _num(cells[6]), "s/step"))
    return figs


def parse_eval_far(bench: str, out: str) -> List[Figure]:
    figs = []
    rows: Dict[str, Dict[str, float]] = {}
    for ln in out.splitlines():
        m = re.match(r"^(stream|batch|sklearn)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(-?[\d.]+)", ln)
        if m:
            rows[m.group(1)] = {"s": _num(m.group(2)), "rss": _num(m.group(4)), "extra": _num(m.group(5))}
        m = re.match(r"^(pairs-\w+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", ln)
        if m:
            figs.append(Figure(bench, f"template pairs, {m.group(1)}", _num(m.group(3)), "Mpairs/s"))
        m = re.match(r"^exact TARs identical .*: (True|False)", ln)
        if m:
            figs.append(Figure(bench, "exact TAR@FAR identical (stream = batch = sklearn)",
                               1.0 if m.group(1) == "True" else 0.0, "bool"))
    st = rows.get("stream")
    for k, r in rows.items():
        ratio = f"time x{r['s'] / st['s']:.1f} of stream" if st and st["s"] > 0 and k != "stream" else ""
        figs.append(Figure(bench, f"TAR@FAR {k}: compute", r["s"], "s", ratio=ratio))
        figs.append(Figure(bench, f"TAR@FAR {k}: memory over score generation", r["extra"], "MiB"))
    return figs


def parse_search(bench: str, out: str) -> List[Figure]:
    figs = []
    for ln in out.splitlines():
        try:
            row = json.loads(ln)
        except ValueError:
            continue
        if "templates" in row:
            n = row["templates"]
            ex = row.get("exact", {})
            for key in ("exact", "faiss_flat", "faiss_hnsw"):
                r = row.get(key)
                if not r:
                    continue
                ratio = ""
                if key != "exact" and ex.get("batched_qps"):
                    ratio = f"x{r['batched_qps'] / ex['batched_qps']:.2f} of exact"
                    if "recall_at_1" in r:
                        ratio += f", recall@1 {r['recall_at_1']:.3f}"
                figs.append(Figure(bench, f"search {n:,} templates, {key}, batched", r["batched_qps"],
                                   "queries/s", ratio=ratio))
                figs.append(Figure(bench, f"search {n:,} templates, {key}, one query per call",
                                   r["single_qps"], "queries/s"))
        elif "frames_per_s" in row:
            figs.append(Figure(bench, f"identify {row.get('size')} photo, upscales {row.get('upscales')}",
                               row["frames_per_s"], "frames/s",
                               ratio=f"{row.get('identified')} faces; detect {row.get('detect_s')} s, "
                                     f"embed {row.get('embed_s')} s"))
    return figs


def parse_json_figures(bench: str, out: str) -> List[Figure]:
    """The figures printed by this script's own --measure workers."""
    figs = []
    for ln in out.splitlines():
        if ln.startswith("{"):
            for f in json.loads(ln).get("figures", []):
                figs.append(Figure(bench, f["name"], f["value"], f["unit"], f.get("windows", []),
                                   f.get("ratio", "")))
    return figs


# ---------------------------------------------------------------------------- own measurements


def _lfw_photos(n: int) -> List[str]:
    sys.path.insert(0, os.path.join(ROOT, "src"))
    from ranface.config import default_data_root

    images = os.path.join(default_data_root(), "lfw-gray", "images")
    if not os.path.isdir(images):
        raise SystemExit(f"no LFW photos at {images}")
    out = []
    for person in sorted(os.listdir(images)):
        files = sorted(os.listdir(os.path.join(images, person)))
        if files:
            out.append(os.path.join(person, files[0]))
        if len(out) == n:
            break
    return out


def measure_prepare(n: int, repeats: int, workers: int) -> Dict[str, Any]:
    """``ranface prepare`` (MTCNN + 5-point alignment + JPEG writes) on ``n`` LFW photos,
    a fresh output each repeat; the elapsed time includes starting the worker pool."""
    from ranface.align.prepare import run_prepare
    from ranface.config import PrepareConfig, default_data_root

    rels = _lfw_photos(n)
    images = os.path.join(default_data_root(), "lfw-gray", "images")
    faces_s, photos_s, written = [], [], 0
    with tempfile.TemporaryDirectory() as d:
        lst = os.path.join(d, "photos.txt")
        with open(lst, "w") as fh:
            fh.write("".join(r + "\n" for r in rels))
        for k in range(repeats):
            cfg = PrepareConfig(input=lst, root=images, out=os.path.join(d, f"out{k}"), workers=workers,
                                chunk_size=max(1, -(-len(rels) // (2 * workers))), progress=False)
            t = time.perf_counter()
            s = run_prepare(cfg)
            el = time.perf_counter() - t
            written = s["faces_written"]
            faces_s.append(written / el)
            photos_s.append(len(rels) / el)
    return {"figures": [
        {"name": f"prepare {len(rels)} LFW photos, workers={workers} (incl. pool start)",
         "value": statistics.median(faces_s), "unit": "faces/s", "windows": faces_s,
         "ratio": f"{written} faces from {len(rels)} photos; {statistics.median(photos_s):.2f} photos/s"}]}


def measure_embed(n: int, batch: int, repeats: int) -> Dict[str, Any]:
    """The imported face-api ResNet-29 (150x150 input) through ranface's Embedder, with
    and without flip-sum, interleaved per repeat."""
    import numpy as np
    import torch

    from ranface.config import default_data_root
    from ranface.inference import Embedder, load_model

    folder = os.path.join(default_data_root(), "models", "faceapi-resnet29")
    model, info = load_model(folder, "resnet29_dlib", "cpu")
    h, w = model.spec.input_size
    rng = np.random.default_rng(0)
    arrs = [(rng.random((h, w, 3)) * 255).astype(np.uint8) for _ in range(n)]
    rates: Dict[bool, List[float]] = {True: [], False: []}
    embs = {flip: Embedder(model, torch.device("cpu"), flip=flip, batch_size=batch) for flip in rates}
    for e in embs.values():
        e.embed_arrays(arrs[:batch], "rgb")  # warm-up
    for _ in range(repeats):
        for flip, e in embs.items():
            t = time.perf_counter()
            e.embed_arrays(arrs, "rgb")
            rates[flip].append(n / (time.perf_counter() - t))
    off = statistics.median(rates[False])
    return {"figures": [
        {"name": f"ResNet-29 embed {h}x{w}, batch {batch}, flip-sum on", "value": statistics.median(rates[True]),
         "unit": "faces/s", "windows": rates[True],
         "ratio": f"time x{off / statistics.median(rates[True]):.2f} of flip off"},
        {"name": f"ResNet-29 embed {h}x{w}, batch {batch}, flip-sum off", "value": off, "unit": "faces/s",
         "windows": rates[False]}]}


# ---------------------------------------------------------------------------- the list


def _sizes(quick: Any, default: Any, full: Any) -> Callable[[str], Any]:
    return lambda size: {"quick": quick, "default": default, "full": full}[size]


def benches(threads: int) -> List[Bench]:
    th = ["--threads", str(threads)] if threads else []
    me = os.path.abspath(__file__)
    out = [
        Bench("train_step", lambda s: _py("train_step.py", *_sizes(
            ["--backbone", "iresnet34", "--batch", "8", "--steps", "1", "--repeats", "3"],
            ["--backbone", "iresnet34", "--batch", "32", "--steps", "2", "--repeats", "3", "--compile"],
            ["--compile"])(s)),
            parse_train_step, timeout={"quick": 600, "default": 1800, "full": 7200}),
        Bench("eval_pairs", lambda s: _py("eval_pairs.py", *_sizes(
            ["--per-fold", "8"], ["--per-fold", "40"], ["--per-fold", "0"])(s)),
            parse_eval_pairs, timeout={"quick": 600, "default": 1800, "full": 7200}),
        Bench("forward", lambda s: _py("forward.py", "--figures", *th, *_sizes(
            ["--backbones", "resnet29_dlib", "mobilefacenet", "--batch", "16", "--iters", "2"],
            ["--batch", "64"], ["--batch", "64", "--repeats", "5"])(s)),
            parse_json_figures),
        Bench("mtcnn_crowd", lambda s: _py("mtcnn_crowd.py", *th, *_sizes(
            ["--photos", "6"], ["--photos", "16"], [])(s)),
            parse_mtcnn, timeout={"quick": 600, "default": 1800, "full": 7200}),
        Bench("stage_steps", lambda s: _py("stage_steps.py", *th, *_sizes(
            ["--backbone", "mobilefacenet", "--batch", "8", "--steps", "2", "--repeats", "3", "--warmup", "1",
             "--classes", "100"],
            ["--backbone", "mobilefacenet", "--batch", "32", "--steps", "3", "--repeats", "3"], [])(s)),
            parse_stage_steps),
        Bench("gan", lambda s: _py("gan.py", *th, *_sizes(
            ["--profiles", "small", "--synth-batch", "8", "--train-batch", "4", "--steps", "1", "--repeats", "3",
             "--expert", "mobilefacenet"],
            ["--profiles", "small,paper", "--synth-batch", "16", "--train-batch", "8", "--steps", "2",
             "--repeats", "3"], [])(s)),
            parse_gan),
        Bench("eval_far", lambda s: _py("eval_far.py", *_sizes(
            ["--small"], ["--n-impostor", "10000000", "--n-genuine", "40000", "--n-templates", "5000",
                          "--n-pairs", "2000000"], [])(s)),
            parse_eval_far, runs={"quick": 3, "default": 3, "full": 1}),
        Bench("prepare", lambda s: [sys.executable, me, "--measure", "prepare", *_sizes(
            ["--n", "12", "--repeats", "3"], ["--n", "64", "--repeats", "3"], ["--n", "256", "--repeats", "3"])(s)],
            parse_json_figures),
        Bench("embed", lambda s: [sys.executable, me, "--measure", "embed", *_sizes(
            ["--n", "32", "--batch", "16", "--repeats", "3"], ["--n", "256", "--batch", "64", "--repeats", "3"],
            ["--n", "1024", "--batch", "64", "--repeats", "5"])(s)],
            parse_json_figures),
    ]
    if os.path.exists(os.path.join(HERE, "search.py")):
        out.append(Bench("search", lambda s: _py("search.py", "--part", "search", *_sizes(
            ["--queries", "100", "--singles", "10", "--hnsw-max", "1000"], [], ["--large"])(s)), parse_search))
        out.append(Bench("identify", lambda s: _py("search.py", "--part", "identify", *_sizes(
            ["--upscales", "1"], [], [])(s)), parse_search))
    return out


# ---------------------------------------------------------------------------- driver


def run_bench(b: Bench, size: str, env: Dict[str, str]) -> Dict[str, Any]:
    argv = b.argv(size)
    figs: List[Figure] = []
    failures: List[str] = []
    t0 = time.time()
    for _ in range(b.runs[size]):
        try:
            r = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=b.timeout[size])
        except subprocess.TimeoutExpired:
            failures.append(f"timed out after {b.timeout[size]} s")
            break
        got = b.parse(b.name, r.stdout)
        # eval_far exits 1 when the exact TARs differ: its figures still count (and show it)
        if r.returncode != 0 and not got:
            last = (r.stderr.strip().splitlines() or r.stdout.strip().splitlines() or ["?"])[-1]
            failures.append(f"exit {r.returncode}: {last[:160]}")
            break
        if not got:
            failures.append("no figures found in its output")
            break
        figs.extend(got)
    return {"figures": figs, "failures": failures, "wall_s": time.time() - t0, "argv": argv}


def aggregate(figs: Sequence[Figure]) -> List[Dict[str, Any]]:
    """One row per (bench, figure): median over this script's runs, or the
    sub-benchmark's own median; spread min..max of the runs or of its windows."""
    groups: Dict[tuple, List[Figure]] = {}
    for f in figs:
        groups.setdefault((f.bench, f.name), []).append(f)
    rows = []
    for (bench, name), fs in groups.items():
        if len(fs) > 1:
            vals = [f.value for f in fs]
            med, lo, hi, n = statistics.median(vals), min(vals), max(vals), f"{len(vals)} runs"
        elif fs[0].windows:
            med, lo, hi, n = fs[0].value, min(fs[0].windows), max(fs[0].windows), f"{len(fs[0].windows)} windows"
        else:
            med, lo, hi, n = fs[0].value, None, None, "1"
        # a ratio is measured within one run: show the one of the run nearest the median
        mid = min(fs, key=lambda f: abs(f.value - med))
        rows.append({"bench": bench, "figure": name, "median": med, "min": lo, "max": hi, "n": n,
                     "unit": fs[0].unit, "ratio": mid.ratio})
    return rows


def _fmt(v: Optional[float]) -> str:
    if v is None:
        return "-"
    if v == 0 or abs(v) >= 100:
        return f"{v:,.0f}" if abs(v) >= 100 else "0"
    return f"{v:.3g}"


def table(rows: List[Dict[str, Any]], failures: Dict[str, List[str]]) -> str:
    lines = ["| benchmark | figure | median | spread (min..max) | unit | repeats | ratio / note |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        spread = "-" if r["min"] is None or r["unit"] == "bool" else f"{_fmt(r['min'])}..{_fmt(r['max'])}"
        med = ("yes" if r["median"] else "NO") if r["unit"] == "bool" else _fmt(r["median"])
        lines.append(f"| {r['bench']} | {r['figure']} | {med} | {spread} | {r['unit']} | {r['n']} | {r['ratio']} |")
    for bench, msgs in failures.items():
        for m in msgs:
            lines.append(f"| {bench} | FAILED | - | - | - | - | {m} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="tiny sizes: a few minutes on 2 CPU cores")
    size.add_argument("--full", action="store_true", help="each benchmark's own defaults (paper scale)")
    ap.add_argument("--only", default="", help="comma-separated benchmark names")
    ap.add_argument("--threads", type=int, default=0, help="torch / OpenMP threads per benchmark (0: default)")
    ap.add_argument("--json", default="", help="also write the rows and the commands to this file")
    ap.add_argument("--measure", choices=("prepare", "embed"), help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=16, help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=32, help=argparse.SUPPRESS)
    ap.add_argument("--repeats", type=int, default=3, help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, default=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.measure:  # worker mode: one of this script's own measurements
        sys.path.insert(0, os.path.join(ROOT, "src"))
        if args.measure == "prepare":
            res = measure_prepare(args.n, args.repeats, args.workers)
        else:
            res = measure_embed(args.n, args.batch, args.repeats)
        print(json.dumps(res))
        return 0

    size_name = "quick" if args.quick else "full" if args.full else "default"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.join(ROOT, "src"), env.get("PYTHONPATH", "")])
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    wanted = {s for s in args.only.split(",") if s}
    todo = [b for b in benches(args.threads) if not wanted or b.name in wanted]
    unknown = wanted - {b.name for b in benches(args.threads)}
    if unknown:
        ap.error(f"unknown benchmark(s) {sorted(unknown)}")
    figs: List[Figure] = []
    failures: Dict[str, List[str]] = {}
    log = []
    t0 = time.time()
    for b in todo:
        print(f"[{time.time() - t0:6.0f}s] {b.name} ...", file=sys.stderr, flush=True)
        res = run_bench(b, size_name, env)
        figs.extend(res["figures"])
        if res["failures"]:
            failures[b.name] = res["failures"]
        log.append({"bench": b.name, "argv": res["argv"], "runs": b.runs[size_name],
                    "wall_s": round(res["wall_s"], 1), "failures": res["failures"]})
    rows = aggregate(figs)
    import platform

    import torch

    print(f"ranface benchmarks ({size_name}), {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, threads={args.threads or 'default'}, torch {torch.__version__}, "
          f"cuda={'yes: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no'}, "
          f"total {time.time() - t0:.0f} s")
    print(table(rows, failures))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"size": size_name, "rows": rows, "runs": log, "failures": failures}, fh, indent=1)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
