"""MR-GAN losses Eq. 2-6 against hand-computed values; Eq. 5 masks; the expert F."""
import pytest
import torch
from torch import nn

from ranface.gan.losses import (ExpertNetwork, adversarial_d_loss, adversarial_g_loss,
                                attention_loss, discriminator_objective, expert_embeddings,
                                generator_objective, perceptual_loss, pixel_loss)
from ranface.gan.regions import attention_target, center_box
from ranface.models import create_backbone
from ranface.models.registry import BackboneSpec


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------ Eq. 5 masks
def test_eq5_centre_patch_pixels_counted():
    t = attention_target(112)
    assert t.shape == (1, 1, 112, 112)
    assert int((t == 0).sum()) == 85 * 82 == 6970
    assert int((t == 1).sum()) == 112 * 112 - 6970 == 5574
    rows = (t[0, 0] == 0).any(dim=1).nonzero().flatten()
    cols = (t[0, 0] == 0).any(dim=0).nonzero().flatten()
    # 82 rows (height) x 85 columns (width), centred
    assert (int(rows[0]), int(rows[-1]), len(rows)) == (15, 96, 82)
    assert (int(cols[0]), int(cols[-1]), len(cols)) == (13, 97, 85)
    # scaled with the face size: at 56, round(42.5) = 42 wide, 41 high
    assert center_box(56) == (7, 7, 49, 48)
    assert int((attention_target(56) == 0).sum()) == 42 * 41


def test_eq5_attention_loss_hand_values():
    n_c, n_e, tot = 6970, 5574, 112 * 112
    zeros = torch.zeros(2, 1, 112, 112)
    assert attention_loss(zeros).item() == pytest.approx(n_e / tot)  # the edge misses 1
    assert attention_loss(zeros + 1).item() == pytest.approx(n_c / tot)  # the centre misses 1
    assert attention_loss(zeros + 0.3).item() == pytest.approx((0.3 * n_c + 0.7 * n_e) / tot)
    perfect = attention_target(112).expand(2, 1, 112, 112)
    assert attention_loss(perfect).item() == 0.0
    with pytest.raises(ValueError):
        attention_loss(torch.zeros(2, 3, 112, 112))


# ------------------------------------------------------------------ Eq. 2-4, 6
def test_eq4_pixel_loss():
    a = torch.tensor([[[[0.5, -0.5], [1.0, 0.0]]]])
    b = torch.tensor([[[[0.0, 0.0], [0.0, 0.0]]]])
    assert pixel_loss(a, b).item() == pytest.approx((0.5 + 0.5 + 1.0 + 0.0) / 4)


def test_eq3_lsgan_losses():
    names = ("global", "eyes", "nose", "mouth")
    shapes = [(2, 1, 4, 4), (2, 1, 2, 3), (2, 1, 2, 2), (2, 1, 1, 3)]
    real = {k: torch.full(s, 0.8) for k, s in zip(names, shapes)}
    fake = {k: torch.full(s, 0.3) for k, s in zip(names, shapes)}
    assert adversarial_d_loss(real, fake).item() == pytest.approx(4 * (0.2 ** 2 + 0.3 ** 2))
    assert adversarial_g_loss(fake).item() == pytest.approx(4 * 0.7 ** 2)
    # each discriminator's mean, summed over k
    fake["eyes"] = torch.tensor([[[[0.0, 1.0, 2.0]]]])
    assert adversarial_g_loss(fake).item() == pytest.approx(3 * 0.49 + (1 + 0 + 1) / 3)
    with pytest.raises(ValueError):
        adversarial_d_loss(real, {"global": fake["global"]})


def test_eq2_perceptual_loss_and_no_grad_to_target():
    fx = torch.tensor([[1.0, 2.0, 3.0, 4.0]], requires_grad=True)
    fgx = torch.tensor([[1.5, 2.0, 2.0, 4.0]], requires_grad=True)
    loss = perceptual_loss(fx, fgx)
    assert loss.item() == pytest.approx((0.5 + 0 + 1 + 0) / 4)
    loss.backward()
    assert fx.grad is None and fgx.grad is not None
    both = perceptual_loss({"embedding": fx, "stage1": torch.ones(1, 2, 2, 2)},
                           {"embedding": fgx, "stage1": torch.zeros(1, 2, 2, 2)})
    assert both.item() == pytest.approx(0.375 + 1.0)


def test_eq6_objectives():
    adv, perc, pix, att = (torch.tensor(v) for v in (1.0, 0.1, 0.5, 0.25))
    assert generator_objective(adv, perc, pix, att).item() == pytest.approx(
        2 * 1.0 + 20 * 0.1 + 20 * 0.5 + 0.4 * 0.25)
    assert generator_objective(adv, perc, pix, att, use_pixel=False).item() == pytest.approx(
        2 * 1.0 + 20 * 0.1 + 0.4 * 0.25)
    assert generator_objective(adv, perc, pix, att, (1, 2, 3, 4)).item() == pytest.approx(
        1 + 0.2 + 1.5 + 1.0)
    assert discriminator_objective(torch.tensor(0.75)).item() == pytest.approx(1.5)


# ------------------------------------------------------------------ expert F
class Probe(nn.Module):
    """A 'backbone' that returns its input's channel means: makes preprocessing visible."""

    def __init__(self, spec):
        super().__init__()
        self.spec = spec
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x.mean(dim=(2, 3)) * self.w


def test_expert_preprocess_follows_the_backbone_spec():
    spec = BackboneSpec(input_size=(150, 150), embedding_size=3, mean=(100.0, 110.0, 120.0),
                        std=(50.0, 60.0, 70.0), color="bgr")
    ex = ExpertNetwork(Probe(spec), normalize=False)
    x = torch.empty(1, 3, 112, 112)
    x[:, 0], x[:, 1], x[:, 2] = 1.0, 0.0, -1.0  # RGB pixels 255, 127.5, 0
    x.requires_grad_(True)
    inp = ex.preprocess(x)
    assert inp.shape == (1, 3, 150, 150)
    # BGR order: channel 0 is blue (pixel 0), channel 2 is red (255)
    expect = torch.tensor([(0 - 100) / 50, (127.5 - 110) / 60, (255 - 120) / 70])
    assert torch.allclose(inp.mean(dim=(2, 3))[0], expect, atol=1e-4)
    f = ex.features(x)["embedding"]
    f.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0  # differentiable to G(x)
    assert ex.backbone.w.grad is None and not ex.backbone.w.requires_grad


def test_expert_is_frozen_and_embeddings_normalised():
    bb = create_backbone("mobilefacenet", embedding_size=32)
    bb.train()
    ex = ExpertNetwork(bb)
    assert not bb.training and not any(p.requires_grad for p in bb.parameters())
    x = torch.rand(3, 3, 32, 32) * 2 - 1  # resized to 112 inside
    e = expert_embeddings(ex, x, batch_size=2)
    assert e.shape == (3, 32)
    assert torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-5)
    feats = ExpertNetwork(bb, stages=(1,)).features(x)
    assert set(feats) == {"embedding", "stage1"} and feats["stage1"].shape[:2] == (3, 64)


def test_frozen_prelu_matches_prelu_values_and_input_gradients():
    from ranface.gan.losses import FrozenPReLU, freeze_prelu

    torch.manual_seed(0)
    for n in (1, 8):
        p = nn.PReLU(n)
        with torch.no_grad():
            p.weight.uniform_(-0.5, 0.7)
        x0 = torch.randn(3, 8, 5, 5)
        x0[0, :, 0, 0] = 0.0  # prelu's subgradient at 0 is the slope's
        x1 = x0.clone().requires_grad_()
        x2 = x0.clone().requires_grad_()
        y1, y2 = p(x1), FrozenPReLU(p)(x2)
        assert torch.equal(y1, y2)
        g = torch.randn_like(y1)
        y1.backward(g)
        y2.backward(g)
        assert torch.equal(x1.grad, x2.grad)  # exact: t + a * (g - t) (losses._FrozenPReLUFn)
        with torch.no_grad():  # no graph: prelu itself
            assert torch.equal(FrozenPReLU(p)(x0), p(x0))
        xb = x0.bfloat16().requires_grad_()  # under autocast the expert's maps are bf16
        yb = FrozenPReLU(p)(xb)
        yb.backward(g.bfloat16())
        assert yb.dtype == xb.grad.dtype == torch.bfloat16
        ref = torch.where(x0 > 0, g, g * p.weight.detach().view(1, -1, 1, 1))
        assert torch.allclose(xb.grad.float(), ref, rtol=2e-2, atol=1e-2)
    # an expert's backbone gets them; the embedding is unchanged
    net = create_backbone("mobilefacenet").eval()
    x = torch.rand(2, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        ref = net(x)
    expert = ExpertNetwork(net, normalize=False)
    assert not any(isinstance(m, nn.PReLU) for m in expert.backbone.modules())
    assert any(isinstance(m, FrozenPReLU) for m in expert.backbone.modules())
    with torch.no_grad():
        assert torch.allclose(expert.backbone(x), ref, atol=1e-5)
    assert freeze_prelu(expert.backbone) == 0


def test_fold_conv_bn_keeps_the_frozen_function_and_input_gradients():
    from ranface.models.fuse import fold_conv_bn

    torch.manual_seed(1)
    net = create_backbone("mobilefacenet")
    for m in net.modules():  # trained-like statistics, so that folding is not a no-op
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    net.eval()
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    x1 = torch.rand(2, 3, 112, 112, requires_grad=True)
    ref = net(x1)
    ref.sum().backward()
    import copy

    folded = copy.deepcopy(net)
    assert fold_conv_bn(folded) == n_bn > 40
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert fold_conv_bn(folded) == 0
    x2 = x1.detach().clone().requires_grad_()
    out = folded(x2)
    out.sum().backward()
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-4)
    assert torch.allclose(x2.grad, x1.grad, rtol=1e-3, atol=1e-5)
    # the expert folds its backbone: same embedding
    expert = ExpertNetwork(copy.deepcopy(net), normalize=False)
    assert not any(p.requires_grad for p in expert.backbone.parameters())  # the fused convs stay frozen
    with torch.no_grad():
        assert torch.allclose(expert.backbone(x1), ref, rtol=1e-4, atol=1e-4)
