import numpy as np
import pytest

from ranface.data.samplers import ResumableDistributedSampler, sample_generator


def take(s, n):
    out = []
    it = iter(s)
    for _ in range(n):
        out.append(next(it))
    return out


def test_epoch_is_permutation_and_reproducible():
    s = ResumableDistributedSampler(20, batch_size=4, seed=1)
    a = list(s)
    assert len(a) == 20 and sorted(i for _, i in a) == list(range(20))
    assert a == list(ResumableDistributedSampler(20, batch_size=4, seed=1))
    assert a != list(ResumableDistributedSampler(20, batch_size=4, seed=2))


def test_ranks_partition_global_batches():
    r0 = list(ResumableDistributedSampler(24, 3, num_replicas=2, rank=0, seed=5))
    r1 = list(ResumableDistributedSampler(24, 3, num_replicas=2, rank=1, seed=5))
    single = list(ResumableDistributedSampler(24, 6, num_replicas=1, rank=0, seed=5))
    merged = []
    for b in range(4):
        merged += r0[b * 3:(b + 1) * 3] + r1[b * 3:(b + 1) * 3]
    assert merged == single  # a global batch is the same whatever the split


def test_resume_mid_epoch_and_rollover():
    s = ResumableDistributedSampler(10, 2, seed=0)
    s2 = ResumableDistributedSampler(10, 2, seed=0)
    s2.advance(3)
    rest = list(s2)
    assert rest == list(s)[6:]
    s2.advance(2)
    assert s2.epoch == 1 and s2.consumed == 0
    assert [e for e, _ in s2] == [1] * 10


def test_state_dict_and_world_change():
    s = ResumableDistributedSampler(40, 4, num_replicas=2, rank=0, seed=3)
    s.advance(2)  # 16 global samples consumed
    st = s.state_dict()
    t = ResumableDistributedSampler(40, 4, num_replicas=1, rank=0, seed=3)
    t.load_state_dict(st)
    assert t.consumed == 16 and t.epoch == 0
    assert list(t) == list(ResumableDistributedSampler(40, 4, seed=3))[16:]
    with pytest.raises(ValueError, match="samples"):
        ResumableDistributedSampler(41, 4, seed=3).load_state_dict(st)


def test_drop_last_and_pad():
    assert len(list(ResumableDistributedSampler(10, 4, seed=0, drop_last=True))) == 8
    assert len(list(ResumableDistributedSampler(10, 4, seed=0, drop_last=False))) == 12
    with pytest.raises(ValueError):
        ResumableDistributedSampler(3, 4, drop_last=True)


def test_sample_generator_pure():
    a = sample_generator(1, 2, 3).random(4)
    b = sample_generator(1, 2, 3).random(4)
    c = sample_generator(1, 2, 4).random(4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
