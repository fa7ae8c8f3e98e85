"""Deployment: export (ONNX / TorchScript), the enrolment gallery, nearest-template
search (exact or faiss), open-set thresholds and identification in photos and video.

The high-level entry points are :class:`ranface.deploy.recognizer.FaceRecognizer` and
:class:`ranface.deploy.gallery.Gallery`; this package imports nothing heavy at import
time (torch, onnxruntime, faiss and PyAV are imported where used; the last three are
optional: ``pip install -r requirements-deploy.txt``).
"""
