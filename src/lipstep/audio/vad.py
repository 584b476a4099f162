"""Voice activity per video frame: frame energy in dB over a tracked background floor, with hysteresis.

What it is for: a streaming client needs to know, frame by frame, whether the avatar is being driven by
speech or by silence (to show a speaking / listening state, to end a turn, to stop sending a muted
microphone). `AvatarPipeline.stream` reports it with every frame and `lipstep serve` sends it in every
frame's header. It does not change what is generated, and no pixel is edited because of it: a closed
mouth in silence has to come from the model, which sees silent audio windows (see README, streaming).

How: the energy of each frame's samples in dB full scale, ``10·log10(mean(x²))``, is compared with a
background floor. The floor starts at ``floor_db``, drops at once to any quieter frame (never below
``floor_db``) and rises by at most ``rise_db_per_s``, so pauses between words pull it down to the room's
level while steady noise lifts it within seconds. Voice turns on when a frame is ``on_db`` over the
floor and off after ``hangover`` frames in a row below ``off_db`` over it (``off_db < on_db``, so a level
near one threshold cannot flicker, and short gaps between syllables stay voiced). It is causal and
looks at each frame's own samples only, so it never delays a frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lipstep.config import check


@dataclass
class VADConfig:
    floor_db: float = -60.0         # dBFS: the quietest background the floor can fall to
    on_db: float = 15.0             # voice turns on at this many dB over the floor
    off_db: float = 8.0             # ... and off below this many dB over it, after `hangover` frames
    hangover: int = 4               # quiet frames bridged (160 ms at 25 fps): voice is off by the 5th, 200 ms
    rise_db_per_s: float = 3.0      # how fast the floor may follow rising background noise

    def validate(self) -> None:
        check(-150.0 <= self.floor_db <= 0.0, f"vad.floor_db must be in -150..0 dBFS, got {self.floor_db}")
        check(0.0 <= self.off_db <= self.on_db, f"vad needs 0 <= off_db <= on_db, got {self.off_db}, {self.on_db}")
        check(self.hangover >= 0, f"vad.hangover must be >= 0, got {self.hangover}")
        check(self.rise_db_per_s >= 0, f"vad.rise_db_per_s must be >= 0, got {self.rise_db_per_s}")


class VoiceActivity:
    """Causal voice activity of each video frame of a stream (see the module docstring).

    ``push(samples)`` returns ``(voice, db_over_floor)`` for every frame whose samples are complete;
    ``finish(n_frames)`` the rest up to `n_frames` (a partial last frame is read as it is; frames past the
    audio are silent). Frame t covers samples ``[round(t·rate/fps), round((t+1)·rate/fps))``.
    """

    def __init__(self, cfg: VADConfig | None = None, sample_rate: int = 16000, fps: float = 25.0):
        self.cfg = cfg or VADConfig()
        self.cfg.validate()
        self.sample_rate, self.fps = int(sample_rate), float(fps)
        self.floor = self.cfg.floor_db
        self.voice = False
        self.quiet = 0                          # frames in a row below off_db while voiced
        self.frame = 0                          # index of the next frame
        self.start = 0                          # absolute index of `tail[0]`
        self.tail = np.zeros(0, np.float32)     # samples of the next frame that have arrived (< one frame)

    def _bounds(self, t: int) -> tuple[int, int]:
        return round(t * self.sample_rate / self.fps), round((t + 1) * self.sample_rate / self.fps)

    def push(self, wav: np.ndarray) -> list[tuple[bool, float]]:
        self.tail = np.concatenate([self.tail, np.asarray(wav, np.float32).reshape(-1)])
        out = []
        while True:
            a, b = self._bounds(self.frame)
            if self.start + len(self.tail) < b:
                return out
            out.append(self._step(self.tail[a - self.start:b - self.start]))
            self.tail, self.start = self.tail[b - self.start:], b

    def finish(self, n_frames: int) -> list[tuple[bool, float]]:
        out = []
        while self.frame < n_frames:
            a, b = self._bounds(self.frame)
            piece = self.tail[max(0, a - self.start):max(0, b - self.start)]
            out.append(self._step(piece))
        self.tail = np.zeros(0, np.float32)
        return out

    def _step(self, x: np.ndarray) -> tuple[bool, float]:
        """Update the floor and the state with one frame's samples."""
        cfg = self.cfg
        energy = float(np.mean(np.square(x, dtype=np.float64))) if x.size else 0.0
        level = 10.0 * np.log10(max(energy, 1e-15))  # dBFS
        rise = cfg.rise_db_per_s / self.fps
        self.floor = max(cfg.floor_db, min(level, self.floor + rise))
        over = level - self.floor
        if over >= cfg.on_db:
            self.voice, self.quiet = True, 0
        elif self.voice and over < cfg.off_db:
            self.quiet += 1
            if self.quiet > cfg.hangover:
                self.voice, self.quiet = False, 0
        elif self.voice:
            self.quiet = 0
        self.frame += 1
        return self.voice, float(over)


__all__ = ["VADConfig", "VoiceActivity"]
