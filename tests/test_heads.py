"""ArcFace / CosFace heads against hand-computed logits."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ranface.errors import ConfigError
from ranface.models import ArcFaceHead, CosFaceHead, create_head, list_heads

# 3 embeddings and 4 class centres in 2-D, chosen so that the angles are easy to
# write down: class j sits at angle a_j, embedding i at angle b_i.
CLASS_ANGLES = np.array([0.0, 0.6, 2.0, math.pi - 0.2])
EMB_ANGLES = np.array([0.3, 2.9, -0.1])
EMB_NORMS = np.array([2.0, 0.5, 7.0])      # heads must ignore norms
CLASS_NORMS = np.array([1.0, 3.0, 0.2, 5.0])
LABELS = [1, 0, -1]                        # row 2: no margin


def unit(angles):
    return np.stack([np.cos(angles), np.sin(angles)], 1)


def make(head_cls, **kw):
    head = head_cls(2, 4, **kw)
    with torch.no_grad():
        head.weight.copy_(torch.tensor(unit(CLASS_ANGLES) * CLASS_NORMS[:, None]))
    emb = torch.tensor(unit(EMB_ANGLES) * EMB_NORMS[:, None], dtype=torch.float32)
    return head, emb


def theta():
    """theta[i, j], the angle between embedding i and class j, in [0, pi]."""
    d = np.abs(EMB_ANGLES[:, None] - CLASS_ANGLES[None, :])
    return np.minimum(d, 2 * math.pi - d)


def test_arcface_logits_by_hand():
    s, m = 64.0, 0.5
    head, emb = make(ArcFaceHead, s=s, m=m)
    th = theta()
    expected = s * np.cos(th)
    # Row 0, class 1: theta = 0.3 -> s cos(0.3 + 0.5).
    expected[0, 1] = s * math.cos(0.3 + 0.5)
    # Row 1, class 0: theta = 2.9 > pi - m, so insightface's fallback
    # cos(theta) - m sin(m) applies instead of cos(theta + m).
    assert th[1, 0] > math.pi - m
    expected[1, 0] = s * (math.cos(th[1, 0]) - m * math.sin(m))
    got = head(emb, torch.tensor(LABELS)).detach()
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-3)
    assert abs(float(got[0, 1]) - 64 * math.cos(0.8)) < 1e-3


def test_arcface_easy_margin():
    s, m = 10.0, 0.5
    head, emb = make(ArcFaceHead, s=s, m=m, easy_margin=True)
    th = theta()
    expected = s * np.cos(th)
    expected[0, 1] = s * math.cos(0.3 + m)     # cos > 0: margin
    expected[1, 0] = s * math.cos(th[1, 0])    # cos < 0: unchanged
    got = head(emb, torch.tensor(LABELS)).detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_cosface_logits_by_hand():
    s, m = 30.0, 0.35
    head, emb = make(CosFaceHead, s=s, m=m)
    expected = s * np.cos(theta())
    expected[0, 1] -= s * m
    expected[1, 0] -= s * m
    got = head(emb, torch.tensor(LABELS)).detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("cls", [ArcFaceHead, CosFaceHead])
def test_no_labels_gives_plain_scaled_cosine(cls):
    head, emb = make(cls, s=16.0)
    got = head(emb).detach().numpy()
    np.testing.assert_allclose(got, 16.0 * np.cos(theta()), rtol=1e-5, atol=1e-4)
    # and all-(-1) labels are the same as no labels
    torch.testing.assert_close(head(emb, torch.full((3,), -1)), head(emb))


def test_default_hyper_parameters():
    arc = ArcFaceHead(8, 3)
    cos = CosFaceHead(8, 3)
    assert (arc.s, arc.m, arc.easy_margin) == (64.0, 0.5, False)
    assert (cos.s, cos.m) == (64.0, 0.35)


def test_arcface_target_logit_decreases_with_angle():
    head = ArcFaceHead(2, 1, s=1.0, m=0.5)
    cos = torch.cos(torch.linspace(0.0, math.pi, 2001))
    target = head.target_logit(cos)
    assert torch.all(target[1:] <= target[:-1] + 1e-6)
    # and always below the plain cosine: the margin only ever penalises the target
    assert torch.all(target <= cos + 1e-6)


@pytest.mark.parametrize("cls", [ArcFaceHead, CosFaceHead])
def test_gradients_finite_at_cos_one(cls):
    head = cls(4, 3)
    with torch.no_grad():
        head.weight.copy_(torch.eye(3, 4))
    emb = torch.eye(3, 4).clone().requires_grad_(True)  # exactly on the class centres
    logits = head(emb, torch.tensor([0, 1, 2]))
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2]))
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(emb.grad).all() and torch.isfinite(head.weight.grad).all()


def test_logits_float32_under_autocast():
    torch.manual_seed(0)
    head = ArcFaceHead(16, 5)
    emb = torch.randn(4, 16)
    labels = torch.tensor([0, 1, 2, 3])
    ref = head(emb, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = head(emb.bfloat16(), labels)
    assert got.dtype == torch.float32
    # bf16 input loses precision (8 bits of mantissa), the head itself does not
    torch.testing.assert_close(got, ref, atol=0.5, rtol=0.02)


def test_training_with_head_separates_classes():
    torch.manual_seed(0)
    head = create_head("arcface", 8, 4, s=16.0, m=0.3)
    emb = torch.nn.Parameter(torch.randn(32, 8))
    labels = torch.arange(32) % 4
    opt = torch.optim.SGD([emb, head.weight], lr=0.5)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(head(emb, labels), labels).backward()
        opt.step()
    pred = head(emb).argmax(1)
    assert torch.equal(pred, labels)


def test_create_head_registry():
    assert list_heads() == ["arcface", "cosface"]
    arc = create_head("arcface", 128, 10, m=0.4, easy_margin=True)
    assert isinstance(arc, ArcFaceHead) and arc.m == 0.4 and arc.easy_margin
    assert arc.weight.shape == (10, 128)
    assert isinstance(create_head("cosface", 8, 2), CosFaceHead)
    with pytest.raises(ConfigError, match="sphereface.*arcface, cosface"):
        create_head("sphereface", 8, 2)
    with pytest.raises(ConfigError, match="easy_margin"):
        create_head("cosface", 8, 2, easy_margin=True)
    with pytest.raises(ConfigError, match="margin"):
        create_head("arcface", 8, 2, m=2.0)
    with pytest.raises(ConfigError):
        create_head("arcface", 8, 0)


def test_bad_shapes_are_rejected():
    head = CosFaceHead(8, 3)
    with pytest.raises(ValueError, match=r"\(N, 8\)"):
        head(torch.randn(2, 7))
    with pytest.raises(ValueError, match="labels"):
        head(torch.randn(2, 8), torch.tensor([0, 1, 2]))
