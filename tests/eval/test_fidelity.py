"""FD / KID known answers, feature-extractor input checks, the FID Inception state dict, own features, FVD paths."""

import json
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from lipstep.errors import DataError, LipstepError
from lipstep.eval.fd import FeatureStats, fd_from_features, fd_from_stats, feature_stats, frechet_distance
from lipstep.eval.features import (
    I3DFeatures,
    InceptionFeatures,
    OwnFeatures,
    OwnVideoFeatures,
    clips_from_video,
    file_sha256,
)
from lipstep.eval.kid import kid, mmd2_unbiased
from lipstep.eval.train_features import FeatureTrainConfig, train_feature_net
from lipstep.nets.features import FeatureEncoder, FeatureNetConfig
from lipstep.nets.inception import FIDInceptionV3

pytestmark = pytest.mark.usefixtures("one_thread")


def _random_spd(rng, d, cond=10.0):
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return (q * np.geomspace(1.0, 1.0 / cond, d)) @ q.T


# ------------------------------------------------------------------------------------------------ FD


def test_fd_of_identical_sets_is_zero():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 16)) @ rng.normal(size=(16, 16)) + 3.0
    scale = np.trace(np.cov(a, rowvar=False))
    assert fd_from_features(a, a) <= 1e-6 * scale
    few = rng.normal(size=(20, 64))  # n < d: singular covariance, no eps retry needed
    s = feature_stats(few)
    assert frechet_distance(s.mu, s.sigma, s.mu, s.sigma) <= 1e-6 * np.trace(s.sigma)


def test_fd_matches_closed_forms():
    rng = np.random.default_rng(1)
    # 1-D: (mu1 - mu2)^2 + (sigma1 - sigma2)^2
    assert frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9.0 + 1.0, rel=1e-12)
    # Commuting covariances (shared eigenvectors): sum (sqrt(a) - sqrt(b))^2
    d = 12
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    ea, eb = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(ea) - np.sqrt(eb)) ** 2)
    got = frechet_distance(mu1, (q * ea) @ q.T, mu2, (q * eb) @ q.T)
    assert got == pytest.approx(expected, rel=1e-9)
    # General covariances: agrees with the sqrtm(S1 S2) route of pytorch-fid
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d, cond=50.0)
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2)).real
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-9)


def test_fd_of_samples_approaches_the_closed_form():
    rng = np.random.default_rng(2)
    mu1, mu2 = np.array([0.0, 1.0, -1.0]), np.array([0.5, 0.0, -1.0])
    std1, std2 = np.array([1.0, 2.0, 0.5]), np.array([1.5, 1.0, 0.5])
    a = mu1 + std1 * rng.normal(size=(20000, 3))
    b = mu2 + std2 * rng.normal(size=(20000, 3))
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((std1 - std2) ** 2)  # 1.25 + 1.25
    assert fd_from_features(a, b) == pytest.approx(expected, abs=0.05)


def test_fd_rejects_bad_input(tmp_path):
    eye = np.eye(3)
    with pytest.raises(LipstepError, match="positive semi-definite"):
        frechet_distance(np.zeros(3), eye, np.zeros(3), -eye)
    with pytest.raises(LipstepError, match="symmetric"):
        frechet_distance(np.zeros(3), eye + np.triu(np.ones((3, 3)), 1), np.zeros(3), eye)
    with pytest.raises(LipstepError, match="dims differ"):
        frechet_distance(np.zeros(3), eye, np.zeros(2), np.eye(2))
    with pytest.raises(LipstepError, match="at least 2"):
        feature_stats(np.zeros((1, 4)))
    with pytest.raises(LipstepError, match="2-D"):
        feature_stats(np.zeros(4))
    a = feature_stats(np.random.default_rng(0).normal(size=(10, 4)), extractor="lipstep-frames-v1")
    b = FeatureStats.load(a.save(tmp_path / "ref.npz"))
    assert b.n == 10 and b.extractor == "lipstep-frames-v1" and np.array_equal(a.sigma, b.sigma)
    assert fd_from_stats(a, b) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(LipstepError, match="different extractors"):
        fd_from_stats(a, FeatureStats(b.mu, b.sigma, b.n, "fid-inception-2015-12-05-pool3"))


# ----------------------------------------------------------------------------------------------- KID


def test_mmd2_unbiased_matches_the_definition():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(4, 3))
    def k(u, v):
        return (u @ v / 3 + 1) ** 3
    xx = sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / 20
    yy = sum(k(y[i], y[j]) for i in range(4) for j in range(4) if i != j) / 12
    xy = sum(k(x[i], y[j]) for i in range(5) for j in range(4)) / 20
    assert mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def test_kid_is_zero_for_one_distribution_and_positive_for_shifted():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(400, 32)), rng.normal(size=(400, 32))
    same = kid(a, b, subsets=50, subset_size=200, seed=0)
    assert abs(same.mean) < 3 * same.std
    shifted = kid(a, b + 0.5, subsets=50, subset_size=200, seed=0)
    assert shifted.mean > 10 * shifted.std and shifted.mean > 20 * abs(same.mean)
    assert kid(a, b, subsets=5, subset_size=50, seed=7) == kid(a, b, subsets=5, subset_size=50, seed=7)
    clipped = kid(a[:30], b, subsets=3)
    assert clipped.subset_size == 30 and clipped.subsets == 3
    with pytest.raises(LipstepError, match="dims differ"):
        kid(a, b[:, :8])


# ---------------------------------------------------------------------------------------- extractors


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    """A random-weight FID Inception saved as pytorch-fid's file, with random BN statistics."""
    torch.manual_seed(0)
    model = FIDInceptionV3()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("fid") / "pt_inception-2015-12-05-00000000.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def inception(inception_file):
    return InceptionFeatures(inception_file.parent, batch_size=1)


def test_inception_state_dict_round_trip(inception, inception_file, tmp_path):
    saved = torch.load(inception_file, weights_only=True)
    loaded = inception.module.state_dict()
    assert set(saved) == set(loaded)
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    # pytorch-fid's key names and shapes (torchvision Inception3, no aux head, 1008 classes).
    shapes = {"Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3), "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
              "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7), "Mixed_7a.branch7x7x3_4.conv.weight":
              (192, 192, 3, 3), "Mixed_7c.branch3x3dbl_3b.bn.running_var": (384,), "fc.weight": (1008, 2048)}
    assert {k: tuple(loaded[k].shape) for k in shapes} == shapes
    assert not any(k.startswith("AuxLogits") for k in loaded)
    # torchvision's inception_v3 has 27,161,264 parameters; minus the aux head (3,326,696), plus 8 classes.
    assert sum(p.numel() for p in inception.module.parameters()) == 27_161_264 - 3_326_696 + 8 * 2049
    assert inception.sha256 == file_sha256(inception_file) and inception.dim == 2048
    # Files from old torch carry no `num_batches_tracked`: still loads.
    old = tmp_path / "pt_inception-2015-12-05-11111111.pth"
    torch.save({k: v for k, v in saved.items() if not k.endswith("num_batches_tracked")}, old)
    assert InceptionFeatures(old).module.state_dict()["fc.bias"].equal(saved["fc.bias"])


def test_inception_rejects_wrong_files(inception_file, tmp_path):
    with pytest.raises(LipstepError, match="never downloads"):
        InceptionFeatures(tmp_path)
    state = torch.load(inception_file, weights_only=True)
    state.pop("Mixed_6a.branch3x3.conv.weight")
    state["AuxLogits.fc.weight"] = torch.zeros(1000, 768)
    bad = tmp_path / "pt_inception-2015-12-05-22222222.pth"
    torch.save(state, bad)
    with pytest.raises(LipstepError, match="1 missing keys.*1 unexpected"):
        InceptionFeatures(bad)
    with pytest.raises(LipstepError, match="SHA-256"):
        InceptionFeatures(inception_file, sha256="6726825d")


def test_inception_preprocessing_and_one_forward(inception):
    white = inception.preprocess(torch.ones(1, 16, 20, 3))
    assert white.shape == (1, 3, 299, 299) and torch.allclose(white, torch.ones(()))
    frames = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    feats = inception(frames)
    assert feats.shape == (1, 2048) and feats.dtype == np.float32 and np.isfinite(feats).all()


@pytest.fixture(scope="module")
def own():
    cfg = FeatureNetConfig(image_size=32, channels=(8, 16, 16))
    torch.manual_seed(0)
    return OwnFeatures.from_encoder(FeatureEncoder(cfg), cfg)


class _FakeI3D(nn.Module):
    """Stands in for i3d_torchscript.pt: same call signature; echoes what it was given in the first 5 outputs."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 395)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        v = x.float()
        if rescale:
            v = v / 127.5 - 1.0
        b = x.shape[0]
        flags = torch.tensor([float(rescale), float(resize), float(return_features), float(x.shape[1]),
                              float(x.shape[2])]).expand(b, 5)
        return torch.cat([flags, self.proj(v.mean(dim=(2, 3, 4)))], 1)


@pytest.fixture(scope="module")
def i3d(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("i3d") / "i3d_torchscript.pt"
    with warnings.catch_warnings():  # TorchScript is deprecated in torch 2.13; the real I3D file is one
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(_FakeI3D()).save(str(path))
    return I3DFeatures(path.parent)


BAD_FRAMES = [
    (np.zeros((2, 3, 32, 32), np.uint8), "channels-first"),
    (np.zeros((32, 32, 3), np.uint8), "batch axis"),
    (np.full((2, 32, 32, 3), 200.0, np.float32), "divide by 255"),
    (np.full((2, 32, 32, 3), -0.5, np.float32), r"\(x \+ 1\) / 2"),
    (np.zeros((2, 32, 32, 3), np.int16), "dtype"),
    (np.full((2, 32, 32, 3), np.nan, np.float32), "NaN"),
    (np.zeros((0, 32, 32, 3), np.uint8), "empty"),
]


@pytest.mark.parametrize("frames,message", BAD_FRAMES)
def test_frame_extractors_reject_bad_input(inception, own, frames, message):
    for extractor in (inception, own):
        with pytest.raises(LipstepError, match=message):
            extractor(frames)


def test_video_extractors_reject_bad_input(i3d, own):
    video = OwnVideoFeatures(own)
    for extractor in (i3d, video):
        with pytest.raises(LipstepError, match="16 frames"):
            extractor(np.zeros((2, 8, 24, 24, 3), np.uint8))
        with pytest.raises(LipstepError, match="clips"):
            extractor(np.zeros((16, 24, 24, 3), np.uint8))
        with pytest.raises(LipstepError, match="channels-first"):
            extractor(np.zeros((1, 16, 3, 24, 24), np.uint8))
        with pytest.raises(LipstepError, match="divide by 255"):
            extractor(np.full((1, 16, 24, 24, 3), 255.0, np.float32))


def test_i3d_is_called_like_stylegan_v(i3d, tmp_path):
    clips = np.random.default_rng(0).integers(0, 256, (3, 16, 24, 20, 3), dtype=np.uint8)
    feats = i3d(clips)
    assert feats.shape == (3, 400) and i3d.name == "fvd-i3d-kinetics400"
    assert np.array_equal(feats[:, :5], np.tile([1, 1, 1, 3, 16], (3, 1)))  # flags; [B, 3, T, H, W] layout
    as_float = i3d(clips.astype(np.float32) / 255.0)  # quantised back to the same uint8 clips
    assert np.allclose(as_float, feats, atol=1e-6)
    (tmp_path / "i3d_torchscript.pt").write_bytes(b"not a model")
    with pytest.raises(LipstepError, match="TorchScript"):
        I3DFeatures(tmp_path)
    with pytest.raises(LipstepError, match="never downloads"):
        I3DFeatures(tmp_path / "missing.pt")


def test_own_video_features_and_clips(own):
    video = np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    clips = clips_from_video(video)
    assert clips.shape == (2, 16, 32, 32, 3) and np.array_equal(clips[1], video[16:32])
    assert clips_from_video(video, stride=8).shape[0] == 4
    with pytest.raises(LipstepError, match="shorter"):
        clips_from_video(video[:10])
    extractor = OwnVideoFeatures(own)
    assert extractor.name == "lipstep-frames-v1+motion-clip16" and extractor.dim == 3 * own.dim + 3
    static = np.repeat(video[:1], 16, axis=0)[None]
    feats = extractor(np.concatenate([static, clips[:1]]))
    assert feats.shape == (2, extractor.dim)
    d = own.dim
    assert np.allclose(feats[0, d:], 0.0, atol=1e-6)          # no variation, no motion
    assert np.allclose(feats[0, :d], own(video[:1])[0], atol=1e-5)
    assert feats[1, -3] > 0.1 and feats[1, -1] > 0.1            # random frames: strong flicker
    assert np.allclose(extractor(clips[:1].astype(np.float32) / 255), feats[1:], atol=1e-5)  # same in float


def test_read_only_frames_are_used_without_copy_or_warning(own):
    frames = np.random.default_rng(0).integers(0, 256, (5, 40, 40, 3), dtype=np.uint8)
    frames.setflags(write=False)                                # like the memory-mapped shards
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.array_equal(own(frames), own(frames.copy()))


def test_own_features_see_noise_monotonically(own):
    rng = np.random.default_rng(5)
    base = np.linspace(0, 1, 32)[None, :, None, None] * np.linspace(1, 0, 32)[None, None, :, None]
    clean = np.clip(base + 0.3 * rng.random((64, 1, 1, 3)), 0, 1).astype(np.float32)
    def noisy(s):
        return np.clip(clean + s * rng.normal(size=clean.shape), 0, 1).astype(np.float32)
    ref = own(clean)
    fds = [fd_from_features(ref, own(noisy(s))) for s in (0.02, 0.1, 0.3)]
    assert fds[0] < fds[1] < fds[2]


def _write_prepared(root, clips):
    """A minimal prepared directory: manifest rows + uncompressed shards holding `frames`."""
    (root / "shards").mkdir(parents=True)
    rows = []
    for i, (identity, split, frames) in enumerate(clips):
        np.savez(root / "shards" / f"c{i}.npz", frames=frames)
        rows.append({"id": f"c{i}", "shard": f"shards/c{i}.npz", "identity": identity, "split": split,
                     "frames": len(frames)})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_train_feature_net_saves_loadable_own_features(tmp_path):
    rng = np.random.default_rng(6)
    def clip(colour):
        return np.clip(rng.normal(colour, 30, (12, 32, 32, 3)), 0, 255).astype(np.uint8)
    prepared = _write_prepared(tmp_path / "prepared", [("a", "train", clip([200, 60, 60])),
                                                      ("b", "train", clip([60, 60, 200])),
                                                      ("c", "val", clip([60, 200, 60]))])
    cfg = FeatureTrainConfig(steps=3, batch=8)
    result = train_feature_net(prepared, tmp_path / "feat", cfg)
    assert len(result.losses) == 3 and np.isfinite(result.losses).all()
    assert result.identities == ["a", "b"] and result.eval_split == "val" and np.isfinite(result.eval_l1)
    feats = OwnFeatures(tmp_path / "feat")
    assert feats.name == "lipstep-frames-v1" and feats.dim == 256 and feats.cfg.image_size == 32
    assert json.loads((tmp_path / "feat" / "train.json").read_text())["identities"] == ["a", "b"]
    frames = clip([100, 100, 100])[:4]
    out = feats(frames)
    assert out.shape == (4, 256) and np.array_equal(out, feats(frames))
    assert not np.allclose(out, feats(clip([200, 60, 60])[:4]))
    again = train_feature_net(prepared, tmp_path / "feat2", cfg)
    assert again.losses == result.losses                        # seeded: reproducible
    with pytest.raises(LipstepError, match="feature-net directory"):
        OwnFeatures(tmp_path)
    empty = _write_prepared(tmp_path / "no_train", [("a", "val", clip([0, 0, 0]))])
    with pytest.raises(DataError, match="no train clips"):
        train_feature_net(empty, tmp_path / "feat3", cfg, steps=1)
