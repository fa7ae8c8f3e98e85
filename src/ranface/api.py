"""The Python API: a thin facade over :mod:`ranface.deploy` (the recogniser, the
gallery) and the model loader, mirroring ``ranface compare``, ``gallery`` and
``identify``.

    from ranface import FaceRecognizer, Gallery

    rec = FaceRecognizer("runs/mr-0000")                     # any ranface model
    rec.verify("a.jpg", "b.jpg")                             # {"cosine", "same", "threshold", ...}
    gallery, report = rec.enrol("people/")                   # <identity>/<photos>
    gallery.set_calibration(rec.calibrate(gallery, "strangers/", fpir=0.1).to_dict())
    gallery.save("people.npz")

    gallery = Gallery.load("people.npz")
    rec = FaceRecognizer.for_gallery(gallery)                # same model, same alignment
    for r in rec.search(gallery, ["probe.jpg"]):             # one face per photo
        print(r["status"], r["identity"], r["top_k"][:3])
    for frame in rec.identify(gallery, ["crowd.jpg", "clip.mp4"], every=5):
        for face in frame.faces:                             # every face of every frame
            print(frame.frame, face.box, face.status, face.identity)

See :mod:`ranface.deploy.recognizer` for the conventions (embeddings, templates,
thresholds).
"""
from __future__ import annotations

from .deploy.gallery import Gallery
from .deploy.recognizer import (FaceRecognizer, GalleryConfig, IdentifyConfig, RecognizerConfig,
                                evaluate_search, list_probes, resolve_threshold, stored_threshold)
from .models.card import ModelCard
from .models.loader import load_model

__all__ = ["FaceRecognizer", "Gallery", "RecognizerConfig", "GalleryConfig", "IdentifyConfig",
           "evaluate_search", "resolve_threshold", "stored_threshold", "list_probes", "ModelCard",
           "load_model"]
