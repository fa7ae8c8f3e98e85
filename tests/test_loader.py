import numpy as np
import pytest
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


def test_paired_view_twin_prob_gives_the_top_stream_lr_twins():
    class DS:
        def __init__(self, v):
            self.v = v

        def __len__(self):
            return 400

        def __getitem__(self, i):
            return np.full((4, 4, 3), self.v, np.uint8), 0

    tf = FaceTransform((0,) * 3, (1,) * 3, hflip=False)
    never = AugmentedView(DS(200), tf, seed=3, pair=DS(100))
    assert all(never[(0, i)][0][0, 0, 0] == 200 for i in range(50))
    always = AugmentedView(DS(200), tf, seed=3, pair=DS(100), twin_prob=1.0)
    assert all(always[(0, i)][0][0, 0, 0] == 100 for i in range(50))
    half = AugmentedView(DS(200), tf, seed=3, pair=DS(100), twin_prob=0.5)
    picks = [bool(half[(1, i)][0][0, 0, 0] == 100) for i in range(400)]
    assert 150 < sum(picks) < 250  # binomial(400, 0.5): outside this in < 1e-4 of seeds
    assert picks == [bool(half[(1, i)][0][0, 0, 0] == 100) for i in range(400)]  # pure function of the key
    assert all(half[(1, i)][1][0, 0, 0] == 100 for i in range(20))  # the LR stream always gets the twin
    with pytest.raises(ValueError, match="twin_prob"):
        AugmentedView(DS(200), tf, seed=3, pair=DS(100), twin_prob=1.5)


def test_head_init_from_class_centres():
    """W_j becomes the mean L2-normalised embedding of class j (hand-computed)."""
    from ranface.models import create_head
    from ranface.train.recognition import init_head_from_centres

    class Feat(torch.nn.Module):  # embedding = mean colour of each channel
        def forward(self, x):
            return x.mean(dim=(2, 3))

    imgs = [(np.full((4, 4, 3), v, np.uint8), y) for v, y in (((10, 200, 30), 0), ((30, 180, 10), 0),
                                                               ((250, 5, 5), 1))]

    class DS:
        def __len__(self):
            return len(imgs)

        def __getitem__(self, i):
            a, y = imgs[i]
            return np.broadcast_to(np.array(a[0, 0]), (4, 4, 3)).astype(np.uint8).copy(), y

    head = create_head("arcface", 3, 3)
    before = head.weight.data[2].clone()
    n, check = init_head_from_centres(head, Feat(), DS(), FaceTransform((0,) * 3, (1,) * 3), torch.device("cpu"))
    assert n == 3 and check["images"] == 3
    def unit(v):
        v = torch.as_tensor(v, dtype=torch.float64)
        return v / v.norm()
    want0 = unit(unit([10, 200, 30]) + unit([30, 180, 10]))
    assert torch.allclose(head.weight.data[0].double(), want0, atol=1e-6)
    assert torch.allclose(head.weight.data[1].double(), unit([250, 5, 5]), atol=1e-6)
    assert torch.equal(head.weight.data[2], before)  # a class with no faces keeps its init


def test_start_check_flags_a_head_that_cannot_be_satisfied(capsys):
    """Features whose other classes are nearly as close as their own: with ArcFace
    m = 0.5 no face ranks its class first (loss above log C); m = 0.05 is fine."""
    import math

    import pytest

    from ranface.models import create_head
    from ranface.train.recognition import start_check

    torch.manual_seed(0)
    centres = torch.nn.functional.normalize(torch.ones(4, 8) + 0.15 * torch.randn(4, 8), dim=1)
    y = torch.arange(4).repeat(5)
    f = centres[y] + 0.01 * torch.randn(20, 8)
    for m, ok in ((0.5, False), (0.05, True)):
        head = create_head("arcface", 8, 4, s=64.0, m=m)
        head.weight.data.copy_(centres)
        c = start_check(head, f, y)
        assert c["log_classes"] == pytest.approx(math.log(4))
        assert c["cosine_acc"] == 1.0  # without the margin every face is right
        assert c["satisfiable"] is ok, (m, c)
        assert ("WARNING" in capsys.readouterr().out) is (not ok)


class _PidFaces:
    """Six tiny faces whose label is the id of the process that decoded them."""

    def __len__(self):
        return 6

    def __getitem__(self, index):
        import os

        return np.full((4, 4, 3), index * 10, np.uint8), os.getpid()


def _stream(num_workers):
    from ranface.data.loader import build_train_loader
    from ranface.train.loop import BatchStream

    view = AugmentedView(_PidFaces(), FaceTransform((0.0,) * 3, (1.0,) * 3, hflip=True), seed=3)
    loader, sampler = build_train_loader(view, 2, num_workers, 1, 0, seed=3)
    return BatchStream(loader, sampler)


def test_loader_workers_persist_across_epochs_and_close():
    """One worker process serves every epoch (re-forked at each epoch of a small set, the
    workers made a GAN run take 1.26-1.40x as long), the batches equal the in-process
    ones, and close() stops the worker."""
    import os

    inline, pooled = _stream(0), _stream(1)
    pids = set()
    for _ in range(3 * 3 + 1):  # three epochs of three batches, and one into the fourth
        a, b = inline.next(), pooled.next()
        assert torch.equal(a[0], b[0])  # same faces, same flips, same order
        pids.update(int(p) for p in b[1])
    assert len(pids) == 1 and os.getpid() not in pids
    pooled.close()
    (pid,) = pids
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the worker was stopped and reaped
    a, b = inline.next(), pooled.next()  # a closed stream starts new workers and goes on
    assert torch.equal(a[0], b[0])
    pooled.close()
