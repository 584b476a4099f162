"""Media builders shared by tests: real-format talking-head videos made from a bundled photo."""

from pathlib import Path

import cv2
import numpy as np
import skimage.data

from lipstep.data.media import write_video

SR = 16000
# (name, fps, frames, width, height): 1.6 s, 2.0 s and 1.8 s long
REAL = [("talk_a.mp4", 30, 48, 320, 240), ("talk_b.mkv", 24, 48, 256, 256), ("talk_c.MOV", 50, 90, 200, 300)]


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """Noise with a 4 Hz syllable-rate envelope: a stand-in for speech."""
    t = np.arange(round(seconds * SR)) / SR
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 4.0 * t)
    return (0.3 * env * np.random.default_rng(seed).standard_normal(t.size)).astype(np.float32)


def astronaut_clip(n: int, width: int, height: int, zoom: float = 0.1) -> np.ndarray:
    """Slow pan and zoom over the astronaut photo, resized to width x height."""
    photo = skimage.data.astronaut()  # 512x512, face centre near (223, 113)
    frames = []
    for i in range(n):
        a = i / max(1, n - 1)
        ch = int(460 * (1 - zoom * a))
        cw = min(512, int(ch * width / height))
        ch = min(ch, int(cw * height / width))
        x = int(np.clip(223 - cw / 2 - 20 + 40 * a, 0, 512 - cw))
        y = int(np.clip(10 + 20 * a, 0, 512 - ch))
        frames.append(cv2.resize(photo[y:y + ch, x:x + cw], (width, height), interpolation=cv2.INTER_AREA))
    return np.stack(frames)


# (name, fps, frames, width, height): 1.6 s, 2.0 s and 1.8 s long
REAL = [("talk_a.mp4", 30, 48, 320, 240), ("talk_b.mkv", 24, 48, 256, 256), ("talk_c.MOV", 50, 90, 200, 300)]


def make_real_folder(src: Path) -> Path:
    """Three real-format videos of different fps/sizes/containers, one corrupt mp4, one text file."""
    for k, (name, fps, n, w, h) in enumerate(REAL):
        write_video(src / name, astronaut_clip(n, w, h), fps, speech_like(n / fps, k), SR)
    (src / "broken.mp4").write_bytes(np.random.default_rng(1).bytes(4096))
    (src / "notes.txt").write_text("not a video")
    return src


def make_tiny_avatar_data(root: Path) -> Path:
    """A real tiny synthetic world (3 identities, 1.2 s clips) prepared at 32 px, plus an untrained
    tiny codec (32 px -> 4x8x8) saved in ``root/codec``. Returns root."""
    import torch

    from lipstep.codecs.vae import CodecConfig, build_codec, save_codec
    from lipstep.data.prepare import PrepareConfig, prepare_dataset
    from lipstep.data.world import WorldConfig, synthesize_world

    cfg = WorldConfig(identities=3, clips_per_identity=1, seconds=1.2, size=32, seed=3)
    synthesize_world(cfg, root / "world", workers=1, progress=False)
    prepare_dataset(root / "world", root / "prepared", PrepareConfig(size=32), workers=1, progress=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        save_codec(build_codec(CodecConfig(image_size=32, block_out_channels=(8, 8, 8), norm_num_groups=8)),
                   root / "codec")
    return root


def make_encoded_tiny_world(root: Path) -> tuple[Path, Path]:
    """`make_tiny_avatar_data` plus its codec latents cached: (root, latent cache directory)."""
    from lipstep.codecs.cache import encode_prepared
    from lipstep.codecs.vae import load_codec

    root = make_tiny_avatar_data(root)
    return root, encode_prepared(root / "prepared", load_codec(root / "codec"), progress=False)


def latent_window_batch(world: tuple[Path, Path], n: int = 2) -> dict:
    """The first ``n`` train windows (4 frames + 2 motion frames) of an encoded tiny world, stacked:
    latents, reference and motion latents, audio and mouth labels."""
    import torch

    from lipstep.data.dataset import WindowConfig, WindowDataset

    root, cache = world
    ds = WindowDataset(root / "prepared", "train", WindowConfig(frames=4, motion_frames=2), latents=cache,
                       pixels=False)
    keys = ("latents", "reference_latent", "motion_latents", "audio", "mouth")
    return {k: torch.stack([ds[i][k] for i in range(n)]) for k in keys}
