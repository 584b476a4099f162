"""Residual models (ModelInfo.residual): the denoiser works on offsets from the reference latent.

The dataset, the first-chunk motion of training and the pipeline's chunk chaining must all agree on
that space, and what the pipeline returns must be latents again.
"""

import pytest
import torch
from tests.mediafixtures import make_encoded_tiny_world
from torch import nn

from lipstep.data.dataset import WindowConfig, WindowDataset
from lipstep.pipeline import AvatarPipeline, ModelInfo, SamplerInfo
from lipstep.distill.losses import batch_cond
from lipstep.train.teacher import TeacherConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_encoded_tiny_world(tmp_path_factory.mktemp("residual"))


def test_residual_windows_are_scaled_offsets_from_the_reference(world):
    root, cache = world
    window = WindowConfig(frames=4, motion_frames=2)
    plain = WindowDataset(root / "prepared", "train", window, latents=cache, pixels=False)[0]
    res = WindowDataset(root / "prepared", "train", window, latents=cache, pixels=False, residual=2.5)[0]
    ref = plain["reference_latent"]
    torch.testing.assert_close(res["reference_latent"], ref)  # the reference stays absolute
    torch.testing.assert_close(res["latents"], (plain["latents"] - ref) * 2.5)
    torch.testing.assert_close(res["motion_latents"], (plain["motion_latents"] - ref) * 2.5)


def test_first_chunk_motion_is_the_reference_in_the_models_space():
    ref = torch.randn(3, 4, 2, 2)
    batch = {"reference_latent": ref, "motion_latents": torch.randn(3, 2, 4, 2, 2), "audio": torch.zeros(3, 4, 16, 80)}
    gen = torch.Generator().manual_seed(0)
    absolute = batch_cond(batch, gen, p_motion_ref=1.0)
    torch.testing.assert_close(absolute.motion, ref[:, None].expand(3, 2, 4, 2, 2))
    offsets = batch_cond(batch, torch.Generator().manual_seed(0), p_motion_ref=1.0, residual=True)
    assert torch.count_nonzero(offsets.motion) == 0
    torch.testing.assert_close(offsets.reference, ref)


class _Spy(nn.Module):
    """A denoiser that ignores its conditions (0.5·x_t) and records the motion context of each call."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))
        self.motions = []

    def forward(self, x_t, t, cond):
        self.motions.append(cond.motion.clone())
        return 0.5 * x_t + 0 * self.anchor


def _pipe(residual: float) -> tuple[AvatarPipeline, _Spy]:
    info = ModelInfo(sampler=SamplerInfo(steps=2, cfg_audio=1.0, cfg_ref=1.0), frames=4, motion_frames=2,
                     image_size=8, residual=residual)
    net = _Spy()
    return AvatarPipeline(info, None, None, net), net


def test_a_residual_pipeline_samples_offsets_chains_them_and_returns_latents():
    ref = torch.randn(1, 3, 2, 2)
    audio = torch.zeros(8, 16, 80)  # two chunks of 4
    plain, plain_net = _pipe(0.0)
    res, res_net = _pipe(4.0)
    z_plain, _ = plain.generate_latents(ref, audio, seed=0)
    z_res, _ = res.generate_latents(ref, audio, seed=0)
    # the conditions are ignored, so the two sample the same thing: res returns ref + offsets / 4
    torch.testing.assert_close(z_res, ref + z_plain / 4.0)
    # first chunk: the reference as motion, i.e. zeros in offset space; second chunk: the first chunk's
    # last two frames in the model's own space (offsets), not the returned latents
    torch.testing.assert_close(plain_net.motions[0], ref[:, None].expand(1, 2, 3, 2, 2))
    assert torch.count_nonzero(res_net.motions[0]) == 0
    torch.testing.assert_close(res_net.motions[-1], (z_res[2:4] - ref)[None] * 4.0)


def test_the_teacher_defaults_to_a_residual_model():
    cfg = TeacherConfig()
    assert cfg.residual > 0
    cfg.residual = -1.0
    with pytest.raises(Exception, match="residual"):
        cfg.validate()


@pytest.mark.parametrize("residual", [0.0, 4.0])
def test_re_anchoring_gives_chunks_the_reference_as_motion_again(residual):
    ref = torch.randn(1, 3, 2, 2)
    audio = torch.zeros(12, 16, 80)  # three chunks of 4
    pipe, net = _pipe(residual)
    pipe.info.anchor_every = 2
    pipe.generate_latents(ref, audio, seed=0)
    first = torch.zeros_like(ref) if residual else ref
    per_chunk = net.motions[::2]  # two sampler steps per chunk
    torch.testing.assert_close(per_chunk[0], first[:, None].expand(1, 2, 3, 2, 2))   # chunk 0
    assert not torch.allclose(per_chunk[1], first[:, None].expand(1, 2, 3, 2, 2))     # chunk 1: chained
    torch.testing.assert_close(per_chunk[2], first[:, None].expand(1, 2, 3, 2, 2))   # chunk 2: re-anchored
    pipe.info.anchor_every = -1
    with pytest.raises(Exception, match="anchor_every"):
        pipe.info.validate()
