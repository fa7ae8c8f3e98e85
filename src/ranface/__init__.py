"""ranface: low-resolution (surveillance) face recognition with the Resolution Adaption
Network of Fang et al., ECCV 2020 ("Generate to Adapt").

``ranface.FaceRecognizer`` and ``ranface.Gallery`` (the Python API mirroring the CLI) are
imported lazily, on first use, so ``import ranface`` stays cheap and side-effect free.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "FaceRecognizer", "Gallery"]


def __getattr__(name: str):
    if name in ("FaceRecognizer", "Gallery"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'ranface' has no attribute {name!r}")
