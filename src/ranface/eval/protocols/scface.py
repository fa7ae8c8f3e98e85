"""``scface``: SCface closed-set identification per distance, rank-1 (paper Table 3).

Files are found anywhere under ``--root`` by name (SCface's own folders, or one flat
folder of crops)::

    {id}_frontal.{ext}        the mugshot of subject {id} (gallery: one per subject)
    {id}_cam{c}_{d}.{ext}     surveillance image, camera c = 1..5, distance d:
                              1 = 4.2 m (d1), 2 = 2.6 m (d2), 3 = 1.0 m (d3)

(the IR cameras 6-7 and other files are ignored). The release's layout
(``mugshot_frontal_cropped_all/001_frontal.JPG``,
``surveillance_cameras_distance_1/cam1/001_cam1_1.jpg``, ...) also holds the uncropped
mugshots (``mugshot_frontal_original_all``): when ``mugshot_dir`` exists under the root
the mugshots are read from it only. A surveillance file name met twice (a release copy
of the same image in two folders) is used once. For each distance the probes are that
distance's images of the test subjects and the gallery is the test subjects' mugshots
(paper §4.4: "HR faces are used as the gallery set and LR images ... as the probe").

``split``: ``paper`` (default) follows [27] as the paper does (§4.1, Table 3): 50 subjects
for fine-tuning, 80 for testing. Which 50 is not published; ranface fixes them in the
file ``scface_split.txt`` next to this module (``finetune 001`` .. ``finetune 050``,
``test 051`` .. ``test 130``), so every run tests the same 80. ``file`` reads a split of
the same format from ``split_file``; ``none`` tests every subject found. A test subject
of the split with no image under ``--root`` is an error naming it. ``write_finetune``
copies the fine-tuning subjects' images (mugshot and surveillance; aligned crops when
``align`` is on) to ``<dir>/<id>/<file>``, an image folder ``ranface train`` reads: the
fine-tuning recipe is ``configs/finetune_scface.yaml`` and ``scripts/scface_table3.sh``
runs Table 3 (rank-1 per distance on the 80, without and with fine-tuning).

SCface photos are not aligned. ``align: none`` (default) expects crops that are already
aligned faces (e.g. made by ``ranface prepare``); ``align: mtcnn`` detects and aligns each
image with :class:`ranface.align.pipeline.FaceAligner` (a failed detection is an error or
a counted skip; ``align_fallback`` uses the centre crop instead and counts it).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

import numpy as np

from ...config import path_field
from ...errors import ConfigError, DataError, ProtocolError
from ...data.image import image_extensions
from ..features import SkipLog, embed_images
from ..report import curve, fmt_pct, md_table, method_label, plot_curves
from . import EvalContext, Protocol, base_result, register_protocol
from .common import listing

__all__ = ["SCfaceOptions", "SCfaceProtocol", "scan_scface", "split_subjects", "read_split",
           "DISTANCES_M", "PAPER_SPLIT_FILE", "SPLITS"]

DISTANCES_M = {1: 4.2, 2: 2.6, 3: 1.0}
PAPER_SPLIT_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scface_split.txt")
SPLITS = ("paper", "file", "none")
_MUG = re.compile(r"^(?P<id>[^_]+)_frontal$", re.IGNORECASE)
_CAM = re.compile(r"^(?P<id>[^_]+)_cam(?P<cam>\d+)_(?P<d>\d+)$", re.IGNORECASE)


@dataclass
class SCfaceOptions:
    split: str = "paper"  # paper (scface_split.txt: 50 fine-tune / 80 test) | file | none
    split_file: str = path_field()  # split=file: lines '<finetune|test> <id>'
    mugshot_dir: str = "mugshot_frontal_cropped_all"  # if present, the only mugshot source
    write_finetune: str = path_field()  # folder to write the fine-tuning images to (<id>/<file>)
    cameras: List[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    distances: List[int] = field(default_factory=lambda: [1, 2, 3])
    ranks: List[int] = field(default_factory=lambda: [1, 5])
    align: str = "none"  # none | mtcnn
    align_fallback: bool = False  # mtcnn: centre crop when no face is found
    flip: bool = True
    color: str = ""


@dataclass
class SCfaceFiles:
    mugshots: Dict[str, str]  # id -> path
    probes: List[Tuple[str, int, int, str]]  # (id, camera, distance, path)


def scan_scface(root: str, cameras: List[int], distances: List[int],
                mugshot_dir: str = "mugshot_frontal_cropped_all") -> SCfaceFiles:
    """Find mugshots and surveillance images under ``root`` by their SCface names."""
    mugs: Dict[str, str] = {}
    probes: List[Tuple[str, int, int, str]] = []
    seen: set = set()
    mug_only = os.path.join(root, mugshot_dir) if mugshot_dir else ""
    if mug_only and not os.path.isdir(mug_only):
        mug_only = ""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for f in sorted(filenames):
            stem, ext = os.path.splitext(f)
            if ext.lower() not in image_extensions():
                continue
            path = os.path.join(dirpath, f)
            m = _MUG.match(stem)
            if m:
                if mug_only and os.path.normpath(dirpath) != os.path.normpath(mug_only):
                    continue
                sid = m.group("id")
                if sid in mugs:
                    raise ProtocolError(path, f"second mugshot of subject {sid} (first: "
                                        f"{mugs[sid]}); the gallery holds one per subject")
                mugs[sid] = path
                continue
            m = _CAM.match(stem)
            if m and int(m.group("cam")) in cameras and int(m.group("d")) in distances:
                if stem.lower() in seen:
                    continue
                seen.add(stem.lower())
                probes.append((m.group("id"), int(m.group("cam")), int(m.group("d")), path))
    return SCfaceFiles(mugs, probes)


def read_split(path: str) -> Tuple[List[str], List[str]]:
    """(fine-tune ids, test ids) of a split file: ``<finetune|test> <subject id>`` lines;
    ``#`` starts a comment."""
    try:
        with open(path, "r", encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ProtocolError(path, f"cannot read split file ({getattr(exc, 'strerror', None) or exc})"
                            ) from None
    parts: Dict[str, List[str]] = {"finetune": [], "test": []}
    seen: Dict[str, int] = {}
    for no, line in enumerate(text.splitlines(), 1):
        tok = line.split("#", 1)[0].split()
        if not tok:
            continue
        if len(tok) != 2 or tok[0] not in parts:
            raise ProtocolError(path, "expected '<finetune|test> <subject id>'", f"line {no}")
        kind, sid = tok
        if sid in seen:
            raise ProtocolError(path, f"subject {sid} listed twice (first on line {seen[sid]})",
                                f"line {no}")
        seen[sid] = no
        parts[kind].append(sid)
    if not parts["test"]:
        raise ProtocolError(path, "lists no test subject")
    return sorted(parts["finetune"]), sorted(parts["test"])


def split_subjects(ids: List[str], split: str, split_file: str = "") -> Tuple[List[str], List[str]]:
    """(fine-tune ids, test ids): ``none`` -> ([], all found); ``paper`` / ``file`` -> the
    split file's lists (every test subject must be among ``ids``)."""
    ids = sorted(set(ids))
    if split == "none":
        return [], ids
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}, got {split!r}")
    path = PAPER_SPLIT_FILE if split == "paper" else split_file
    if not path:
        raise ConfigError("split=file needs split_file=<path>")
    ft, test = read_split(path)
    absent = sorted(set(test) - set(ids))
    if absent:
        raise ProtocolError(path, f"{len(absent)} test subject(s) of this split have no image "
                            f"under the SCface root: {listing(absent)}")
    return ft, test


@register_protocol("scface")
class SCfaceProtocol(Protocol):
    Options = SCfaceOptions
    title = "SCface identification (rank-1 per distance)"
    provenance = ("SCface's protocol (Grgic et al. 2011) with the paper's 50/80 split (§4.1, "
                  "[27]); no public code: the split is a file in ranface")

    def validate_root(self, root: str, options: Any = None) -> None:
        o = options or SCfaceOptions()
        if o.split not in SPLITS:
            raise ConfigError(f"split must be one of {SPLITS}, got {o.split!r}")
        if o.split == "file" and not os.path.isfile(o.split_file):
            raise ProtocolError(o.split_file or "split_file", "split file not found (split=file)")
        if o.align not in ("none", "mtcnn"):
            raise ConfigError(f"align must be none or mtcnn, got {o.align!r}")
        bad = [d for d in o.distances if d not in DISTANCES_M]
        if bad or not o.distances:
            raise ConfigError(f"distances must be among 1, 2, 3, got {o.distances}")
        files = scan_scface(root, o.cameras, o.distances, o.mugshot_dir)
        missing = []
        if not files.mugshots:
            missing.append("mugshots {id}_frontal.jpg")
        if not files.probes:
            missing.append(f"surveillance images {{id}}_cam{{1..5}}_{{1..3}}.jpg for cameras "
                           f"{o.cameras} and distances {o.distances}")
        if missing:
            raise ProtocolError(root, f"not an SCface root: no {' and no '.join(missing)} found")

    def _prepare(self, o: SCfaceOptions, ctx: EvalContext, skips: SkipLog, counter: Dict[str, int]):
        if o.align == "none":
            return None
        from ...align.pipeline import FaceAligner

        kind = "dlib" if ctx.backbone_name.startswith("resnet29_dlib") else "arcface"
        aligner = FaceAligner(template=kind, size=ctx.input_size,
                              center_crop_fallback=o.align_fallback, device=ctx.device)

        def prepare(img: np.ndarray, i: int) -> np.ndarray:
            res = aligner.align(img)
            if res.face is None:  # embed_images names the file
                raise DataError(None, f"no face aligned ({res.reason})")
            if res.reason:
                counter["fallback"] = counter.get("fallback", 0) + 1
            return res.face

        return prepare

    def run(self, ctx: EvalContext, root: str, options: SCfaceOptions) -> Dict[str, Any]:
        o = options
        skips = SkipLog(ctx.on_error)
        result = base_result(self.name, ctx, root, o)
        files = scan_scface(root, o.cameras, o.distances, o.mugshot_dir)
        all_ids = sorted(set(files.mugshots) | {p[0] for p in files.probes})
        ft_ids, test_ids = split_subjects(all_ids, o.split, o.split_file)
        test_set = set(test_ids)
        no_mug = sorted(test_set - set(files.mugshots))
        if no_mug:
            err = ProtocolError(root, f"no mugshot ({{id}}_frontal.*) for {len(no_mug)} test "
                                f"subject(s): {listing(no_mug)}")
            skips.handle(err)
            test_set -= set(no_mug)
        gal_ids = sorted(i for i in files.mugshots if i in test_set)
        probes = [p for p in files.probes if p[0] in test_set]
        paths = [files.mugshots[i] for i in gal_ids] + [p[3] for p in probes]
        counter: Dict[str, int] = {}
        prepare = self._prepare(o, ctx, skips, counter)
        emb = ctx.embedder(o.flip)
        feats = embed_images(emb, paths, color=o.color or None, skips=skips, prepare=prepare,
                             workers=ctx.workers, progress=ctx.progress, desc="scface")
        f, ok = feats[""], feats.ok
        n_g = len(gal_ids)
        g_ok = ok[:n_g]
        gallery, g_lab = f[:n_g][g_ok], np.array(gal_ids, dtype=object)[g_ok]
        if gallery.shape[0] == 0:
            raise ProtocolError(root, "no mugshot could be embedded")
        from ..metrics import match_ranks

        metrics: Dict[str, Any] = {"distances": [int(d) for d in o.distances],
                                   "ranks": [int(r) for r in o.ranks], "per_distance": {}}
        curves: Dict[str, Any] = {}
        scored = 0
        p_ok = ok[n_g:]
        for d in o.distances:
            sel = np.array([k for k, p in enumerate(probes) if p[2] == d and p_ok[k]], np.int64)
            if sel.size == 0:
                continue
            labels = np.array([probes[k][0] for k in sel], dtype=object)
            has = np.isin(labels, g_lab)
            if not has.all():  # the subject's mugshot failed to load (skip mode only)
                skips.record(f"{int((~has).sum())} d{d} probe(s) whose mugshot was skipped",
                             int((~has).sum()))
                sel, labels = sel[has], labels[has]
            sim = f[n_g:][sel] @ gallery.T
            rk = match_ranks(sim, labels.astype(str), g_lab.astype(str))
            max_rank = min(20, gallery.shape[0])
            metrics["per_distance"][str(d)] = {
                "distance_m": DISTANCES_M[d], "probes": int(sel.size),
                "rank": {str(r): float(np.mean(rk <= int(r))) for r in o.ranks}}
            curves[f"cmc/d{d}"] = curve(range(1, max_rank + 1),
                                        [float(np.mean(rk <= r)) for r in range(1, max_rank + 1)],
                                        "rank", "identification rate", compare=d == 1)
            scored += int(sel.size)
        if not metrics["per_distance"]:
            raise ProtocolError(root, "no probe could be scored")
        if ft_ids and o.write_finetune:
            metrics["finetune_written"] = self._write_finetune(
                o, ctx, files, ft_ids, skips, counter)
        result["metrics"] = metrics
        result["metrics"]["split"] = {
            "kind": o.split, "finetune_ids": ft_ids, "test_ids": sorted(test_set),
            "file": {"paper": PAPER_SPLIT_FILE, "file": o.split_file}.get(o.split, "")}
        result["curves"] = curves
        result["counts"] = {"scored": scored, "skipped": skips.count, "subjects": len(all_ids),
                            "test_subjects": len(test_set), "gallery": int(gallery.shape[0]),
                            "images_skipped": int(len(paths) - ok.sum()),
                            "align_fallbacks": counter.get("fallback", 0)}
        result["skipped_examples"] = skips.examples
        return result

    def _write_finetune(self, o: SCfaceOptions, ctx: EvalContext, files: SCfaceFiles,
                        ids: List[str], skips: SkipLog, counter: Dict[str, int]) -> int:
        """Copy (or align and write) the fine-tuning subjects' images to <dir>/<id>/."""
        from ...data.image import encode_image, read_image
        from ...io_utils import atomic_write_bytes

        want = set(ids)
        items = [(i, p) for i, p in files.mugshots.items() if i in want]
        items += [(p[0], p[3]) for p in files.probes if p[0] in want]
        prepare = self._prepare(o, ctx, skips, counter)
        n = 0
        for k, (sid, path) in enumerate(items):
            dst_dir = os.path.join(o.write_finetune, sid)
            name = os.path.basename(path)
            if prepare is None:
                try:
                    with open(path, "rb") as fh:
                        data = fh.read()
                except OSError as exc:
                    skips.handle(DataError(path, f"cannot read file ({exc.strerror or exc})"))
                    continue
            else:
                try:
                    face = prepare(read_image(path), k)
                except DataError as exc:
                    skips.handle(exc if exc.path else DataError(path, exc.problem, exc.where))
                    continue
                data = encode_image(face, "png")
                name = os.path.splitext(name)[0] + ".png"
            atomic_write_bytes(os.path.join(dst_dir, name), data)
            n += 1
        return n

    def markdown(self, result: Dict[str, Any]) -> str:
        m = result["metrics"]
        ds = [d for d in m["distances"] if str(d) in m["per_distance"]]
        head = ["Method"] + [f"d{d} ({DISTANCES_M[d]} m)" for d in ds]
        rows = [[method_label(result) + (f" rank-{r}" if r != 1 else "")]
                + [fmt_pct(m["per_distance"][str(d)]["rank"][str(r)]) for d in ds]
                for r in m["ranks"]]
        sp = m["split"]
        where = {"paper": " (scface_split.txt, the paper's 80 of 130)",
                 "file": f" ({sp.get('file', '')})"}.get(sp["kind"], "")
        return md_table(head, rows) + (
            f"\nClosed-set identification rate at rank {', '.join(map(str, m['ranks']))} (%), "
            f"per probe distance; gallery: one mugshot per test subject "
            f"({len(sp['test_ids'])} subjects, split {sp['kind']}{where}).\n")

    def plots(self, result: Dict[str, Any], out_dir: str) -> List[str]:
        series = {k.split("/")[1]: c for k, c in result["curves"].items()}
        return [plot_curves(series, os.path.join(out_dir, "cmc.png"), "CMC per distance")]

    def summary(self, result: Dict[str, Any]) -> Dict[str, str]:
        m = result["metrics"]
        return {f"d{d}": fmt_pct(v["rank"]["1"]) if "1" in v["rank"] else ""
                for d, v in m["per_distance"].items()}
