"""Fixtures of the distillation tests."""

import pytest

from lipstep.data.dataset import WindowConfig
from lipstep.train.loop import TrainConfig
from lipstep.train.mouth_head import MouthHeadConfig
from lipstep.train.teacher import TeacherConfig, train_teacher
from tests.mediafixtures import make_tiny_avatar_data


@pytest.fixture(scope="package")
def world(tmp_path_factory):
    """A tiny world and a tiny residual x0-predicting teacher trained for a few steps (mechanics, not quality);
    shared by the DMD and adversarial runs."""
    root = make_tiny_avatar_data(tmp_path_factory.mktemp("distill_world"))
    cfg = TeacherConfig(preset="tiny", window=WindowConfig(frames=4, motion_frames=2), val_clips=0,
                        mouth_head=MouthHeadConfig(steps=30, batch_size=32, min_corr=-1))
    cfg.train = TrainConfig(steps=3, batch_size=2, checkpoint_every=3)
    cfg.sampler.steps = 3
    train_teacher(root / "prepared", root / "codec", root / "teacher", cfg, progress=False)
    return root
