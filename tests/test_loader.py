import numpy as np
import torch

from ranface.data.loader import AugmentedView, FaceTransform
from ranface.data.samplers import sample_generator


def test_transform_normalises_flips_and_resizes():
    arr = np.zeros((112, 112, 3), np.uint8)
    arr[:, :56] = 255  # left half white
    tf = FaceTransform((127.5,) * 3, (127.5,) * 3, hflip=False, size=(150, 150))
    t = tf(arr, np.random.default_rng(0))
    assert t.shape == (3, 150, 150)
    assert torch.allclose(t[:, :, 0], torch.ones(3, 150)) and torch.allclose(t[:, :, -1], -torch.ones(3, 150))
    flipped = FaceTransform((127.5,) * 3, (127.5,) * 3, hflip=True)
    # the flip decision is a pure function of (seed, epoch, index): the same twice
    a = flipped(arr, sample_generator(0, 1, 2))
    b = flipped(arr, sample_generator(0, 1, 2))
    assert torch.equal(a, b) and a.shape == (3, 112, 112)


def test_paired_view_applies_the_same_flip():
    class DS:
        def __init__(self, v):
            self.v = v

        def __len__(self):
            return 8

        def __getitem__(self, i):
            img = np.zeros((4, 4, 3), np.uint8)
            img[:, 0] = self.v  # a marked left column
            return img, i % 2

    view = AugmentedView(DS(200), FaceTransform((0,) * 3, (1,) * 3), seed=3, pair=DS(100))
    flips = set()
    for i in range(8):
        hr, lr, y = view[(0, i)]
        assert (hr[0, 0, 0] == 200) == (lr[0, 0, 0] == 100)  # same flip for the twin
        flips.add(bool(hr[0, 0, 0] == 200))
        assert y == i % 2
    assert flips == {True, False}
