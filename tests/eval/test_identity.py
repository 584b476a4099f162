"""Identity metrics: own encoder training and loading, CSIM metrics, verification, ArcFace ONNX, dlib, input checks."""

import json
import sys
import types

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from lipstep.config import save_config
from lipstep.data.dataset import open_shard, read_manifest
from lipstep.data.prepare import PrepareConfig, prepare_dataset
from lipstep.data.world import WorldConfig, synthesize_world
from lipstep.errors import DataError, LipstepError, MissingDependency
from lipstep.eval.identity import (
    IdentityEmbedder,
    check_frames,
    identity_cosines,
    identity_per_second,
    identity_similarity,
)
from lipstep.eval.identity_embedders import (
    ArcFaceONNX,
    DlibDescriptor,
    OwnIdentity,
    resolve_identity_embedders,
)
from lipstep.eval.identity_verification import (
    background_probe,
    swap_background,
    verification_metrics,
    verify_identities,
)
from lipstep.eval.train_identity import (
    IdentityAugmentConfig,
    IdentityTrainConfig,
    augment,
    margin_logits,
    train_identity,
)
from lipstep.nets.identity import IdentityNet, IdentityNetConfig, load_identity, save_identity

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_TRAIN = {"net": IdentityNetConfig(width=8, embed_dim=32), "steps": 80, "batch": 32, "warmup_steps": 10,
              "eval_frames": 16}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """8 identities at 32 px, one 1.2 s clip each: 5 train, 2 val, 1 test."""
    root = tmp_path_factory.mktemp("identity")
    cfg = WorldConfig(identities=8, clips_per_identity=1, seconds=1.2, size=32, seed=3, val_fraction=0.25)
    synthesize_world(cfg, root / "world", workers=1, progress=False)
    prepare_dataset(root / "world", root / "prepared", PrepareConfig(size=32), workers=1, progress=False)
    return root


@pytest.fixture(scope="module")
def trained(world):
    result = train_identity(world / "prepared", world / "idnet", IdentityTrainConfig(**TINY_TRAIN), progress=False)
    return result


def _frames_by_identity(prepared, split):
    out = {}
    for row in read_manifest(prepared):
        if row["split"] == split:
            out[row["identity"]] = np.asarray(open_shard(prepared / row["shard"], ("frames",))["frames"])
    return out


class Pixels:
    """Raw pixels as an embedding (mean removed): identifies the synthetic world's people by their backdrop."""

    name, sha256 = "pixels", ""

    def __call__(self, frames):
        x = check_frames(frames, "Pixels").float().flatten(1)
        return torch.nn.functional.normalize(x - x.mean(1, keepdim=True), dim=1).numpy()


class MeanColour:
    """A trivial embedder for exact checks: centred mean colour of the frame plus a constant."""

    name, sha256 = "mean-colour", ""

    def __call__(self, frames):
        x = check_frames(frames, "MeanColour").float()
        v = torch.cat([x.mean(dim=(1, 2)) / 255.0 - 0.5, torch.full((len(x), 1), 0.1)], 1)
        return torch.nn.functional.normalize(v, dim=1).numpy()


# ------------------------------------------------------------------------------------ own encoder


def test_training_writes_a_loadable_directory(trained, world):
    out = world / "idnet"
    assert {p.name for p in out.iterdir()} == {"checksums.json", "config.json", "model.safetensors", "train.json"}
    info = json.loads((out / "train.json").read_text())
    assert {"name", "embed_dim", "image_size", "parameters", "steps", "seconds", "train_seconds", "final_loss",
            "train_identities", "eval", "prepared_dir", "train"} <= set(info)
    assert info["steps"] == 80 and info["train_identities"] == 5 and info["image_size"] == 32
    assert info["parameters"] == trained.parameters > 0
    ev = info["eval"]
    assert ev["split"] == "val" and ev["identities"] == 2 and ev["frames"] == 32
    assert {"auc", "accuracy", "threshold", "eer", "same_mean", "diff_mean", "pairs", "degraded", "background"} <= set(ev)
    model = load_identity(out)
    assert not model.training and model.cfg.embed_dim == 32 and model.cfg.image_size == 32
    embedder = OwnIdentity(out)
    assert isinstance(embedder, IdentityEmbedder)
    assert embedder.name == "lipstep-identity-v1" and len(embedder.sha256) == 64
    assert trained.losses[-1] < trained.losses[0]


def test_same_identity_is_more_similar_after_training(trained, world):
    # Held-out identities (never trained on): each frame is closer to its own identity's first frame.
    assert trained.eval["auc"] > 0.9 and trained.eval["same_mean"] > trained.eval["diff_mean"] + 0.3
    embedder = OwnIdentity(world / "idnet")
    (_, frames_a), (_, frames_b) = sorted(_frames_by_identity(world / "prepared", "val").items())
    for ref, own, other in ((frames_a[0], frames_a[5:], frames_b), (frames_b[0], frames_b[5:], frames_a)):
        assert identity_similarity(embedder, ref, own) > identity_similarity(embedder, ref, other) + 0.3


def test_background_probe_catches_background_shortcuts(trained, world):
    frames = _frames_by_identity(world / "prepared", "val")
    frames.update(_frames_by_identity(world / "prepared", "test"))
    x = np.concatenate([f[::2] for f in frames.values()])
    labels = np.repeat(np.arange(len(frames)), [len(f[::2]) for f in frames.values()])
    assert verify_identities(Pixels(), world / "prepared", ("val", "test"))["auc"] == 1.0   # a backdrop per person
    assert background_probe(Pixels(), x, labels)["auc"] < 0.5
    assert background_probe(OwnIdentity(world / "idnet"), x, labels)["auc"] > 0.9
    assert trained.eval["background"]["auc"] > 0.9
    swapped = swap_background(x[:1], x[-1:])
    np.testing.assert_array_equal(swapped[0, 16, 16], x[0, 16, 16])      # face centre kept
    np.testing.assert_array_equal(swapped[0, 0, 0], x[-1, 0, 0])         # corner from the donor
    with pytest.raises(DataError, match="labels 0..K-1"):
        background_probe(Pixels(), x, np.zeros(len(x), int))


def test_embeddings_are_unit_norm_and_deterministic(trained, world):
    embedder = OwnIdentity(world / "idnet")
    frames = _frames_by_identity(world / "prepared", "test").popitem()[1][:9]
    e = embedder(frames)
    assert e.shape == (9, 32) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(embedder(frames), e)
    np.testing.assert_allclose(embedder(frames[3]), e[3:4], atol=1e-5)   # one image; eval-mode BatchNorm
    np.testing.assert_allclose(embedder(frames.astype(np.float32) / 255), e, atol=1e-5)
    big = np.repeat(np.repeat(frames, 2, axis=1), 2, axis=2)             # 64 px crops are resized to 32
    assert embedder(big).shape == (9, 32)


def test_train_identity_refuses_bad_inputs(world, tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    (one / "shards").symlink_to(world / "prepared" / "shards")
    rows = [r for r in read_manifest(world / "prepared") if r["identity"] in ("id0000", "id0001")]
    (one / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match="at least 2 train identities"):
        train_identity(one, tmp_path / "out", IdentityTrainConfig(**TINY_TRAIN), progress=False)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep")
    with pytest.raises(LipstepError, match="refusing to overwrite"):
        train_identity(world / "prepared", busy, IdentityTrainConfig(**TINY_TRAIN), progress=False)
    with pytest.raises(DataError, match="does not exist"):
        train_identity(tmp_path / "nowhere", tmp_path / "out", progress=False)
    with pytest.raises(LipstepError, match="batch"):
        train_identity(world / "prepared", tmp_path / "out", IdentityTrainConfig(batch=1), progress=False)


def test_load_identity_errors(tmp_path):
    with pytest.raises(LipstepError, match="not found"):
        load_identity(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LipstepError, match="no config.json"):
        load_identity(tmp_path / "empty")
    (tmp_path / "features").mkdir()
    (tmp_path / "features" / "config.json").write_text(json.dumps({"_type": "FeatureNetConfig", "image_size": 64}))
    with pytest.raises(LipstepError, match="not an identity-encoder directory"):
        load_identity(tmp_path / "features")
    save_identity(IdentityNet(IdentityNetConfig(image_size=32, width=8, embed_dim=16)), tmp_path / "net")
    save_identity(IdentityNet(IdentityNetConfig(image_size=32, width=8, embed_dim=16)), tmp_path / "net")  # replace
    load_identity(tmp_path / "net")
    save_config(IdentityNetConfig(image_size=32, width=16, embed_dim=16), tmp_path / "net")
    with pytest.raises(LipstepError, match="does not match"):
        load_identity(tmp_path / "net")
    (tmp_path / "net" / "model.safetensors").unlink()
    with pytest.raises(LipstepError, match="no model.safetensors"):
        load_identity(tmp_path / "net")
    with pytest.raises(LipstepError, match="refusing to overwrite"):
        save_identity(IdentityNet(IdentityNetConfig(image_size=32, width=8)), tmp_path / "features")


def test_margin_logits():
    cos = torch.tensor([[0.8, 0.1, -0.3], [0.2, -0.9, 0.5]])
    labels = torch.tensor([0, 2])
    cosface = margin_logits(cos, labels, kind="cosface", scale=10.0, margin=0.25)
    expected = 10.0 * cos.clone()
    expected[0, 0], expected[1, 2] = 10.0 * 0.55, 10.0 * 0.25
    torch.testing.assert_close(cosface, expected)
    arcface = margin_logits(cos, labels, kind="arcface", scale=10.0, margin=0.25)
    torch.testing.assert_close(arcface[0, 0], 10.0 * torch.cos(torch.arccos(torch.tensor(0.8)) + 0.25))
    torch.testing.assert_close(arcface[0, 1:], cosface[0, 1:])
    # Past theta = pi - m the ArcFace target keeps decreasing with theta.
    grid = torch.linspace(-1, 1, 201)[:, None]
    target = margin_logits(grid, torch.zeros(201, dtype=torch.long), kind="arcface", margin=0.5)[:, 0]
    assert bool((target.diff() > 0).all())


def test_augment_is_seeded_and_in_range():
    x = torch.rand(6, 3, 32, 32) * 2 - 1
    cfg = IdentityAugmentConfig(blur_prob=1.0, noise_prob=1.0, background_prob=1.0)
    a = augment(x, cfg, torch.Generator().manual_seed(1))
    b = augment(x, cfg, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and float(a.abs().max()) <= 1.0
    torch.testing.assert_close(a, b)
    assert float((a - x).abs().mean()) > 0.05
    zero = IdentityAugmentConfig(shift=0, scale=0, rotate=0, brightness=0, contrast=0, blur_prob=0, noise_prob=0,
                                 background_prob=0)
    torch.testing.assert_close(augment(x, zero, torch.Generator().manual_seed(1)), x, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------- metrics


def test_similarity_of_the_reference_with_itself_is_one(world):
    frames = _frames_by_identity(world / "prepared", "train")["id0000"]
    embedder = MeanColour()
    assert identity_similarity(embedder, frames[0], frames[:1]) == pytest.approx(1.0, abs=1e-6)
    assert identity_similarity(embedder, frames[0], np.stack([frames[0]] * 5)) == pytest.approx(1.0, abs=1e-6)
    net = OwnIdentity.from_model(IdentityNet(IdentityNetConfig(image_size=32, width=8)))
    assert identity_similarity(net, frames[0], frames[0]) == pytest.approx(1.0, abs=1e-5)
    assert identity_similarity(embedder, frames[0], frames) < 1.0


def test_identity_per_second():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (62, 16, 16, 3), dtype=np.uint8)   # 2.48 s at 25 fps
    ref = frames[0]
    embedder = MeanColour()
    cos = identity_cosines(embedder, ref, frames)
    per = identity_per_second(embedder, ref, frames, 25)
    assert per.shape == (2,)
    np.testing.assert_allclose(per, [cos[:25].mean(), cos[25:50].mean()])
    assert identity_per_second(embedder, ref, frames, 10).shape == (6,)
    # 12.5 fps: second k holds frames i with floor(i / 12.5) == k, i.e. 13, 12, 13, 12 frames.
    np.testing.assert_allclose(identity_per_second(embedder, ref, frames, 12.5),
                               [cos[0:13].mean(), cos[13:25].mean(), cos[25:38].mean(), cos[38:50].mean()])
    assert identity_per_second(embedder, ref, frames[:24], 25).shape == (0,)      # no whole second
    with pytest.raises(ValueError, match="frame rate"):
        identity_per_second(embedder, ref, frames, 0)


def test_verification_metrics_known_answers():
    r = verification_metrics([0.9, 0.6, 0.4], [0.5, 0.3, 0.1])
    assert r["auc"] == pytest.approx(8 / 9)
    assert r["accuracy"] == pytest.approx(5 / 6) and r["threshold"] == pytest.approx(0.6)
    assert r["eer"] == pytest.approx(1 / 3)
    assert r["same_mean"] == pytest.approx(19 / 30) and r["pairs"] == 6
    perfect = verification_metrics([0.8, 0.9], [0.1, 0.2, 0.3])
    assert perfect["auc"] == 1.0 and perfect["eer"] == 0.0 and perfect["accuracy"] == 1.0
    tied = verification_metrics([0.5] * 4, [0.5] * 4)
    assert tied["auc"] == 0.5 and tied["eer"] == pytest.approx(0.5)
    with pytest.raises(DataError, match="same- and different-identity pairs"):
        verification_metrics([0.5], [])


def test_frames_are_checked():
    embedder = OwnIdentity.from_model(IdentityNet(IdentityNetConfig(image_size=32, width=8)))
    ok = np.zeros((2, 32, 32, 3), np.uint8)
    cases = [
        (np.zeros((2, 3, 32, 32), np.uint8), "channels first"),
        (np.zeros((2, 32, 32), np.uint8), r"expected RGB frames \[N, H, W, 3\]"),
        (np.zeros((1, 2, 32, 32, 3), np.uint8), "got shape"),
        (np.zeros((0, 32, 32, 3), np.uint8), "at least one frame"),
        (np.zeros((2, 4, 4, 3), np.uint8), "at least 8 x 8"),
        (ok.astype(np.int32), "dtype int32"),
        (ok.astype(bool), "dtype bool"),
        (ok.astype(np.float32) + 200, "0..255 floats"),
        (ok.astype(np.float32) - 1, r"\[-1, 1\] input"),
        (np.full((2, 32, 32, 3), np.nan, np.float32), "NaN"),
    ]
    for frames, message in cases:
        with pytest.raises(DataError, match=message):
            embedder(frames)
    with pytest.raises(DataError, match="one portrait"):
        identity_similarity(embedder, ok, ok)
    with pytest.raises(DataError, match="identity frames"):
        identity_similarity(embedder, ok[0], ok[:, :, :, :2])


# --------------------------------------------------------------------------------------- ArcFace


class TinyArcFace(nn.Module):
    """An ArcFace-shaped stand-in: [N, 3, 112, 112] -> [N, 512], not symmetric in the channels."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 8, stride=8)
        self.fc = nn.Linear(4 * 14 * 14, 512)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


@pytest.fixture(scope="module")
def arcface_file(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    module = TinyArcFace().eval()
    path = tmp_path_factory.mktemp("arcface") / "w600k_r50.onnx"
    torch.onnx.export(module, (torch.zeros(1, 3, 112, 112),), str(path), input_names=["input.1"],
                      output_names=["fc1"], dynamic_axes={"input.1": {0: "N"}, "fc1": {0: "N"}}, dynamo=False)
    return path, module


def _reference_embedding(module, frames_112):
    x = torch.from_numpy(frames_112.astype(np.float32)).permute(0, 3, 1, 2)   # RGB, NCHW
    with torch.no_grad():
        e = module((x - 127.5) / 127.5)
    return torch.nn.functional.normalize(e, dim=1).numpy()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_arcface_onnx_matches_the_documented_preprocessing(arcface_file):
    path, module = arcface_file
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (5, 112, 112, 3), dtype=np.uint8)
    embedder = ArcFaceONNX(path, threads=1)
    assert embedder.name == "arcface-onnx:w600k_r50.onnx" and embedder.size == 112
    assert (embedder.input_mean, embedder.input_std) == (127.5, 127.5)
    e = embedder(frames)
    assert e.shape == (5, 512) and e.dtype == np.float32
    np.testing.assert_allclose(e, _reference_embedding(module, frames), atol=1e-5)
    assert not np.allclose(embedder(frames[..., ::-1]), e, atol=1e-3)   # RGB in, not BGR
    small = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)          # enlarged bilinearly to 112
    upsized = np.stack([cv2.resize(f, (112, 112), interpolation=cv2.INTER_LINEAR) for f in small])
    np.testing.assert_allclose(embedder(small), _reference_embedding(module, upsized), atol=1e-5)
    tight = ArcFaceONNX(path.parent, crop=0.5, threads=1)                  # a directory with w600k_r50.onnx
    assert tight.name == "arcface-onnx:w600k_r50.onnx@crop0.5"
    np.testing.assert_allclose(tight(frames), embedder(frames[:, 28:84, 28:84]), atol=1e-5)


def test_arcface_onnx_checks_its_file(arcface_file, tmp_path, monkeypatch):
    path, _ = arcface_file
    good = ArcFaceONNX(path, threads=1).sha256
    ArcFaceONNX(path, good[:12], threads=1)
    with pytest.raises(LipstepError, match="does not match the expected"):
        ArcFaceONNX(path, "0" * 64, threads=1)
    with pytest.raises(LipstepError, match="not found"):
        ArcFaceONNX(tmp_path / "w600k_r50.onnx")
    with pytest.raises(LipstepError, match="no w600k_r50.onnx"):
        ArcFaceONNX(tmp_path)
    (tmp_path / "junk.onnx").write_bytes(b"not a model at all")
    with pytest.raises(LipstepError, match="junk.onnx"):
        ArcFaceONNX(tmp_path / "junk.onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingDependency, match=r"lipstep\[arcface\]"):
        ArcFaceONNX(path)


def test_arcface_onnx_mxnet_style_model_gets_raw_pixels(tmp_path):
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    mean = numpy_helper.from_array(np.array([[[[10.0]], [[20.0]], [[30.0]]]], np.float32), "mean")
    gain = numpy_helper.from_array(np.array([[[[1.0]], [[2.0]], [[3.0]]]], np.float32), "gain")
    nodes = [helper.make_node("Sub", ["data", "mean"], ["a"], name="_minusscalar0"),
             helper.make_node("Mul", ["a", "gain"], ["b"], name="_mulscalar0"),
             helper.make_node("GlobalAveragePool", ["b"], ["c"], name="pool"),
             helper.make_node("Flatten", ["c"], ["fc1"], name="flatten")]
    graph = helper.make_graph(nodes, "mxnet", [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 112, 112])],
                              [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["N", 3])], [mean, gain])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "model.onnx"))
    embedder = ArcFaceONNX(tmp_path / "model.onnx", threads=1)
    assert (embedder.input_mean, embedder.input_std) == (0.0, 1.0)
    frames = np.random.default_rng(0).integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
    raw = (frames.astype(np.float64).mean(axis=(1, 2)) - [10, 20, 30]) * [1, 2, 3]
    np.testing.assert_allclose(embedder(frames), raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)


# ------------------------------------------------------------------------------------------- dlib


def test_dlib_descriptor_real_models():
    pytest.importorskip("dlib")
    pytest.importorskip("face_recognition_models")
    frames = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    e = DlibDescriptor()(frames)
    assert e.shape == (2, 128)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)


def test_dlib_descriptor_plumbing_with_a_stand_in(tmp_path, monkeypatch):
    calls = []
    fake = types.SimpleNamespace(
        rectangle=lambda *box: box,
        shape_predictor=lambda path: lambda img, box: ("shape", img.shape, box),
        face_recognition_model_v1=lambda path: types.SimpleNamespace(
            compute_face_descriptor=lambda img, shape, jitters: calls.append((img.shape, shape, jitters))
            or [float(img.mean()), 3.0] + [0.0] * 126))
    files = [tmp_path / "sp5.dat", tmp_path / "resnet.dat"]
    for f in files:
        f.write_bytes(b"weights")
    monkeypatch.setitem(sys.modules, "dlib", fake)
    monkeypatch.setitem(sys.modules, "face_recognition_models", types.SimpleNamespace(
        pose_predictor_five_point_model_location=lambda: str(files[0]),
        face_recognition_model_location=lambda: str(files[1])))
    embedder = DlibDescriptor(box_fraction=0.5)
    frames = np.full((2, 40, 48, 3), 4, np.uint8)                        # centre-squared to 40 x 40
    e = embedder(frames)
    assert e.shape == (2, 128) and embedder.name == "dlib-resnet-v1" and len(embedder.sha256) == 64
    np.testing.assert_allclose(e[0, :2], np.array([4.0, 3.0]) / 5.0)
    assert calls[0] == ((40, 40, 3), ("shape", (40, 40, 3), (10, 10, 29, 29)), 0)


def test_dlib_descriptor_without_dlib(monkeypatch):
    monkeypatch.setitem(sys.modules, "dlib", None)
    with pytest.raises(MissingDependency, match=r"lipstep\[faces\]"):
        DlibDescriptor()


# -------------------------------------------------------------------------------------- resolving


def test_resolve_identity_embedders(trained, world, arcface_file, monkeypatch, tmp_path):
    found, skipped = resolve_identity_embedders()
    assert found == [] and [name for name, _ in skipped] == ["lipstep-identity-v1", "arcface-onnx", "dlib-resnet-v1"]
    assert all(reason for _, reason in skipped)
    monkeypatch.setitem(sys.modules, "dlib", None)
    found, skipped = resolve_identity_embedders(world / "idnet", arcface_file[0], dlib=True)
    assert [e.name for e in found] == ["lipstep-identity-v1", "arcface-onnx:w600k_r50.onnx"]
    assert skipped == [("dlib-resnet-v1", "DlibDescriptor needs dlib: pip install 'lipstep[faces]'")]
    found, skipped = resolve_identity_embedders(tmp_path / "nothing", arcface_file[0], arcface_sha256="f" * 64)
    assert found == [] and "not found" in skipped[0][1] and "does not match" in skipped[1][1]
