"""``tinyface``: TinyFace closed-set identification, rank-1/5/20 (Cheng et al., ACCV 2018;
native low-resolution faces, a surveillance benchmark like those of paper §4.4).

Layout (``--root`` the TinyFace folder, or its ``Testing_Set``)::

    Testing_Set/Probe/*.jpg                 probes
    Testing_Set/Gallery_Match/*.jpg         their mates
    Testing_Set/Gallery_Distractor/*.jpg    distractors (label -1, never a mate)
    Testing_Set/probe_img_ID_pairs.mat          probe_set (file names), probe_ids
    Testing_Set/gallery_match_img_ID_pairs.mat  gallery_set, gallery_ids

The ``.mat`` lists fix the probe and match sets and their order; identities come from
the ``*_ids`` vectors and, where those are absent, from the file name's prefix before
the first ``_`` (TinyFace names files ``<id>_<n>.jpg``). Every image in
Gallery_Distractor joins the gallery. The crops are small and already aligned: each is
resized to the model's input (bicubic). Ranks are pessimistic on ties
(:func:`~ranface.eval.metrics.match_ranks`); probes are scored in blocks against the
whole ~158k gallery, so the similarity matrix is never held at once.

Follows AdaFace/CVLFace's TinyFace evaluation (Kim et al. 2022): the same lists, the same
gallery (matches plus every distractor) and CMC ranks 1/5/20. ranface's own convention:
a tie between the mate and another entry counts against the probe (how the reference
script breaks exact ties was not checked; with float scores ties are rare).
``ranface evaluate --list`` prints this provenance.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from ...errors import ProtocolError
from ..features import SkipLog, embed_images, list_image_files
from ..report import curve, fmt_pct, md_table, method_label, plot_curves
from . import EvalContext, Protocol, base_result, register_protocol
from .common import check_listed, load_mat, mat_ints, mat_strings, require, similarity_blocks

__all__ = ["TinyFaceOptions", "TinyFaceProtocol", "closed_set_ranks", "labels_from_names"]


@dataclass
class TinyFaceOptions:
    ranks: List[int] = field(default_factory=lambda: [1, 5, 20])
    flip: bool = True
    color: str = ""
    max_distractors: int = -1  # -1: all; N >= 0: the first N (sorted) distractors


def labels_from_names(names: Sequence[str]) -> List[str]:
    """Identity = file name prefix before the first '_'."""
    return [os.path.basename(n).split("_", 1)[0] for n in names]


def closed_set_ranks(probe: np.ndarray, probe_labels: np.ndarray, gallery: np.ndarray,
                     gallery_labels: np.ndarray, budget: int = 1 << 24) -> np.ndarray:
    """Rank of each probe's best mate (metrics.match_ranks), in probe blocks."""
    from ..metrics import match_ranks

    out = np.empty(probe.shape[0], np.int64)
    for s, sim in similarity_blocks(probe, gallery, budget):
        out[s:s + sim.shape[0]] = match_ranks(sim, probe_labels[s:s + sim.shape[0]],
                                              gallery_labels, allow_unmatched=True)
    return out


def _testing_dir(root: str) -> str:
    t = os.path.join(root, "Testing_Set")
    return t if os.path.isdir(t) else root


def _listed(test: str, sub: str, mat_name: str, set_key: str, ids_key: str,
            skips: SkipLog, allow_outside: bool = False) -> Tuple[List[str], List[Any], List[str]]:
    path = os.path.join(test, mat_name)
    mat = load_mat(path)
    names = mat_strings(mat, set_key, path)
    check_listed(names, path, os.path.join(test, sub), allow_outside,
                 [f"{set_key}[{k}]" for k in range(len(names))])
    if ids_key in mat:
        ids: List[Any] = mat_ints(mat, ids_key, path, len(names)).tolist()
    else:
        ids = labels_from_names(names)
    files = [os.path.join(test, sub, n) for n in names]
    keep = []
    for k, f in enumerate(files):
        if os.path.isfile(f):
            keep.append(k)
        else:
            skips.handle(ProtocolError(f, f"image not found (listed in {path} as "
                                       f"{set_key}[{k}])"))
    return [names[k] for k in keep], [ids[k] for k in keep], [files[k] for k in keep]


def _codes(*groups: Sequence[Any]) -> List[np.ndarray]:
    """Map identity labels (ints or strings) to ints >= 0, consistently across groups."""
    allv = sorted({str(v) for g in groups for v in g})
    index = {v: i for i, v in enumerate(allv)}
    return [np.array([index[str(v)] for v in g], np.int64) for g in groups]


@register_protocol("tinyface")
class TinyFaceProtocol(Protocol):
    Options = TinyFaceOptions
    title = "TinyFace closed-set identification"
    provenance = ("AdaFace/CVLFace TinyFace evaluation (the release's .mat lists, ids from names, "
                  "all distractors, CMC rank-1/5/20); ranface's choice: ties count against the probe")

    def validate_root(self, root: str, options: Any = None) -> None:
        test = _testing_dir(root)
        rel = os.path.relpath(test, root)
        p = (lambda x: x) if rel == "." else (lambda x: os.path.join(rel, x))
        require(root, [(p("Probe"), "dir"), (p("Gallery_Match"), "dir"),
                       (p("Gallery_Distractor"), "dir"), (p("probe_img_ID_pairs.mat"), "file"),
                       (p("gallery_match_img_ID_pairs.mat"), "file")], "TinyFace")

    def run(self, ctx: EvalContext, root: str, options: TinyFaceOptions) -> Dict[str, Any]:
        o = options
        test = _testing_dir(root)
        skips = SkipLog(ctx.on_error)
        result = base_result(self.name, ctx, root, o)
        _, p_ids, p_files = _listed(test, "Probe", "probe_img_ID_pairs.mat", "probe_set",
                                    "probe_ids", skips, ctx.allow_outside_root)
        _, g_ids, g_files = _listed(test, "Gallery_Match", "gallery_match_img_ID_pairs.mat",
                                    "gallery_set", "gallery_ids", skips, ctx.allow_outside_root)
        d_dir = os.path.join(test, "Gallery_Distractor")
        d_files = [os.path.join(d_dir, f) for f in list_image_files(d_dir)]
        if o.max_distractors >= 0:
            d_files = d_files[:o.max_distractors]
        p_lab, g_lab = _codes(p_ids, g_ids)
        emb = ctx.embedder(o.flip)
        files = p_files + g_files + d_files
        feats = embed_images(emb, files, color=o.color or None, skips=skips,
                             workers=ctx.workers, progress=ctx.progress, desc="tinyface")
        f, ok = feats[""], feats.ok
        n_p, n_g = len(p_files), len(g_files)
        p_ok, g_ok, d_ok = ok[:n_p], ok[n_p:n_p + n_g], ok[n_p + n_g:]
        gallery = np.concatenate([f[n_p:n_p + n_g][g_ok], f[n_p + n_g:][d_ok]])
        gallery_labels = np.concatenate([g_lab[g_ok], np.full(int(d_ok.sum()), -1)])
        probe, probe_labels = f[:n_p][p_ok], p_lab[p_ok]
        if probe.shape[0] == 0 or not g_ok.any():
            raise ProtocolError(test, "no probe or no gallery image could be embedded")
        ranks = closed_set_ranks(probe, probe_labels, gallery, gallery_labels)
        unmatched = ranks == np.iinfo(np.int64).max
        if unmatched.any():
            k = int(np.argmax(unmatched))
            err = ProtocolError(p_files[int(np.flatnonzero(p_ok)[k])], "probe identity has no "
                                f"image in Gallery_Match; {int(unmatched.sum())} such probes "
                                "(closed-set identification)")
            skips.handle(err)
            ranks = ranks[~unmatched]
        max_rank = int(min(50, gallery.shape[0]))
        cmc_all = [float(np.mean(ranks <= r)) for r in range(1, max_rank + 1)]
        result["metrics"] = {"ranks": [int(r) for r in o.ranks],
                             "rank": {str(r): float(np.mean(ranks <= int(r))) for r in o.ranks},
                             "n_probes": int(ranks.size), "n_gallery": int(gallery.shape[0]),
                             "n_distractors": int(d_ok.sum())}
        result["curves"] = {"cmc": curve(range(1, max_rank + 1), cmc_all, "rank",
                                         "identification rate", compare=True)}
        result["counts"] = {"scored": int(ranks.size), "skipped": skips.count,
                            "probes": n_p, "gallery_match": n_g, "distractors": len(d_files),
                            "images_embedded": int(ok.sum()),
                            "images_skipped": int(len(files) - ok.sum())}
        result["skipped_examples"] = skips.examples
        return result

    def markdown(self, result: Dict[str, Any]) -> str:
        m = result["metrics"]
        head = ["Method"] + [f"rank-{r}" for r in m["ranks"]]
        row = [method_label(result)] + [fmt_pct(m["rank"][str(r)]) for r in m["ranks"]]
        return md_table(head, [row]) + (
            f"\nIdentification rate (%) of {m['n_probes']} probes against {m['n_gallery']} "
            f"gallery images ({m['n_distractors']} distractors).\n")

    def plots(self, result: Dict[str, Any], out_dir: str) -> List[str]:
        return [plot_curves({method_label(result): result["curves"]["cmc"]},
                            os.path.join(out_dir, "cmc.png"), "CMC (TinyFace)")]

    def summary(self, result: Dict[str, Any]) -> Dict[str, str]:
        m = result["metrics"]
        return {f"rank-{r}": fmt_pct(m["rank"][str(r)]) for r in m["ranks"]}
