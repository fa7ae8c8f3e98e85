"""train-gan: phase isolation (D step / G step), frozen expert, pixel-critic schedule,
end-to-end runs (CLI, exact resume, sample grids, generator.pt), bad input, real faces."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_face_folder, require_shared
from ranface.cli import main
from ranface.config import load_config
from ranface.errors import CheckpointError, ConfigError, DataError
from ranface.gan.config import GanConfig
from ranface.gan.discriminators import MultiRegionDiscriminator
from ranface.gan.generator import MRGenerator, load_generator
from ranface.gan.losses import ExpertNetwork
from ranface.gan.trainer import GanSteps, LRPoolDataset, g_interval, run_train_gan, z_generator
from ranface.inference import model_package
from ranface.models import create_backbone
from ranface.train.checkpoint import load_checkpoint, save_checkpoint
from ranface.train.distributed import DistInfo
from ranface.train.loop import RepeatStream, Phase, Trainer, TrainerOptions
from ranface.train.stats import read_metrics

TINY = ["data.face_size=32", "data.batch_size=4", "data.num_workers=0", "generator.base_width=4",
        "generator.num_stages=1", "generator.blocks_per_stage=1", "generator.z_dim=4",
        "generator.local_width=4", "generator.fuse_width=8", "discriminator.base_width=4",
        "run.progress=false", "run.precision=fp32", "run.log_every=1", "run.tensorboard=false",
        "loss.pixel_schedule=g_every"]  # D and G every step (the default d_ratio has its own test)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: OpenMP spinning makes tiny nets 50x slower
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("gan")
    hr = make_face_folder(str(root / "hr"), n_ids=2, per_id=4, size=32)
    pool = root / "pool"  # flat folder of "real LR" faces
    pool.mkdir()
    rng = np.random.default_rng(5)
    for i in range(6):
        arr = (rng.random((8, 8, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).resize((32, 32), Image.BICUBIC).save(pool / f"lr{i}.png")
    expert = str(root / "expert.pt")
    torch.manual_seed(0)
    bb = create_backbone("mobilefacenet", embedding_size=32)
    save_checkpoint(expert, model_package(bb, "mobilefacenet", {"embedding_size": 32}))
    return {"root": root, "hr": hr, "pool": str(pool), "expert": expert}


def tiny_expert():
    torch.manual_seed(0)
    return ExpertNetwork(create_backbone("mobilefacenet", embedding_size=32), source="tiny")


def params(m):
    return [p.detach().clone() for p in m.parameters()]


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))




def one_phase_trainer(tmp_path, which, steps=1, pixel_every=5, schedule="g_every"):
    cfg = load_config(GanConfig, None, TINY + [f"loss.pixel_every={pixel_every}", f"loss.pixel_schedule={schedule}"])
    torch.manual_seed(0)
    G = MRGenerator(cfg.generator, 32)
    D = MultiRegionDiscriminator(cfg.discriminator, 32)
    expert = tiny_expert()
    gs = GanSteps(G, D, D, expert, cfg)
    opt_g = torch.optim.Adam(G.parameters(), lr=1e-3, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=1e-3, betas=(0.5, 0.999))
    # the G phase's interval as train-gan sets it (1 under g_every)
    phases = {"D": Phase("D", opt_d, gs.d_loss, [D]),
              "G": Phase("G", opt_g, gs.g_loss, [G], interval=g_interval(cfg))}
    g = torch.Generator().manual_seed(0)
    batch = (torch.rand(4, 3, 32, 32, generator=g) * 2 - 1, torch.rand(4, 3, 32, 32, generator=g) * 2 - 1, [])
    tr = Trainer(run_dir=str(tmp_path / which), phases=[phases[p] for p in which],
                 state_modules={"generator": G, "discriminator": D}, stream=RepeatStream(batch),
                 to_device=lambda b: b, device=torch.device("cpu"), precision="fp32", dist=DistInfo(),
                 options=TrainerOptions(max_steps=steps, log_every=1, ckpt_every=1000, progress=False,
                                        tensorboard=False), config={})
    return tr, G, D, expert


@pytest.mark.parametrize("schedule, every", [("d_ratio", 3), ("g_every", 1)])
def test_g_runs_once_a_step_with_the_g_phase_every_g_interval_steps(tmp_path, schedule, every):
    """The phases as train-gan builds them: G forward once per step, with a graph only on
    the steps the G phase runs (the D phase's G(x) is what the G phase back-propagates)."""
    tr, G, D, _ = one_phase_trainer(tmp_path, "DG", steps=6, pixel_every=3, schedule=schedule)
    assert tr.phases[1].interval == every  # g_interval
    calls = []
    G.register_forward_hook(lambda m, i, o: calls.append(torch.is_grad_enabled()))
    g0 = params(G)
    tr.fit()
    assert len(calls) == 6
    assert sum(calls) == 6 // every  # with a graph: steps 0 and 3 under d_ratio, every step else
    assert tr.phases[1].runs == 6 // every and not same(g0, params(G))


def test_d_step_leaves_g_and_expert_unchanged(tmp_path):
    tr, G, D, expert = one_phase_trainer(tmp_path, "D")
    g0, d0, e0 = params(G), params(D), params(expert.backbone)
    tr.fit()
    assert same(g0, params(G)), "a D step changed G"
    assert not same(d0, params(D)), "the D step did not update D"
    assert same(e0, params(expert.backbone))
    assert all(p.grad is None for p in G.parameters())  # fakes were detached for D


def test_g_step_leaves_d_and_expert_unchanged(tmp_path):
    tr, G, D, expert = one_phase_trainer(tmp_path, "G")
    bn = {k: v.clone() for k, v in expert.backbone.state_dict().items()}
    g0, d0 = params(G), params(D)
    tr.fit()
    assert same(d0, params(D)), "a G step changed D"
    assert all(p.grad is None for p in D.parameters())  # D frozen while G's loss is built
    assert all(p.requires_grad for p in D.parameters())  # ... and unfrozen afterwards
    assert not same(g0, params(G)), "the G step did not update G"
    after = expert.backbone.state_dict()
    assert all(torch.equal(bn[k], after[k]) for k in bn), "the expert changed (weights or BN stats)"
    assert all(p.grad is None and not p.requires_grad for p in expert.backbone.parameters())
    assert not expert.backbone.training


def test_pixel_critic_every_5_generator_iterations(tmp_path):
    tr, *_ = one_phase_trainer(tmp_path, "DG", steps=7)
    tr.fit()
    rows = read_metrics(str(tmp_path / "DG"), "train")
    assert [r["G/pixel_critic"] for r in rows] == [1, 0, 0, 0, 0, 1, 0]
    # with the term on, L_G includes 20 * L_pixel; off, it does not
    for r in rows:
        rest = 2 * r["G/adv_g"] + 20 * r["G/perceptual"] + 0.4 * r["G/attention"]
        assert r["G/loss"] == pytest.approx(rest + 20 * r["G/pixel"] * r["G/pixel_critic"], rel=1e-4)
        assert r["D/loss"] == pytest.approx(2 * r["D/adv_d"], rel=1e-5)


def test_z_generator_is_a_function_of_seed_step_rank():
    a = torch.randn(3, generator=z_generator(0, 5, 0))
    assert torch.equal(a, torch.randn(3, generator=z_generator(0, 5, 0)))
    for other in (z_generator(1, 5, 0), z_generator(0, 6, 0), z_generator(0, 5, 1)):
        assert not torch.equal(a, torch.randn(3, generator=other))


def cli(data, out, name, steps, *extra):
    args = ["train-gan", "--hr", data["hr"], "--lr-pool", data["pool"], "--expert", data["expert"]]
    for s in TINY + [f"run.out_dir={out}", f"run.name={name}", f"optim.max_steps={steps}",
                     "run.ckpt_every=2", "image_every=2", *extra]:
        args += ["--set", s]
    return main(args)


def test_cli_run_outputs_and_exact_resume(data, tmp_path):
    out = str(tmp_path / "runs")
    assert cli(data, out, "straight", 4) == 0
    run = os.path.join(out, "straight")
    for f in ("config.yaml", "generator.pt", "summary.json", "metrics.jsonl",
              "samples/step-00000001.png", "samples/step-00000002.png", "samples/step-00000004.png",
              "checkpoints/ckpt-00000004.pt"):
        assert os.path.exists(os.path.join(run, f)), f
    grid = np.array(Image.open(os.path.join(run, "samples", "step-00000004.png")))
    assert grid.shape == (5 * 34 + 2, 4 * 34 + 2, 3)  # rows x, x_r3, G_A, G(x), y; 4 faces
    ck = load_checkpoint(os.path.join(run, "checkpoints", "ckpt-00000004.pt"))
    assert set(ck["modules"]) == {"generator", "discriminator"}  # never the expert
    assert set(ck["sampler"]) == {"hr", "lr"}
    G, info = load_generator(run)
    G_ck, _ = load_generator(os.path.join(run, "checkpoints", "ckpt-00000004.pt"))
    assert info["face_size"] == 32
    x, z = torch.rand(2, 3, 32, 32) * 2 - 1, torch.randn(2, 4)
    with torch.no_grad():
        assert torch.equal(G(x, z).fake, G_ck(x, z).fake)  # generator.pt == last checkpoint
    # exact resume: 2 steps, then 2 more, equals 4 straight
    assert cli(data, out, "half", 2) == 0
    assert cli(data, out, "half", 4, "run.resume=auto") == 0
    a = load_checkpoint(os.path.join(run, "generator.pt"))["state_dict"]
    b = load_checkpoint(os.path.join(out, "half", "generator.pt"))["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    ma = read_metrics(run, "train")
    mb = read_metrics(os.path.join(out, "half"), "train")
    assert [r["D/loss"] for r in ma] == [r["D/loss"] for r in mb]
    # the same with a loader worker per stream (persistent across the epochs: 8 HR faces
    # and 6 pool faces are 2 and 1 batches of 4), resumed across an epoch boundary
    assert cli(data, out, "workers", 3, "data.num_workers=1") == 0
    assert cli(data, out, "workers", 4, "data.num_workers=1", "run.resume=auto") == 0
    c = load_checkpoint(os.path.join(out, "workers", "generator.pt"))["state_dict"]
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_table1_synth_from_a_training_checkpoint(data, tmp_path):
    """pipelines.table1.stage_synth(checkpoint=...) synthesizes with that checkpoint's
    generator (scripts/gan_curve.py scores each one): the last checkpoint gives generator.pt's
    twins to the byte, an earlier one different twins."""
    from types import SimpleNamespace

    from ranface.pipelines.table1 import stage_synth

    out = str(tmp_path / "runs")
    assert cli(data, out, "g", 4, "generator.level_widths=[12,20]") == 0
    run = os.path.join(out, "g")
    cfg = SimpleNamespace(seed=3, progress=False, template="dlib", mrgan_codec_p=0.0, mrgan_codec_quality=[30, 90])

    def twins(name, checkpoint=""):
        dest = str(tmp_path / name)
        stage_synth(cfg, out, data["hr"], "mrgan", run, [12, 20], dest, checkpoint=checkpoint)
        files = sorted(os.path.relpath(os.path.join(d, f), dest) for d, _, fs in os.walk(dest)
                       for f in fs if f.endswith(".png"))
        assert len(files) == 8
        return [np.array(Image.open(os.path.join(dest, f))) for f in files]

    final = twins("final")
    last = twins("last", os.path.join(run, "checkpoints", "ckpt-00000004.pt"))
    early = twins("early", os.path.join(run, "checkpoints", "ckpt-00000002.pt"))
    assert all(np.array_equal(a, b) for a, b in zip(final, last))
    assert not all(np.array_equal(a, b) for a, b in zip(final, early))


@pytest.mark.slow
def test_compiled_gan_step_matches_eager(data, tmp_path):
    """run.compile=true compiles G and D (the frozen expert stays eager): same losses as
    eager (float rounding), the plain modules still what the checkpoint and generator.pt
    hold."""
    out = str(tmp_path / "runs")
    assert cli(data, out, "eager", 2) == 0  # auto
    assert cli(data, out, "compiled", 2, "run.compile=true") == 0
    summ = json.load(open(os.path.join(out, "compiled", "summary.json")))
    assert summ["compiled"] is True
    assert json.load(open(os.path.join(out, "eager", "summary.json")))["compiled"] is False
    ea, co = read_metrics(os.path.join(out, "eager"), "train"), read_metrics(os.path.join(out, "compiled"), "train")
    for key in ("D/loss", "G/loss", "G/perceptual"):
        assert [r[key] for r in co] == pytest.approx([r[key] for r in ea], rel=1e-3, abs=1e-5), key
    G, _ = load_generator(os.path.join(out, "compiled"))  # plain keys, no _orig_mod prefix
    assert not any(k.startswith("_orig_mod") for k in G.state_dict())


def test_gan_auto_compile_stays_eager_however_long_the_run():
    """train-gan's default run config turns auto-compile off (a real run compiled was slower,
    docs/performance.md); the recognition stages keep their 1000-step threshold."""
    from ranface.config import RunConfig
    from ranface.train.precision import use_compile

    cpu = torch.device("cpu")
    gan = load_config(GanConfig, None, [])
    assert not use_compile(gan.run.compile, cpu, 100_000, gan.run.compile_min_steps)
    assert use_compile(RunConfig().compile, cpu, 100_000, RunConfig().compile_min_steps)
    explicit = load_config(GanConfig, None, ["run.compile=true"])
    assert use_compile(explicit.run.compile, cpu, 2, explicit.run.compile_min_steps)


def test_lr_pool_flat_and_nested(tmp_path):
    make_face_folder(str(tmp_path / "nested"), n_ids=2, per_id=2, size=16)
    ds = LRPoolDataset(str(tmp_path / "nested"), (16, 16))
    assert len(ds) == 4 and ds.files[0] == os.path.join("id000", "000.png")
    assert ds[3][0].shape == (16, 16, 3)
    with pytest.raises(DataError, match="no images"):
        (tmp_path / "empty").mkdir()
        LRPoolDataset(str(tmp_path / "empty"))


def test_bad_input_errors(data, tmp_path):
    base = TINY + [f"run.out_dir={tmp_path}", "optim.max_steps=1"]

    def run(*extra):
        cfg = load_config(GanConfig, None, base + [f"data.hr={data['hr']}",
                                                   f"data.lr_pool={data['pool']}", *extra])
        return run_train_gan(cfg, expert=tiny_expert())

    with pytest.raises(DataError, match=r"LR pool holds 6 images, fewer than one batch \(8"):
        run("data.batch_size=8")
    with pytest.raises(DataError, match=r"image is 32x32, expected 48x48"):
        run("data.face_size=48")
    small = tmp_path / "pool16"
    small.mkdir()
    for i in range(4):
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(small / f"{i}.png")
    with pytest.raises(DataError, match=r"pool16.*image is 16x16, expected 32x32"):
        run(f"data.lr_pool={small}")
    # resuming a run with a differently sized generator: a clear checkpoint error
    run("run.name=r", "run.ckpt_every=1")
    with pytest.raises(ConfigError, match=r"changed recipe \(generator.base_width: 4 -> 8\)"):
        run("run.name=r", "run.resume=auto", "optim.max_steps=2", "generator.base_width=8")
    with pytest.raises(CheckpointError, match="does not fit the generator"):  # forced (issue 15)
        run("run.name=r", "run.resume=auto", "optim.max_steps=2", "generator.base_width=8",
            "run.force_resume=true")


def _crude_lfw_faces(root, names, size=112):
    """Centre 128x128 of the 250x250 LFW image resized to 112: a crude, unaligned face crop."""
    out = []
    for n in names:
        img = Image.open(os.path.join(root, "images", n, f"{n}_0001.jpg")).convert("RGB")
        out.append(img.crop((61, 61, 189, 189)).resize((size, size), Image.BICUBIC))
    return out


def test_short_run_on_real_faces_lowers_pixel_loss(tmp_path):
    lfw = require_shared("lfw-gray")
    names = sorted(os.listdir(os.path.join(lfw, "images")))[:12]
    faces = _crude_lfw_faces(lfw, names)
    hr, pool = tmp_path / "hr", tmp_path / "pool"
    for i, f in enumerate(faces[:8]):
        (hr / f"id{i}").mkdir(parents=True)
        f.save(hr / f"id{i}" / "0.png")
    pool.mkdir()
    for i, f in enumerate(faces[8:]):  # real LR proxy: other people's faces at 16 px
        f.resize((16, 16), Image.BICUBIC).resize((112, 112), Image.BICUBIC).save(pool / f"{i}.png")
    over = [s for s in TINY if not s.startswith("data.face_size")] + [
        f"data.hr={hr}", f"data.lr_pool={pool}", "data.face_size=112", "optim.max_steps=12",
        "optim.lr=0.002", "loss.pixel_every=1", f"run.out_dir={tmp_path}", "run.name=lfw",
        "run.ckpt_every=100", "image_every=0"]
    summary = run_train_gan(load_config(GanConfig, None, over), expert=tiny_expert())
    rows = read_metrics(summary["run_dir"], "train")
    pix = [r["G/pixel"] for r in rows]
    assert len(pix) == 12
    assert np.mean(pix[-3:]) < 0.8 * np.mean(pix[:3]), pix
    assert all(np.isfinite(r["D/adv_d"]) and np.isfinite(r["G/adv_g"]) for r in rows)
    assert summary["counters"]["nonfinite_total"] == 0


@pytest.mark.slow
def test_default_resnet29_expert_step(data, tmp_path):
    """The default expert (imported dlib ResNet-29, 150x150 input) in a real G step."""
    folder = require_shared("models", "faceapi-resnet29")
    cfg = load_config(GanConfig, None, TINY + [f"data.hr={data['hr']}", f"data.lr_pool={data['pool']}",
                                               f"expert={folder}", f"run.out_dir={tmp_path}",
                                               "optim.max_steps=1"])
    summary = run_train_gan(cfg)
    assert summary["expert"] == folder and summary["steps"] == 1
    row = read_metrics(summary["run_dir"], "train")[0]
    assert 0 < row["G/perceptual"] < 2 and np.isfinite(row["G/loss"])


@pytest.mark.slow
def test_two_process_gloo_train_gan(data, tmp_path):
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "ranface", "train-gan", "--hr", data["hr"], "--lr-pool", data["pool"],
            "--expert", data["expert"]]
    for s in TINY + [f"run.out_dir={tmp_path}", "run.name=ddp", "optim.max_steps=2", "data.batch_size=2",
                     "image_every=0"]:
        args += ["--set", s]
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    r = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.load(open(tmp_path / "ddp" / "summary.json"))
    assert summary["world_size"] == 2 and summary["steps"] == 2
    d = summary["param_digests"]
    assert len(d) == 2 and d[0] == d[1], "DDP replicas diverged"


def test_d_ratio_pixel_schedule_and_levels_through_the_cli(data, tmp_path):
    """d_ratio: G is updated on every 2nd step only, always with L_pixel; a generator with
    levels trains and saves its level range."""
    out = str(tmp_path / "runs")
    assert cli(data, out, "ratio", 4, "loss.pixel_schedule=d_ratio", "loss.pixel_every=2",
               "generator.level_widths=[6,16]") == 0
    rows = read_metrics(os.path.join(out, "ratio"), "train")
    g_rows = [r for r in rows if "G/loss" in r]
    assert len(rows) == 4 and len(g_rows) == 2 and all(r["G/pixel_critic"] == 1 for r in g_rows)
    G, info = load_generator(os.path.join(out, "ratio"))
    assert G.levels == (6, 16) and info["generator"]["level_widths"] == [6, 16]


def test_bad_pixel_schedule_and_levels_are_one_line_errors(data, tmp_path, capsys):
    out = str(tmp_path / "runs")
    assert cli(data, out, "bad", 1, "loss.pixel_schedule=sometimes") == 2
    assert "pixel_schedule" in capsys.readouterr().err
    assert cli(data, out, "bad", 1, "generator.level_widths=[20,6]") == 2
    assert "level_widths" in capsys.readouterr().err


def test_train_expert_distils_the_teacher_into_a_loadable_model(data, tmp_path, capsys):
    import json

    from ranface.inference import load_model
    from ranface.train.distill import distillation_loss

    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert float(distillation_loss(t, t)) == pytest.approx(0.0)
    assert float(distillation_loss(-t, t)) == pytest.approx(2.0)
    assert float(distillation_loss(torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0, 0.0]]))) == \
        pytest.approx(1 - 2 ** -0.5)
    out = str(tmp_path / "runs")
    rc = main(["train-expert", "--hr", data["hr"], "--teacher", data["expert"],
               "--set", f"run.out_dir={out}", "--set", "run.name=ex", "--set", "optim.max_steps=3",
               "--set", "data.batch_size=4", "--set", "data.num_workers=0", "--set", "optim.warmup_steps=0",
               "--set", "data.face_size=32", "--set", "run.log_every=1",
               "--set", "run.progress=false", "--set", "run.tensorboard=false"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 3 and -1 <= summary["final_cosine_to_teacher"] <= 1
    model, card = load_model(os.path.join(out, "ex"))
    assert card.architecture == "mobilefacenet" and model.spec.embedding_size == 32  # the teacher's
    assert card.provenance.stage == "expert"
    rows = read_metrics(os.path.join(out, "ex"), "train")
    assert len(rows) == 3 and all(0 <= r["distil/loss"] <= 2 for r in rows)
    # the expert it writes is what train-gan takes
    args = ["train-gan", "--hr", data["hr"], "--lr-pool", data["pool"], "--expert", os.path.join(out, "ex")]
    for s in TINY + [f"run.out_dir={tmp_path / 'g'}", "run.name=with_expert", "optim.max_steps=1"]:
        args += ["--set", s]
    assert main(args) == 0


def test_memory_format_follows_precision_and_the_explicit_setting():
    from ranface.gan.config import GeneratorConfig, DiscriminatorConfig
    from ranface.gan.trainer import to_memory_format

    def nets():
        return (MRGenerator(GeneratorConfig(base_width=4, num_stages=1, blocks_per_stage=1, z_dim=4, local_width=4,
                                            fuse_width=8), face_size=32),
                MultiRegionDiscriminator(DiscriminatorConfig(base_width=4), face_size=32))

    def is_cl(m):
        w = [p for p in m.parameters() if p.dim() == 4 and p.shape[-1] > 1 and p.shape[1] > 1]
        return all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous() for p in w)

    cpu = torch.device("cpu")
    G, D = nets()
    assert to_memory_format(G, D, cpu, "fp32") is False and not is_cl(G)
    G, D = nets()
    assert to_memory_format(G, D, cpu, "bf16") is True and is_cl(G) and is_cl(D)  # dense convolutions only
    G, D = nets()
    assert to_memory_format(G, D, cpu, "bf16", setting=False) is False and not is_cl(G)
    G, D = nets()
    assert to_memory_format(G, D, cpu, "fp32", setting=True) is True and is_cl(D)
    # a G and D in channels_last compute the same fakes and scores as in NCHW
    torch.manual_seed(0)
    G, D = nets()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    z = torch.randn(2, 4)
    with torch.no_grad():
        for p in G.parameters():
            p.add_(0.05 * torch.randn_like(p))
        ref, ref_d = G(x, z).fake, D(x)
        to_memory_format(G, D, cpu, "fp32", setting=True)
        out, out_d = G(x.contiguous(memory_format=torch.channels_last), z).fake, D(x)
    assert torch.allclose(ref, out, atol=1e-5)
    assert all(torch.allclose(ref_d[k], out_d[k], atol=1e-5) for k in ref_d)


def test_sample_writer_due_steps_with_and_without_d_ratio(tmp_path):
    from ranface.gan.trainer import SampleWriter

    class Out:
        x_r3 = G_A = fake = torch.zeros(2, 3, 8, 8)

    x = torch.zeros(2, 3, 8, 8)

    def written(interval, every=10, steps=50):
        w = SampleWriter(str(tmp_path / f"i{interval}"), every, 2, steps - 1, interval)
        for step in range(0, steps, interval):  # the steps on which the G phase runs
            w(step, x, Out(), x)
        return [int(os.path.basename(p)[5:13]) for p in w.written]

    assert written(1) == [1, 10, 20, 30, 40, 50]
    # G on every 5th step (steps 0, 5, ..., 45): the first G step at or after each due point, and the last
    assert written(5) == [1, 11, 21, 31, 41, 46]
    assert written(5, every=7, steps=23) == [1, 11, 16, 21]


def test_gan_curve_scores_against_the_gans_own_faces_and_pool(tmp_path):
    """scripts/gan_curve.py takes the faces and the real LR pool from the run's MR-GAN
    config (the stage records of a default demo run do not name them)."""
    import importlib.util

    import yaml

    from ranface.config import to_dict

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("gan_curve", os.path.join(root, "scripts", "gan_curve.py"))
    gc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gc)
    run = tmp_path / "demo"
    (run / "models" / "gan").mkdir(parents=True)
    cfg = load_config(GanConfig, None, [f"data.hr={run / 'faces_train'}", f"data.lr_pool={run / 'lr_pool'}"])
    (run / "models" / "gan" / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    assert gc.gan_data(str(run)) == (str(run / "faces_train"), str(run / "lr_pool"))
