"""MR-GAN networks: generator G (Eq. 1, multi-resolution inputs, fusion units, z, local
generator), discriminators D_1..D_4, face regions, generator.pt round trip."""
import pytest
import torch

from ranface.align.templates import ARCFACE_112
from ranface.degrade import down_up
from ranface.errors import CheckpointError
from ranface.gan.config import DiscriminatorConfig, GeneratorConfig, profile_configs
from ranface.gan.discriminators import DISCRIMINATOR_NAMES, MultiRegionDiscriminator
from ranface.gan.generator import (FusionUnit, MRGenerator, attention_blend, generator_package,
                                   load_generator, multi_resolution_inputs)
from ranface.gan.regions import REGION_BOXES_112, center_box, region_boxes
from ranface.train.checkpoint import save_checkpoint

TINY = dict(base_width=4, num_stages=2, blocks_per_stage=1, z_dim=4, local_width=4, fuse_width=4)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: OpenMP spinning makes tiny nets 50x slower
    yield
    torch.set_num_threads(n)


def faces(n=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def tiny_G(size=32, **kw):
    torch.manual_seed(0)
    return MRGenerator(GeneratorConfig(**{**TINY, **kw}), face_size=size)


def test_generator_shapes_and_ranges():
    G = tiny_G()
    out = G(faces(3), generator=torch.Generator().manual_seed(1))
    for name in ("fake", "G_R", "G_g", "x_r1", "x_r2", "x_r3"):
        assert getattr(out, name).shape == (3, 3, 32, 32), name
    assert out.G_A.shape == (3, 1, 32, 32)
    assert out.z.shape == (3, 4)
    out = type(out)(**{k: v.detach() if torch.is_tensor(v) else v for k, v in vars(out).items()})
    assert 0.0 <= float(out.G_A.min()) and float(out.G_A.max()) <= 1.0
    assert -1.0 <= float(out.fake.min()) and float(out.fake.max()) <= 1.0
    assert -1.0 <= float(out.G_R.min()) and float(out.G_R.max()) <= 1.0
    boxes = region_boxes(32)
    for r, patch in out.local.items():
        x0, y0, x1, y1 = boxes[r]
        assert patch.shape == (3, 3, y1 - y0, x1 - x0)


def test_paper_profile_at_112_shapes():
    gcfg, dcfg = profile_configs("small")
    G = MRGenerator(gcfg)
    D = MultiRegionDiscriminator(dcfg)
    with torch.no_grad():
        out = G(faces(1, 112))
        scores = D(out.fake)
    assert out.fake.shape == (1, 3, 112, 112)
    assert {k: tuple(v.shape) for k, v in scores.items()} == {
        "global": (1, 1, 14, 14), "eyes": (1, 1, 8, 16), "nose": (1, 1, 8, 8), "mouth": (1, 1, 6, 12)}


def test_eq1_attention_blend_is_exact():
    G = tiny_G()
    out = G(faces(2))
    expected = out.G_A * out.x_r3 + (1 - out.G_A) * out.G_R
    assert torch.equal(out.G_g, expected)
    # the function itself on hand values: G_A = 1 keeps x_r3, G_A = 0 takes G_R
    a = torch.tensor([[[[1.0, 0.0, 0.25]]]])
    x3 = torch.tensor([[[[0.5, 0.5, 0.5]]]])
    gr = torch.tensor([[[[-1.0, -1.0, -1.0]]]])
    assert torch.allclose(attention_blend(a, x3, gr), torch.tensor([[[[0.5, -1.0, -0.625]]]]))


def test_multi_resolution_inputs_are_down_up_blurs():
    x = faces(2, 32, seed=3)
    x1, x2, x3 = multi_resolution_inputs(x, (0.5, 0.25, 0.125))
    assert torch.equal(x1, down_up(x, 16)) and torch.equal(x2, down_up(x, 8))
    assert torch.equal(x3, down_up(x, 4))

    def hf(t):  # high-frequency energy: lower for stronger blur
        return float((t[..., 1:] - t[..., :-1]).abs().mean())

    assert hf(x) > hf(x1) > hf(x2) > hf(x3)


def test_different_z_give_different_outputs_same_z_same_output():
    G = tiny_G(residual=False)  # a residual G starts at x_r3 for every z (tested below)
    x = faces(2)
    z1, z2 = torch.randn(2, 4, generator=torch.Generator().manual_seed(1)), \
        torch.randn(2, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a, b, a2 = G(x, z1).fake, G(x, z2).fake, G(x, z1).fake
    assert torch.equal(a, a2)
    assert float((a - b).abs().max()) > 1e-4
    # z drawn from a torch.Generator when not given: reproducible per seed
    with torch.no_grad():
        c = G(x, generator=torch.Generator().manual_seed(7))
        d = G(x, generator=torch.Generator().manual_seed(7))
    assert torch.equal(c.fake, d.fake) and torch.equal(c.z, d.z)


def test_fusion_unit_concatenates_and_gate_cuts_high_resolution_flow():
    torch.manual_seed(0)
    fu = FusionUnit(6, 4, reduction=2)
    hi, lo = torch.randn(2, 6, 5, 5), torch.randn(2, 4, 5, 5)
    assert fu(hi, lo).shape == (2, 10, 5, 5)
    zero = torch.zeros(2)
    # gate 0: the higher-resolution stream contributes nothing
    assert torch.allclose(fu(hi, lo, zero), fu(torch.randn(2, 6, 5, 5), lo, zero))
    assert not torch.allclose(fu(hi, lo, torch.ones(2)), fu(torch.randn(2, 6, 5, 5), lo, torch.ones(2)))


def test_generator_rejects_wrong_face_size():
    G = tiny_G()
    with pytest.raises(ValueError, match=r"\(N, 3, 32, 32\)"):
        G(faces(1, 40))
    with pytest.raises(ValueError, match="multiple of 8"):
        MRGenerator(GeneratorConfig(**TINY), face_size=30)


def test_region_boxes_hold_the_template_landmarks():
    b = region_boxes(112)
    assert b == REGION_BOXES_112

    def inside(pt, box):
        return box[0] <= pt[0] < box[2] and box[1] <= pt[1] < box[3]

    le, re, nose, lm, rm = ARCFACE_112
    assert inside(le, b["eyes"]) and inside(re, b["eyes"])
    assert inside(nose, b["nose"])
    assert inside(lm, b["mouth"]) and inside(rm, b["mouth"])
    # scaled with the face size
    assert region_boxes(56) == {"eyes": (12, 18, 44, 34), "nose": (20, 26, 36, 42), "mouth": (16, 40, 40, 52)}
    assert center_box(112) == (13, 15, 98, 97)  # 85 wide, 82 high


def test_discriminators_see_only_their_region():
    torch.manual_seed(0)
    D = MultiRegionDiscriminator(DiscriminatorConfig(base_width=4), 32)
    x = faces(2)
    out = D(x)
    assert tuple(out) == DISCRIMINATOR_NAMES == ("global", "eyes", "nose", "mouth")
    boxes = region_boxes(32)
    y = x.clone()
    x0, y0, x1, y1 = boxes["mouth"]
    y0 = boxes["nose"][3]  # the boxes overlap by a few rows; change the mouth's own rows
    assert y0 < y1
    y[..., y0:y1, x0:x1] = -x[..., y0:y1, x0:x1]
    out2 = D(y)
    assert torch.equal(out["eyes"], out2["eyes"]) and torch.equal(out["nose"], out2["nose"])
    assert not torch.equal(out["mouth"], out2["mouth"])
    assert not torch.equal(out["global"], out2["global"])
    # LSGAN: raw scores, not squashed into (0, 1)
    assert all(v.dtype == torch.float32 for v in out.values())


def test_generator_checkpoint_round_trip_and_errors(tmp_path):
    G = tiny_G()
    path = str(tmp_path / "generator.pt")
    save_checkpoint(path, generator_package(G, {"note": 1}, step=5))
    G2, info = load_generator(path)
    assert info["face_size"] == 32 and info["step"] == 5
    x, z = faces(2), torch.randn(2, 4)
    with torch.no_grad():
        assert torch.equal(G.eval()(x, z).fake, G2(x, z).fake)
    assert not any(p.requires_grad for p in G2.parameters())
    # a checkpoint whose stored config does not fit its weights
    pkg = generator_package(G)
    pkg["generator"]["base_width"] = 8
    save_checkpoint(str(tmp_path / "other.pt"), pkg)
    with pytest.raises(CheckpointError, match="does not fit the MR-GAN generator"):
        load_generator(str(tmp_path / "other.pt"))
    # a recognition model is not a generator
    save_checkpoint(str(tmp_path / "model.pt"), {"format": "ranface-model/1", "state_dict": {}})
    with pytest.raises(CheckpointError, match="not an MR-GAN generator checkpoint"):
        load_generator(str(tmp_path / "model.pt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no generator.pt"):
        load_generator(str(tmp_path / "empty"))


def test_merge_starts_as_pass_through_of_global_output():
    # >= 6 hidden channels: the pass-through initialisation applies
    G = tiny_G(size=64, fuse_width=8, residual=False)
    with torch.no_grad():
        out = G(faces(2, size=64))
    assert float((out.fake - torch.tanh(out.G_g)).abs().max()) < 0.05
    assert float((out.fake - torch.tanh(out.G_g)).abs().max()) > 0  # local patches still enter


def test_residual_generator_starts_at_x_r3_and_learns_away_from_it():
    """generator.residual: G^R = clamp(x_r3 + R), patches = crop + residual, clamp at the
    end; at initialisation G(x) is x_r3 (bicubic at the level's width) for every z, and one
    optimizer step moves G(x) off it in a z-dependent way."""
    G = tiny_G(size=64, fuse_width=8, level_widths=[6, 16])
    x = faces(3, size=64)
    widths = torch.tensor([6, 10, 16])
    z1, z2 = torch.randn(3, 4), torch.randn(3, 4)
    out = G(x, z1, widths=widths)
    # equal up to float rounding of the feathered blend and the 1x1 convolutions
    assert torch.allclose(out.fake, out.x_r3, atol=1e-6) and torch.equal(out.G_R, out.x_r3)
    assert torch.allclose(G(x, z2, widths=widths).fake, out.fake, atol=1e-6)
    opt = torch.optim.Adam(G.parameters(), lr=1e-2)
    (out.fake - 0.5).abs().mean().backward()
    assert float(G.head_R.weight.grad.abs().sum()) > 0  # the zero-started layers learn
    opt.step()
    with torch.no_grad():
        a, b = G(x, z1, widths=widths), G(x, z2, widths=widths).fake
    assert float((a.fake - a.x_r3).abs().max()) > 1e-3
    assert float((a.fake - b).abs().max()) > 1e-5
    assert -1.0 <= float(a.fake.min()) and float(a.fake.max()) <= 1.0


def test_generator_saved_before_residual_option_loads_as_tanh(tmp_path):
    G = tiny_G(residual=False)
    pkg = generator_package(G)
    del pkg["generator"]["residual"]  # what generator.pt files of earlier versions hold
    save_checkpoint(str(tmp_path / "g.pt"), pkg)
    G2, _ = load_generator(str(tmp_path / "g.pt"))
    assert G2.residual is False
    x, z = faces(2), torch.randn(2, 4)
    with torch.no_grad():
        assert torch.equal(G.eval()(x, z).fake, G2(x, z).fake)


@pytest.mark.parametrize("template,size", [("arcface", 112), ("dlib", 112), ("dlib", 150)])
def test_region_boxes_hold_their_landmarks(template, size):
    """Eyes box holds both eyes, nose box the nose tip, mouth box both corners, for every
    alignment template."""
    from ranface.align.templates import template_for
    from ranface.gan.regions import region_boxes

    pts = template_for((size, size), template)
    boxes = region_boxes(size, template)

    def inside(p, b):
        return b[0] <= p[0] < b[2] and b[1] <= p[1] < b[3]

    assert inside(pts[0], boxes["eyes"]) and inside(pts[1], boxes["eyes"])
    assert inside(pts[2], boxes["nose"])
    assert inside(pts[3], boxes["mouth"]) and inside(pts[4], boxes["mouth"])
    assert all(0 <= v <= size for b in boxes.values() for v in b)


# ------------------------------------------------------------ issue 12: levels, seamless merge
def test_z_selects_a_level_that_sets_x_r3_and_is_coded_into_g():
    from ranface.gan.generator import level_code, sample_widths

    G = tiny_G(level_widths=[6, 16])
    assert G.levels == (6, 16)
    x, z = faces(3), torch.randn(3, 4)
    w = torch.tensor([6, 11, 16])
    with torch.no_grad():
        out = G(x, z, widths=w)
    # x_r3 of each face is that face shrunk to its own width; x_r2 / x_r1 keep the scale ratios
    for i, s in enumerate(w.tolist()):
        assert torch.allclose(out.x_r3[i:i + 1], down_up(x[i:i + 1], s), atol=1e-6)
        assert torch.allclose(out.x_r2[i:i + 1], down_up(x[i:i + 1], min(32, 2 * s)), atol=1e-6)
    assert torch.equal(out.widths, w)
    # the level is an input of G: same z, other level -> other face
    with torch.no_grad():
        other = G(x, z, widths=torch.tensor([16, 11, 6])).fake
    assert not torch.allclose(out.fake[0], other[0]) and torch.allclose(out.fake[1], other[1])
    assert torch.allclose(level_code(torch.tensor([6, 16]), 6, 16).view(-1), torch.tensor([-1.0, 1.0]))
    # log-uniform widths stay in range, reach both ends, and come from the generator alone
    a = sample_widths(4000, 6, 16, torch.Generator().manual_seed(0), law="log")
    assert int(a.min()) == 6 and int(a.max()) == 16
    assert torch.equal(a, sample_widths(4000, 6, 16, torch.Generator().manual_seed(0), law="log"))
    # as many faces below the geometric middle (~9.8 px) as above it
    assert abs(float((a < 10).float().mean()) - 0.5) < 0.1
    # uniform (the default, every degrader's law): torch.randint's draws, 4/11 below 10 px
    u = sample_widths(4000, 6, 16, torch.Generator().manual_seed(0))
    assert torch.equal(u, torch.randint(6, 17, (4000,), generator=torch.Generator().manual_seed(0)))
    assert abs(float((u < 10).float().mean()) - 4 / 11) < 0.03
    with pytest.raises(ValueError, match="width law"):
        sample_widths(3, 6, 16, law="cubic")


def test_level_band_is_the_shared_eye_to_mouth_band():
    from ranface.align.select import band_to_widths

    G = tiny_G(size=112, level_band=[10.0, 30.0], template="dlib")
    assert G.levels == band_to_widths((10.0, 30.0), "dlib")


def test_feathered_masks_fade_to_zero_at_the_box_border():
    from ranface.gan.regions import box_mask, feather_mask

    box = (8, 8, 24, 20)
    m = feather_mask(box, (32, 32), 0.25)[0, 0]
    assert float(m[14, 16]) == pytest.approx(1.0) and float(m[:, :8].abs().max()) == 0.0
    assert float(m[8, 16]) < 0.1 and float(m[19, 16]) < 0.1  # edge rows of the box almost 0
    assert torch.all(m[8:14, 16].diff() >= 0)  # monotone ramp towards the interior
    assert torch.equal(feather_mask(box, (32, 32), 0.0), box_mask(box, (32, 32)))


def test_seamless_merge_inputs_have_no_step_at_the_region_borders():
    """Feathered: every merge input is continuous across a box border (the patch channel
    equals G_g outside the box and stays close to it on the box's outer pixels).
    Hard boxes: the patch channel jumps from 0 to the patch there (the seam)."""
    def border(G):
        g = torch.Generator().manual_seed(0)
        G_g = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
        x0, y0, x1, y1 = G.boxes["eyes"]
        local = {r: torch.rand(2, 3, b[3] - b[1], b[2] - b[0], generator=g) * 2 - 1 for r, b in G.boxes.items()}
        inp = G.merge_inputs(G_g, local)
        eyes, mask = inp[:, 3:6], inp[:, 12:13]
        rows = slice(y0 + 2, y1 - 2)
        outside = (eyes[..., rows, x0 - 1] - G_g[..., rows, x0 - 1]).abs().max()
        edge = (eyes[..., rows, x0] - G_g[..., rows, x0]).abs().max()
        return float(outside), float(edge), float(mask[..., rows, x0].max())

    out_s, edge_s, m_s = border(tiny_G(feather=0.25))
    assert out_s == 0.0 and edge_s < 0.3 and m_s < 0.15  # at 32 px the ramp is ~2 px wide
    out_h, edge_h, m_h = border(tiny_G(feather=0.0))
    assert out_h > 0.5 and m_h == 1.0  # zero canvas outside: a step of the patch's size


def test_compiled_generator_does_not_recompile_for_new_widths():
    """G's per-face input resizes run eagerly (MRGenerator.inputs), so a compiled G keeps one
    graph however the drawn widths change; otherwise every new set of widths recompiled it
    (dynamo's limit of 8, then silent eager fallback: the compiled step was slower)."""
    G = tiny_G(level_widths=[6, 16])
    Gc = torch.compile(G, backend="eager", dynamic=False)
    x, z = faces(3), torch.randn(3, 4)
    torch._dynamo.reset()
    with torch.no_grad():
        first = Gc(x, z, widths=torch.tensor([6, 11, 16])).fake
        with torch._dynamo.config.patch(error_on_recompile=True):
            for w in ([7, 7, 9], [16, 6, 12], [8, 13, 15]):
                out = Gc(x, z, widths=torch.tensor(w))
                assert torch.allclose(out.fake, G(x, z, widths=torch.tensor(w)).fake, atol=1e-6)
    assert torch.allclose(first, G(x, z, widths=torch.tensor([6, 11, 16])).fake, atol=1e-6)
