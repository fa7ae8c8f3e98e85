import os

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.environ.get("RANFACE_DATA", os.path.normpath(os.path.join(ROOT, "..", "shared", "data")))


def shared_path(*parts: str) -> str:
    return os.path.join(SHARED_DATA, *parts)


def require_shared(*parts: str) -> str:
    p = shared_path(*parts)
    if not os.path.exists(p):
        pytest.skip(f"shared data not available: {p}")
    return p


def make_face_folder(root: str, n_ids: int = 4, per_id: int = 6, size: int = 112, seed: int = 0) -> str:
    """Synthetic aligned-face folder: each identity is a distinct smooth pattern plus noise,
    so a classifier can learn it in a few steps."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for c in range(n_ids):
        d = os.path.join(root, f"id{c:03d}")
        os.makedirs(d, exist_ok=True)
        base = np.stack([np.sin(xx * (c + 1) * 3), np.cos(yy * (c + 2) * 2), np.sin((xx + yy) * (c + 1))], -1)
        for k in range(per_id):
            img = (base * 80 + 128 + rng.normal(0, 12, base.shape)).clip(0, 255).astype(np.uint8)
            Image.fromarray(img).save(os.path.join(d, f"{k:03d}.png"))
    return root


@pytest.fixture(scope="session")
def face_folder(tmp_path_factory):
    return make_face_folder(str(tmp_path_factory.mktemp("faces")))


@pytest.fixture
def one_thread():
    """One torch thread for the test (tiny networks on shared cores run far faster)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def sets(items):
    """["a=1", "b=2"] -> ["--set", "a=1", "--set", "b=2"] for CLI calls."""
    return [a for s in items for a in ("--set", s)]
