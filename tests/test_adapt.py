"""Feature adaption network pieces (paper §3.4, Eq. 7-10) on hand-computed values, and
one MR step on toy modules: who changes in which phase, who gets gradient from what."""
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import make_face_folder
from ranface.adapt import (FeatureDiscriminator, Translator, feature_loss, gate_weight, kl_divergence,
                           lsgan_d_loss, lsgan_g_loss, probability_loss, total_loss, translation_gate)
from ranface.adapt.trainer import AdaptionLoss, DiscriminatorLoss, LRStream, load_lr_stream, open_paired
from ranface.config import AdaptConfig, TrainConfig, load_config
from ranface.errors import CheckpointError, ConfigError, DataError
from ranface.models import create_head
from ranface.train.distributed import DistInfo
from ranface.train.loop import RepeatStream, Phase, Trainer, TrainerOptions
from ranface.train.stats import read_metrics

@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # on a shared 2-core machine two intra-op threads spin against other jobs (measured
    # 3-20x slower per MobileFaceNet step than one thread); restored afterwards
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------- Eq. 8


def test_gate_weight_hand_values():
    d = torch.tensor([[0.5], [0.0], [1.0], [0.8], [0.2], [1.3], [2.0], [-1.0]])
    w = gate_weight(d)
    # 1 - |d - 0.5|, clamped to [0, 1]
    expect = torch.tensor([[1.0], [0.5], [0.5], [0.7], [0.7], [0.2], [0.0], [0.0]])
    assert torch.allclose(w, expect, atol=1e-6)


def test_translation_gate_hand_values():
    t = torch.tensor([[1.0, 0.0], [2.0, 2.0], [1.0, 1.0]])
    f = torch.tensor([[0.0, 1.0], [0.0, 0.0], [3.0, -1.0]])
    d = torch.tensor([[0.8], [0.5], [0.0]])  # W = 0.7, 1.0, 0.5
    out, w = translation_gate(t, f, d)
    assert torch.allclose(w.squeeze(1), torch.tensor([0.7, 1.0, 0.5]))
    expect = torch.tensor([[0.7, 0.3], [2.0, 2.0], [2.0, 0.0]])
    assert torch.allclose(out, expect, atol=1e-6)


def test_gate_gradient_switch():
    d = torch.tensor([[0.8], [0.2]], requires_grad=True)
    assert not gate_weight(d, grad=False).requires_grad
    w = gate_weight(d, grad=True)
    w.sum().backward()
    # dW/dD = -sign(D - 0.5)
    assert torch.allclose(d.grad, torch.tensor([[-1.0], [1.0]]))


# ---------------------------------------------------------------------------- Eq. 7, 9, 10


def test_lsgan_hand_values():
    d_real = torch.tensor([[0.8], [1.2]])
    d_fake = torch.tensor([[0.1], [0.3]])
    # E[(D(real) - 1)^2] + E[D(fake)^2] = (0.04 + 0.04)/2 + (0.01 + 0.09)/2
    assert lsgan_d_loss(d_real, d_fake).item() == pytest.approx(0.09, abs=1e-6)
    # E[(D(fake) - 1)^2] = (0.81 + 0.49)/2
    assert lsgan_g_loss(d_fake).item() == pytest.approx(0.65, abs=1e-6)


def test_kl_direction_hand_example():
    p = torch.tensor([[0.9, 0.1]])
    q = torch.tensor([[0.5, 0.5]])
    kl_pq = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)  # 0.368064
    kl_qp = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)  # 0.510826
    assert abs(kl_pq - kl_qp) > 0.1  # the direction matters on this example
    assert kl_divergence(p.log(), q.log()).item() == pytest.approx(kl_pq, abs=1e-6)
    assert kl_divergence(q.log(), p.log()).item() == pytest.approx(kl_qp, abs=1e-6)
    # L_p = KL(p^Real || p^Translate): the first argument is the real (target) side
    logits_real, logits_translate = p.log() + 3.0, q.log() - 1.0  # softmax is shift-invariant
    assert probability_loss(logits_real, logits_translate).item() == pytest.approx(kl_pq, abs=1e-6)


def test_probability_loss_gradient_only_to_translate():
    real = torch.tensor([[2.0, 0.0, -1.0]], requires_grad=True)
    trans = torch.tensor([[0.0, 1.0, 0.0]], requires_grad=True)
    probability_loss(real, trans).backward()
    assert real.grad is None
    # d KL / d logits_q = q - p
    p = torch.softmax(real.detach(), 1)
    q = torch.softmax(trans.detach(), 1)
    assert torch.allclose(trans.grad, q - p, atol=1e-6)


def test_feature_loss_hand_values_and_scale_invariance():
    a = torch.tensor([[3.0, 4.0]])  # normalised: (0.6, 0.8)
    b = torch.tensor([[1.0, 0.0]])
    # per-element means (reduction='element')
    assert feature_loss(a, b, "l1", "element").item() == pytest.approx((0.4 + 0.8) / 2, abs=1e-6)
    assert feature_loss(a, b, "l2", "element").item() == pytest.approx((0.16 + 0.64) / 2, abs=1e-6)
    assert feature_loss(a * 7, b * 0.1, "l1", "element").item() == pytest.approx(0.6, abs=1e-6)
    # per-sample norms (the default): ||(−0.4, 0.8)||_2 = sqrt(0.8), ||.||_1 = 1.2
    assert feature_loss(a, b).item() == pytest.approx(0.8 ** 0.5, abs=1e-6)
    assert feature_loss(a, b, "l1").item() == pytest.approx(1.2, abs=1e-6)
    # batch mean of per-sample norms: a second, identical pair adds 0
    two = feature_loss(torch.cat([a, b]), torch.cat([b, b]))
    assert two.item() == pytest.approx(0.8 ** 0.5 / 2, abs=1e-6)
    # finite gradient at zero distance
    z = torch.tensor([[1.0, 0.0]], requires_grad=True)
    feature_loss(z, b).backward()
    assert torch.isfinite(z.grad).all()
    with pytest.raises(ConfigError, match="lf_distance"):
        feature_loss(a, b, "cosine")
    with pytest.raises(ConfigError, match="lf_reduction"):
        feature_loss(a, b, "l2", "sum")


def test_total_loss_weights():
    one = torch.tensor(1.0)
    assert total_loss(one, 2 * one, 3 * one, 4 * one, 0.05, 0.04, 10.0).item() == pytest.approx(
        1 + 0.1 + 0.12 + 40, abs=1e-5)


# ---------------------------------------------------------------------------- modules


def test_translator_layout():
    t = Translator(16, hidden=8)
    kinds = [type(m) for m in t]
    assert kinds == [nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert t[2].in_features == 16 and t[2].out_features == 8 and t[5].out_features == 16
    assert Translator(16)(torch.randn(5, 16)).shape == (5, 16)


def test_discriminator_frozen_scoring():
    torch.manual_seed(0)
    d = FeatureDiscriminator(8, hidden=16)
    x = torch.randn(4, 8, requires_grad=True)
    s = d.score_frozen(x)
    d.eval()  # (train mode would advance spectral norm's power iteration first)
    assert s.shape == (4, 1) and torch.allclose(s, d(x))
    d.train()
    s.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in d.parameters())
    # no batch statistics: a sample's score does not depend on its batch mates
    d.eval()
    assert torch.allclose(d(x[:1]), d(x)[:1])


# ---------------------------------------------------------------------------- one MR step




def toy_backbone():
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 16), nn.BatchNorm1d(16))


def make_mr(tmp_path, adapt=None, translator=True):
    torch.manual_seed(0)
    a = adapt or AdaptConfig()
    backbone, lr_bb = toy_backbone(), toy_backbone()
    head = create_head("arcface", 16, 3)
    lr_head = create_head("arcface", 16, 3)
    for m in (lr_bb, lr_head):
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)
    tr = Translator(16) if translator else None
    disc = FeatureDiscriminator(16, hidden=32)
    opt = torch.optim.SGD(list(backbone.parameters()) + list(head.parameters())
                          + (list(tr.parameters()) if tr is not None else []), lr=0.1, momentum=0.9)
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-2, betas=(0.5, 0.999))
    phase_d = Phase("feat_D", opt_d, DiscriminatorLoss(disc), [disc])
    loss = AdaptionLoss(backbone, head, tr, disc, LRStream(lr_bb, lr_head, {}), a, lambda: phase_d.runs)
    phase_r = Phase("recog", opt, loss, [backbone, head] + ([tr] if tr is not None else []))
    g = torch.Generator().manual_seed(1)
    x_hr = torch.randn(6, 3, 4, 4, generator=g)
    x_lr = x_hr + 0.3 * torch.randn(6, 3, 4, 4, generator=g)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    batch = (x_hr, x_lr, y, [])
    state = {"backbone": backbone, "head": head, "disc": disc}
    if tr is not None:
        state["translator"] = tr
    trainer = Trainer(run_dir=str(tmp_path), phases=[phase_r, phase_d], state_modules=state,
                      stream=RepeatStream(batch), to_device=lambda b: b, device=torch.device("cpu"),
                      precision="fp32", dist=DistInfo(), config={},
                      options=TrainerOptions(max_steps=8, log_every=1, ckpt_every=10**6, progress=False,
                                             tensorboard=False))
    mods = dict(backbone=backbone, head=head, translator=tr, disc=disc, lr_bb=lr_bb, lr_head=lr_head)
    return trainer, phase_r, phase_d, loss, batch, mods


def snapshot(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_mr_step_who_changes_where(tmp_path):
    trainer, phase_r, phase_d, _, batch, m = make_mr(tmp_path)
    lr_before = {k: snapshot(m[k]) for k in ("lr_bb", "lr_head")}
    d0, b0, t0 = snapshot(m["disc"]), snapshot(m["backbone"]), snapshot(m["translator"])
    cache = {}
    trainer._run_phase(phase_r, batch, cache)
    assert same(snapshot(m["disc"]), d0)  # D untouched by the recognition phase ...
    assert all(p.grad is None for p in m["disc"].parameters())  # ... not even a stray gradient
    assert not same(snapshot(m["backbone"]), b0) and not same(snapshot(m["translator"]), t0)
    b1, t1 = snapshot(m["backbone"]), snapshot(m["translator"])
    trainer._run_phase(phase_d, batch, cache)
    assert not same(snapshot(m["disc"]), d0)  # D changes in its own phase
    assert same(snapshot(m["backbone"]), b1) and same(snapshot(m["translator"]), t1)
    for k in ("lr_bb", "lr_head"):  # the frozen LR model: weights, BN statistics, mode
        assert same(snapshot(m[k]), lr_before[k])
        assert not m[k].training
        assert all(p.grad is None for p in m[k].parameters())


def _grads_from(tmp_path, alpha, beta, gamma):
    trainer, phase_r, _, loss, batch, m = make_mr(tmp_path, AdaptConfig(alpha=alpha, beta=beta, gamma=gamma))
    loss.classification = lambda b, ctx: (torch.zeros(()), {})  # switch L_c^HR off
    from ranface.train.loop import StepContext

    for mod in (m["backbone"], m["head"], m["translator"]):
        mod.train()
    out, _ = loss(batch, StepContext(step=0, phase_iter=0, device=torch.device("cpu"), precision="fp32"))
    out.backward()

    def norm(mod):
        return sum(float(p.grad.abs().sum()) for p in mod.parameters() if p.grad is not None)

    return norm(m["translator"]), norm(m["backbone"])


@pytest.mark.parametrize("terms", [(0.0, 0.0, 10.0), (0.0, 0.04, 0.0)], ids=["L_f", "L_p"])
def test_translator_and_backbone_learn_from_lf_and_lp(tmp_path, terms):
    t_grad, b_grad = _grads_from(tmp_path, *terms)
    assert t_grad > 0 and b_grad > 0


def test_no_terms_no_translator_gradient(tmp_path):
    t_grad, b_grad = _grads_from(tmp_path, 0.0, 0.0, 0.0)
    assert t_grad == 0 and b_grad == 0


def test_feature_g_interval_and_loss_composition(tmp_path):
    a = AdaptConfig(feature_g_every=4)
    trainer, phase_r, phase_d, *_ = make_mr(tmp_path, a)
    trainer.fit()
    rows = read_metrics(str(tmp_path), "train")
    assert [r["step"] for r in rows] == list(range(1, 9))
    # L_feature^G weighted in once per 4 discriminator iterations: steps 0 and 4
    assert [r["recog/g_on"] for r in rows] == [1, 0, 0, 0, 1, 0, 0, 0]
    for r in rows:  # Eq. 10 from the logged terms
        expect = (r["recog/l_c_hr"] + a.alpha * r["recog/g_on"] * r["recog/l_feature_g"]
                  + a.beta * r["recog/l_p"] + a.gamma * r["recog/l_f"])
        assert r["recog/loss"] == pytest.approx(expect, rel=1e-5, abs=1e-6)
        assert 0.0 <= r["recog/w_mean"] <= 1.0 and r["recog/w_std"] >= 0.0
        assert "feat_D/loss" in r
    assert phase_d.runs == 8 and phase_r.runs == 8


def test_no_translator_ablation_uses_f_hr(tmp_path):
    from ranface.adapt.trainer import TRANSLATED_KEY

    trainer, phase_r, phase_d, loss, batch, m = make_mr(tmp_path, AdaptConfig(translator=False), translator=False)
    seen = []
    m["backbone"].register_forward_hook(lambda mod, inp, out: seen.append(out.detach().clone()))
    cache = {}
    trainer._run_phase(phase_r, batch, cache)
    # D is shown f_HR itself (L2-normalised), and the gate mixes f_HR with itself
    assert torch.allclose(cache[TRANSLATED_KEY], torch.nn.functional.normalize(seen[0], dim=1), atol=1e-6)
    trainer._run_phase(phase_d, batch, cache)
    assert phase_d.runs == 1


# ---------------------------------------------------------------------------- data and inputs


def make_lr_twin(hr_root, lr_root, size=8):
    from ranface.degrade import down_up

    for ident in sorted(os.listdir(hr_root)):
        os.makedirs(os.path.join(lr_root, ident), exist_ok=True)
        for f in sorted(os.listdir(os.path.join(hr_root, ident))):
            arr = np.asarray(Image.open(os.path.join(hr_root, ident, f)).convert("RGB"))
            Image.fromarray(down_up(arr, size)).save(os.path.join(lr_root, ident, f))
    return lr_root


def small_cfg(hr, lr):
    return load_config(TrainConfig, None, ["stage=mr", f"data.train={hr}", f"data.lr_train={lr}"])


def test_paired_loader_gives_each_hr_face_its_own_twin(tmp_path):
    from ranface.data.loader import AugmentedView, FaceTransform, build_train_loader

    hr = make_face_folder(str(tmp_path / "hr"), n_ids=3, per_id=3, size=16)
    lr = make_lr_twin(hr, str(tmp_path / "lr"), size=4)
    hr_ds, lr_ds = open_paired(small_cfg(hr, lr), (16, 16))
    tf = FaceTransform((127.5,) * 3, (127.5,) * 3, hflip=True)
    view = AugmentedView(hr_ds, tf, seed=3, pair=lr_ds)
    loader, sampler = build_train_loader(view, 9, 0, 1, 0, seed=3)
    keys = list(iter(sampler))
    x_hr, x_lr, labels, skipped = next(iter(loader))
    assert skipped == [] and x_hr.shape == x_lr.shape == (9, 3, 16, 16)
    flips = set()
    for k, (_, i) in enumerate(keys):
        h = (torch.from_numpy(hr_ds[i][0]).permute(2, 0, 1).float() - 127.5) / 127.5
        low = (torch.from_numpy(lr_ds[i][0]).permute(2, 0, 1).float() - 127.5) / 127.5
        assert not torch.equal(h, low)  # the twin really is a different (degraded) image
        flipped = torch.equal(x_hr[k], h.flip(-1)) and not torch.equal(x_hr[k], h)
        assert torch.equal(x_hr[k], h.flip(-1) if flipped else h)
        assert torch.equal(x_lr[k], low.flip(-1) if flipped else low)  # its own twin, same flip
        assert labels[k] == hr_ds.labels[i] == lr_ds.labels[i]
        flips.add(flipped)
    assert flips == {True, False}


def test_paired_mismatch_errors(tmp_path):
    import shutil

    hr = make_face_folder(str(tmp_path / "hr"), n_ids=3, per_id=2, size=16)
    lr = make_lr_twin(hr, str(tmp_path / "lr"), size=4)
    os.remove(os.path.join(lr, "id001", "001.png"))
    with pytest.raises(DataError, match="differ in size"):
        open_paired(small_cfg(hr, lr), (16, 16))
    lr2 = make_lr_twin(hr, str(tmp_path / "lr2"), size=4)
    shutil.move(os.path.join(lr2, "id002"), os.path.join(lr2, "id009"))
    with pytest.raises(DataError, match="identity folders differ"):
        open_paired(small_cfg(hr, lr2), (16, 16))


def test_missing_inputs_one_error_naming_the_stages(tmp_path):
    from ranface.adapt.trainer import run_adaption

    cfg = load_config(TrainConfig, None, ["stage=mr", "model.init=x", f"run.out_dir={tmp_path}"])
    with pytest.raises(ConfigError) as e:
        run_adaption(cfg)
    msg = str(e.value)
    assert "data.lr_train" in msg and "ranface synthesize" in msg
    assert "adapt.lr_model" in msg and "--stage lr" in msg
    assert "\n" not in msg and not os.listdir(tmp_path)  # nothing created
    cfg = load_config(TrainConfig, None, ["stage=mr", "model.init=x", f"data.lr_train={tmp_path}",
                                          f"adapt.lr_model={tmp_path / 'nope'}"])
    with pytest.raises(CheckpointError, match="--stage lr"):
        run_adaption(cfg)


def test_twin_prob_out_of_range_is_one_config_error(tmp_path):
    from ranface.adapt.trainer import check_inputs

    base = ["stage=mr", "model.init=x", f"data.lr_train={tmp_path}", f"adapt.lr_model={tmp_path}"]
    with pytest.raises(ConfigError, match=r"adapt.twin_prob: must be in \[0, 1\], got 1.5"):
        load_config(TrainConfig, None, base + ["adapt.twin_prob=1.5"])  # at load (issue 15)
    cfg = load_config(TrainConfig, None, base)
    cfg.adapt.twin_prob = 1.5  # a config built in code
    with pytest.raises(ConfigError, match=r"adapt.twin_prob must be a probability in \[0, 1\], got 1.5"):
        check_inputs(cfg)
    cfg.adapt.twin_prob = 0.5
    check_inputs(cfg)


def test_lr_model_of_other_size_is_refused(tmp_path):
    from ranface.inference import model_package
    from ranface.models import create_backbone
    from ranface.train.checkpoint import save_checkpoint

    bb = create_backbone("mobilefacenet", embedding_size=32)
    path = str(tmp_path / "model.pt")
    save_checkpoint(path, model_package(bb, "mobilefacenet", {"embedding_size": 32}))
    with pytest.raises(ConfigError, match="same architecture") as e:
        load_lr_stream(path, torch.device("cpu"), "mobilefacenet", 64, 3)
    assert "32-d" in str(e.value) and "64-d" in str(e.value)
    with pytest.raises(ConfigError, match="same architecture"):
        load_lr_stream(path, torch.device("cpu"), "iresnet18", 32, 3)


def test_spectral_norm_discriminator_is_lipschitz():
    """|D(a) - D(b)| <= ||a - b|| (up to the power iteration's estimate) after training
    steps have settled the spectral estimate; without it D is free to exceed that."""
    torch.manual_seed(0)
    d = FeatureDiscriminator(16, hidden=32)
    for _ in range(30):  # power iterations
        d(torch.randn(8, 16))
    d.eval()
    a, b = torch.randn(64, 16), torch.randn(64, 16)
    ratio = (d(a) - d(b)).abs().squeeze(1) / (a - b).norm(dim=1)
    assert ratio.max() <= 1.05
    plain = FeatureDiscriminator(16, hidden=32, spectral_norm=False)
    with torch.no_grad():
        for m in plain.net:
            if isinstance(m, nn.Linear):
                m.weight.mul_(20)
    assert ((plain(a) - plain(b)).abs().squeeze(1) / (a - b).norm(dim=1)).max() > 1.05
