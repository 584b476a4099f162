"""MouthErr: the mouth state read from generated frames against the mouth state of the audio that drove them.

On the synthetic world every frame carries its ground-truth mouth state (openness, width,
roundness; `data/visemes.py`), which is a function of the speech. A generated video can therefore
be scored directly against the mouth state *of the audio that drove it*: read the mouth state from
each generated frame and compare it with the labels over time.

`MouthReader(dir)` loads a trained reader (`lipstep.nets.mouthreader.MouthReaderNet`, trained by
`lipstep.eval.train_mouthreader`); ``reader.openness(frames)`` maps uint8 [N, S, S, 3] frames to float
[N]. `mouth_scores(pred, truth)` gives (MouthErr, MouthCorr). Generated frames are codec decodes, so
`reconstruct` (encode -> decode) makes the matching ground truth.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from lipstep.errors import DataError
from lipstep.fit import pearson
from lipstep.nets.mouthreader import NAME, MouthReaderNet, load_mouth_reader, mouth_reader_input, read_json


class MouthReader:
    """A trained mouth reader (see the module docstring); ``name`` is recorded in every report."""

    name = NAME

    def __init__(self, path: str | os.PathLike, *, device: str | torch.device = "cpu", batch_size: int = 256):
        path = Path(path)
        net = load_mouth_reader(path)
        self.path, self.cfg, self.batch_size = path, net.cfg, batch_size
        self.device = torch.device(device)
        self.net = net.to(self.device)
        info = path / "train.json"
        self.train_info = read_json(info) if info.is_file() else {}

    @classmethod
    def from_net(cls, net: MouthReaderNet, *, device: str | torch.device = "cpu") -> MouthReader:
        self = cls.__new__(cls)
        self.path, self.cfg, self.batch_size, self.train_info = None, net.cfg, 256, {}
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        return self

    @torch.no_grad()
    def state(self, frames) -> np.ndarray:
        """uint8 [N, S, S, 3] face crops -> mouth state float32 [N, 3] (openness, width, roundness)."""
        x = mouth_reader_input(frames, self.cfg.image_size)
        out = [self.net(x[i:i + self.batch_size].to(self.device)).float().cpu() for i in range(0, len(x), self.batch_size)]
        return torch.cat(out).numpy()

    def openness(self, frames) -> np.ndarray:
        """uint8 [N, S, S, 3] -> mouth openness float32 [N]."""
        return self.state(frames)[:, 0]


def mouth_scores(pred, truth) -> tuple[float, float]:
    """(MouthErr = mean |pred - truth|, MouthCorr = Pearson correlation over time) of two openness tracks."""
    pred, truth = np.asarray(pred, np.float64).ravel(), np.asarray(truth, np.float64).ravel()
    if len(pred) != len(truth) or len(pred) == 0:
        raise DataError(f"mouth_scores needs two equally long, non-empty tracks, got {len(pred)} and {len(truth)}")
    return float(np.abs(pred - truth).mean()), pearson(pred, truth)


@torch.no_grad()
def reconstruct(codec, frames: np.ndarray, batch: int = 64) -> np.ndarray:
    """uint8 frames -> their codec reconstruction (encode -> decode), uint8, same shape."""
    out = []
    for i in range(0, len(frames), batch):
        x = torch.from_numpy(frames[i:i + batch]).float().div_(127.5).sub_(1.0).permute(0, 3, 1, 2)
        y = codec.decode(codec.encode(x.to(codec.device, codec.dtype))).float().clamp(-1, 1)
        out.append(((y + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(out) if out else frames.copy()


__all__ = ["MouthReader", "mouth_scores", "reconstruct"]
