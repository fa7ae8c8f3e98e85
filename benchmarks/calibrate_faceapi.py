"""Calibrate the face-api ResNet-29's model-card thresholds on LFW View-2 (all 6,000
pairs of ``lfw-gray/pairs.txt``), the way ``ranface compare`` sees photos: each photo
detected and aligned by ``ranface prepare`` with the card's template (dlib) at the card's
input size (150x150), flip-sum embeddings, cosine.

    ranface prepare PHOTOS.txt --out work/lfw150 --set root=<data>/lfw-gray/images \
        --set template=dlib --set 'size=[150,150]' --set policy=center
    python benchmarks/calibrate_faceapi.py work/lfw150

Prints the :class:`ranface.models.card.Thresholds` as JSON (pasted into
``ranface.models.faceapi.FACEAPI_THRESHOLDS``). Pairs with a photo in which no face was
found are left out and counted.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict


def main(faces: str) -> int:
    import numpy as np

    from ranface.config import default_data_root
    from ranface.data.image import read_image
    from ranface.eval.verification import card_thresholds
    from ranface.inference import Embedder
    from ranface.models.loader import load_model

    data = default_data_root()
    model, card = load_model(os.path.join(data, "models", "faceapi-resnet29"))
    pairs_txt = os.path.join(data, "lfw-gray", "pairs.txt")
    pairs = []
    with open(pairs_txt, encoding="utf-8") as fh:
        for line in fh.read().split("\n")[1:]:
            p = line.split()
            if len(p) == 3:
                pairs.append(((p[0], int(p[1])), (p[0], int(p[2])), True))
            elif len(p) == 4:
                pairs.append(((p[0], int(p[1])), (p[2], int(p[3])), False))
    names = sorted({x for a, b, _ in pairs for x in (a, b)})
    path = {n: os.path.join(faces, n[0], f"{n[0]}_{n[1]:04d}.jpg") for n in names}
    have = [n for n in names if os.path.isfile(path[n])]
    emb = Embedder(model, "cpu", flip=card.flip, batch_size=64)
    feats = {}
    for i in range(0, len(have), 256):
        chunk = have[i:i + 256]
        e = emb.embed_arrays([read_image(path[n]) for n in chunk], "rgb")
        feats.update(zip(chunk, e))
    kept = [(a, b, s) for a, b, s in pairs if a in feats and b in feats]
    scores = np.array([float(np.dot(feats[a], feats[b])) for a, b, _ in kept])
    same = np.array([s for _, _, s in kept])
    thr = card_thresholds(scores, same, data=f"LFW View-2 pairs.txt ({len(kept)} of {len(pairs)} pairs; "
                          "grey photos, MTCNN + dlib template at 150x150)",
                          note=f"{len(pairs) - len(kept)} pairs dropped: no face found in a photo")
    json.dump(asdict(thr), sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
