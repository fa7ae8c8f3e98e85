"""face-api.js / TF.js weight import into dlib's ResNet-29, and the pretrained model on
real faces."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import pytest
import torch

from ranface.data.image import read_image
from ranface.errors import CheckpointError
from ranface.models import create_backbone
from ranface.models.faceapi import (MANIFEST_NAME, faceapi_to_torch_name,
                                    load_faceapi_weights, read_tfjs_weights)
from ranface.models.resnet29 import ResidualBlock, ResNet29Dlib

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MODEL_DIR = DATA / "models" / "faceapi-resnet29"
LFW = DATA / "lfw-gray" / "images"
needs_data = pytest.mark.skipif(not MODEL_DIR.is_dir(), reason=f"{DATA} not present")

# (name, array as stored or dequantised, quantization dict or None, stored dtype)
Entry = Tuple[str, np.ndarray, Optional[dict], str]


def write_tfjs(folder: Path, groups: Sequence[Sequence[Entry]], shards: int = 1) -> Path:
    """Write a TF.js manifest + weight shards, the layout face-api.js ships."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = []
    for gi, entries in enumerate(groups):
        chunks = []
        weights = []
        for name, arr, quant, dtype in entries:
            item = {"name": name, "shape": list(arr.shape), "dtype": "float32"}
            if quant is not None:
                item["quantization"] = quant
            weights.append(item)
            chunks.append(np.ascontiguousarray(arr, dtype=np.dtype(dtype).newbyteorder("<"))
                          .tobytes())
        blob = b"".join(chunks)
        cut = np.linspace(0, len(blob), shards + 1).astype(int)
        paths = []
        for si in range(shards):
            rel = f"group{gi}-shard{si + 1}of{shards}.bin"
            (folder / rel).write_bytes(blob[cut[si]:cut[si + 1]])
            paths.append(rel)
        manifest.append({"paths": paths, "weights": weights})
    path = folder / MANIFEST_NAME
    path.write_text(json.dumps(manifest))
    return path


def faceapi_entries(model: ResNet29Dlib) -> List[Entry]:
    """Export a model's weights under face-api.js's names and TF layouts (float32)."""
    leaf = {"conv.weight": "conv/filters", "conv.bias": "conv/bias",
            "scale.weight": "scale/weights", "scale.bias": "scale/biases"}
    out = []
    for key, t in model.state_dict().items():
        arr = t.numpy()
        if key == "fc.weight":
            out.append(("fc", arr.T, None, "float32"))
            continue
        parts = key.split(".")
        name = "/".join(parts[:-2] + [leaf[".".join(parts[-2:])]])
        out.append((name, arr.transpose(2, 3, 1, 0) if arr.ndim == 4 else arr, None,
                    "float32"))
    return out


@pytest.fixture()
def random_model() -> ResNet29Dlib:
    torch.manual_seed(0)
    model = ResNet29Dlib().eval()
    with torch.no_grad():  # non-trivial scale layers so that a mix-up shows
        for name, p in model.named_parameters():
            if ".scale." in name:
                p.copy_(torch.rand_like(p) + 0.5)
    return model


def test_name_mapping():
    assert faceapi_to_torch_name("conv64_down/conv1/conv/filters") == \
        "conv64_down.conv1.conv.weight"
    assert faceapi_to_torch_name("conv32_down/scale/biases") == "conv32_down.scale.bias"
    assert faceapi_to_torch_name("conv256_2/conv2/scale/weights") == \
        "conv256_2.conv2.scale.weight"
    assert faceapi_to_torch_name("fc") == "fc.weight"
    assert faceapi_to_torch_name("odd/thing") == "odd/thing"


def test_read_tfjs_dequantises_in_manifest_order(tmp_path):
    q8 = np.array([[0, 1], [128, 255]], dtype=np.uint8)
    q16 = np.array([0, 1000, 65535], dtype=np.uint16)
    f16 = np.array([0.5, -2.25], dtype=np.float16)
    plain = np.array([1.5, -3.0, 7.25], dtype=np.float32)
    manifest = write_tfjs(tmp_path, [
        [("a", q8, {"dtype": "uint8", "scale": 0.5, "min": -1.0}, "uint8"),
         ("b", plain, None, "float32"),
         ("c", q16, {"dtype": "uint16", "scale": 0.01, "min": 2.0}, "uint16")],
        [("d", f16, {"dtype": "float16"}, "float16")],
    ], shards=2)
    got = read_tfjs_weights(manifest)
    assert list(got) == ["a", "b", "c", "d"]
    np.testing.assert_array_equal(got["a"], [[-1.0, -0.5], [63.0, 126.5]])
    np.testing.assert_array_equal(got["b"], plain)
    np.testing.assert_allclose(got["c"], [2.0, 12.0, 657.35], rtol=1e-6)
    np.testing.assert_array_equal(got["d"], [0.5, -2.25])
    assert all(v.dtype == np.float32 for v in got.values())


def test_round_trip_of_a_random_model(tmp_path, random_model):
    write_tfjs(tmp_path, [faceapi_entries(random_model)], shards=3)
    state = load_faceapi_weights(tmp_path)
    assert list(state) == list(random_model.state_dict())
    for key, value in random_model.state_dict().items():
        assert torch.equal(state[key], value), key
    loaded = create_backbone("resnet29_dlib", pretrained=str(tmp_path)).eval()
    x = torch.randn(2, 3, 150, 150)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), random_model(x), rtol=0, atol=0)


def test_missing_directory_and_files(tmp_path, random_model):
    with pytest.raises(CheckpointError, match="does not exist") as info:
        load_faceapi_weights(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(info.value)
    with pytest.raises(CheckpointError, match=MANIFEST_NAME):
        load_faceapi_weights(tmp_path)
    write_tfjs(tmp_path, [faceapi_entries(random_model)])
    bin_path = tmp_path / "group0-shard1of1.bin"
    bin_path.unlink()
    with pytest.raises(CheckpointError, match="cannot read weights file") as info:
        load_faceapi_weights(tmp_path)
    assert str(info.value).startswith(str(bin_path))


def test_truncated_bin_names_file_and_sizes(tmp_path, random_model):
    write_tfjs(tmp_path, [faceapi_entries(random_model)])
    bin_path = tmp_path / "group0-shard1of1.bin"
    data = bin_path.read_bytes()
    bin_path.write_bytes(data[:-10])
    with pytest.raises(CheckpointError) as info:
        load_faceapi_weights(tmp_path)
    msg = str(info.value)
    assert msg.startswith(str(bin_path))
    assert f"{len(data) - 10} bytes" in msg and f"{len(data)} bytes" in msg


def test_bad_json(tmp_path):
    (tmp_path / MANIFEST_NAME).write_text('[{"paths": ["x.bin"],\n "weights": [}]')
    with pytest.raises(CheckpointError, match=r"\(line 2\): not a JSON") as info:
        load_faceapi_weights(tmp_path)
    assert MANIFEST_NAME in str(info.value)
    (tmp_path / MANIFEST_NAME).write_text('{"weights": []}')
    with pytest.raises(CheckpointError, match="list of groups"):
        load_faceapi_weights(tmp_path)


def test_unknown_and_missing_tensors_are_listed(tmp_path, random_model):
    entries = faceapi_entries(random_model)
    entries = [(("conv32_1/conv1/conv/beta",) + e[1:]) if e[0] == "conv32_1/conv1/conv/bias"
               else e for e in entries]
    entries = [e for e in entries if e[0] != "fc"]
    write_tfjs(tmp_path, [entries])
    with pytest.raises(CheckpointError) as info:
        load_faceapi_weights(tmp_path)
    msg = str(info.value)
    assert "unknown tensors: conv32_1/conv1/conv/beta" in msg
    assert "conv32_1.conv1.conv.bias" in msg and "fc.weight" in msg
    assert "\n" not in msg


def test_wrong_shape_nan_and_bad_entries(tmp_path, random_model):
    entries = faceapi_entries(random_model)
    idx = [e[0] for e in entries].index("conv64_1/conv2/scale/weights")
    bad_shape = list(entries)
    bad_shape[idx] = (entries[idx][0], np.ones(65, np.float32), None, "float32")
    write_tfjs(tmp_path / "shape", [bad_shape])
    with pytest.raises(CheckpointError, match=r"conv64_1/conv2/scale/weights.*\[65\]"):
        load_faceapi_weights(tmp_path / "shape")

    with_nan = list(entries)
    arr = entries[idx][1].copy()
    arr[3] = np.nan
    with_nan[idx] = (entries[idx][0], arr, None, "float32")
    write_tfjs(tmp_path / "nan", [with_nan])
    with pytest.raises(CheckpointError, match="NaN"):
        load_faceapi_weights(tmp_path / "nan")

    write_tfjs(tmp_path / "quant", [[("x", np.zeros(2, np.uint8),
                                      {"dtype": "int4", "scale": 1, "min": 0}, "uint8")]])
    with pytest.raises(CheckpointError, match="unsupported quantization"):
        read_tfjs_weights(tmp_path / "quant" / MANIFEST_NAME)

    write_tfjs(tmp_path / "dup", [[("x", np.zeros(2, np.float32), None, "float32")] * 2])
    with pytest.raises(CheckpointError, match="twice"):
        read_tfjs_weights(tmp_path / "dup" / MANIFEST_NAME)


def test_down_block_pads_conv_branch_bottom_right():
    # 8x8 input: the 3x3/2 "valid" conv gives 3x3, the 2x2/2 average pool 4x4; the conv
    # branch is zero-padded on the last row and column, and the shortcut gets zero
    # channels appended.
    block = ResidualBlock(2, 4, down=True).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.zero_()
        block.conv2.scale.bias.fill_(10.0)  # conv branch == 10 where it exists
    x = torch.rand(1, 2, 8, 8)
    with torch.no_grad():
        y = block(x)
    pooled = torch.nn.functional.avg_pool2d(x, 2, 2)
    assert y.shape == (1, 4, 4, 4)
    torch.testing.assert_close(y[:, :2, :3, :3], pooled[:, :, :3, :3] + 10.0)
    torch.testing.assert_close(y[:, :2, 3, :], pooled[:, :, 3, :])
    torch.testing.assert_close(y[:, :2, :, 3], pooled[:, :, :, 3])
    torch.testing.assert_close(y[:, 2:, :3, :3], torch.full((1, 2, 3, 3), 10.0))
    assert torch.count_nonzero(y[:, 2:, 3, :]) == 0


# --- the real pretrained weights -------------------------------------------------------

# dlib 20.0.1 (dlib_face_recognition_resnet_model_v1.dat, the float original) on the
# synthetic patterns of synthetic_chip(0) and synthetic_chip(1), 5 decimals.
DLIB_REFERENCE = np.array([
    [-0.05102, 0.09122, 0.05157, 0.01282, -0.09535, -0.05686, -0.05185, -0.04318, 0.09555,
     -0.02755, 0.25432, -0.03848, -0.23132, -0.06501, 0.00273, 0.11967, -0.13011, -0.06767,
     -0.15859, -0.13712, 0.01820, 0.02249, 0.03531, -0.00131, -0.12960, -0.25748, -0.08151,
     -0.14199, 0.08171, -0.16808, 0.02415, 0.05812, -0.14837, -0.06654, 0.01681, 0.01582,
     0.03023, -0.04458, 0.17663, -0.04919, -0.16275, -0.03198, 0.04262, 0.22249, 0.22657,
     0.02592, -0.01096, -0.04682, 0.03239, -0.25887, 0.00028, 0.14777, 0.09005, 0.08448,
     0.04450, -0.13851, -0.00747, 0.11695, -0.13035, 0.02316, 0.03460, -0.12617, -0.05518,
     -0.08992, 0.19036, 0.05887, -0.07867, -0.12868, 0.14454, -0.15303, -0.04593, 0.09570,
     -0.11167, -0.16425, -0.25534, 0.06835, 0.37770, 0.16622, -0.19650, 0.02965, -0.11933,
     -0.03148, -0.02318, -0.01211, -0.06787, -0.04359, -0.09550, 0.04977, 0.18636, -0.11931,
     0.05490, 0.18011, -0.04882, 0.01985, -0.00021, 0.00118, -0.10316, 0.00710, -0.08132,
     -0.03063, 0.10076, -0.12569, 0.04612, 0.09156, -0.16173, 0.10502, -0.02319, -0.06322,
     0.02408, 0.02742, -0.03759, -0.05491, 0.25068, -0.18216, 0.23416, 0.22952, 0.00415,
     0.13064, 0.07139, 0.16355, -0.05196, -0.00998, -0.12329, -0.06243, 0.03012, -0.03668,
     -0.01866, 0.00073],
    [-0.06195, 0.10478, 0.03131, -0.01007, -0.06023, -0.03813, -0.01299, -0.03418, 0.16471,
     -0.04317, 0.22151, -0.01574, -0.24901, -0.05078, 0.01578, 0.09895, -0.14065, -0.06802,
     -0.15015, -0.13183, 0.03557, 0.03226, 0.01548, 0.01397, -0.13686, -0.25795, -0.06517,
     -0.12542, 0.06796, -0.15665, 0.06672, 0.07280, -0.16782, -0.06272, -0.00910, -0.01446,
     0.01226, -0.03372, 0.15071, -0.04693, -0.15155, -0.06383, 0.00283, 0.26112, 0.18109,
     0.00607, -0.01578, -0.05131, 0.03326, -0.26688, -0.02324, 0.12540, 0.05386, 0.11983,
     0.03544, -0.15506, 0.02346, 0.10321, -0.16370, 0.02796, 0.03465, -0.13254, -0.07844,
     -0.08065, 0.22509, 0.04262, -0.09617, -0.15953, 0.12053, -0.15527, -0.02169, 0.12221,
     -0.08242, -0.18597, -0.23340, 0.09633, 0.33629, 0.19093, -0.19749, 0.04707, -0.14292,
     0.00592, 0.01107, 0.00805, -0.05416, 0.00680, -0.07805, 0.04507, 0.15148, -0.09791,
     0.01457, 0.23503, -0.01694, -0.00153, 0.00152, -0.01187, -0.09448, 0.02693, -0.09099,
     -0.01601, 0.12766, -0.08735, 0.05018, 0.07980, -0.14874, 0.16949, -0.00380, -0.02635,
     0.04452, 0.01956, -0.05588, -0.07684, 0.22008, -0.25593, 0.22111, 0.20519, 0.03273,
     0.16205, 0.03670, 0.15074, -0.04245, 0.00147, -0.12112, -0.03131, 0.07626, -0.03306,
     -0.03315, -0.01674],
])


def synthetic_chip(k: int) -> np.ndarray:
    """A deterministic 150x150 RGB pattern (no real data needed to compare with dlib)."""
    y, x = np.mgrid[0:150, 0:150].astype(np.float64)
    r = 128 + 70 * np.sin(x / (7.0 + k)) * np.cos(y / (11.0 + 2 * k))
    g = 120 + 60 * np.cos((x + y) / (13.0 + k))
    b = 110 + 50 * np.sin(np.hypot(x - 75, y - 70) / (6.0 + k))
    return np.clip(np.stack([r, g, b], -1).round(), 0, 255).astype(np.uint8)


def embed(model: torch.nn.Module, chips: Sequence[np.ndarray]) -> torch.Tensor:
    x = torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2)
    with torch.no_grad():
        return model(model.spec.normalize(x))


@pytest.fixture(scope="module")
def pretrained() -> ResNet29Dlib:
    return create_backbone("resnet29_dlib", pretrained=str(MODEL_DIR)).eval()


@pytest.mark.data
@needs_data
def test_pretrained_matches_dlib(pretrained):
    ours = embed(pretrained, [synthetic_chip(0), synthetic_chip(1)]).double().numpy()
    dist = np.linalg.norm(ours[:, None] - DLIB_REFERENCE[None], axis=2)
    # uint8 quantisation of face-api's copy costs ~0.045 (measured); a wrong padding or
    # channel order costs > 0.5; the two patterns are 0.29 apart.
    assert dist[0, 0] < 0.08 and dist[1, 1] < 0.08
    assert dist[0, 1] > 0.2 and dist[1, 0] > 0.2


@pytest.mark.data
@needs_data
def test_pretrained_load_is_deterministic(pretrained):
    again = create_backbone("resnet29_dlib", pretrained=str(MODEL_DIR)).eval()
    chips = [synthetic_chip(0), synthetic_chip(2)]
    a, b = embed(pretrained, chips), embed(again, chips)
    assert a.shape == (2, 128) and torch.isfinite(a).all()
    assert torch.equal(a, b)
    norms = a.norm(dim=1)
    assert torch.all((norms > 0.5) & (norms < 3.0))
    unit = torch.nn.functional.normalize(a, dim=1)
    torch.testing.assert_close(unit.norm(dim=1), torch.ones(2))


@pytest.mark.data
@needs_data
def test_pretrained_separates_lfw_identities(pretrained):
    if not LFW.is_dir():
        pytest.skip(f"{LFW} not present")
    from PIL import Image

    people = [p for p in sorted(os.listdir(LFW)) if len(os.listdir(LFW / p)) >= 4][:10]
    chips, ids = [], []
    for i, person in enumerate(people):
        for fname in sorted(os.listdir(LFW / person))[:3]:
            grey = read_image(LFW / person / fname)  # grey replicated to RGB
            # Crude alignment: LFW faces sit near the centre of the 250x250 frame.
            crop = Image.fromarray(grey).crop((55, 55, 195, 195))
            chips.append(np.asarray(crop.resize((150, 150), Image.BILINEAR)))
            ids.append(i)
    emb = embed(pretrained, chips)
    dist = torch.cdist(emb, emb).numpy()
    iu = np.triu_indices(len(ids), 1)
    same = (np.array(ids)[:, None] == np.array(ids)[None])[iu]
    genuine, impostor = dist[iu][same], dist[iu][~same]
    assert len(genuine) == 30 and len(impostor) == 405
    # dlib's rule: the same person below 0.6 (measured: 0.41 vs 0.69, AUC 0.998)
    assert genuine.mean() < 0.5 < 0.6 < impostor.mean()
    auc = (genuine[:, None] < impostor[None, :]).mean()
    assert auc > 0.95
