"""Latent codecs (frames <-> scaled latents) and the per-clip latent cache writer; see `lipstep.codecs.vae`.

The cache readers are `lipstep.data.latents`."""

from lipstep.codecs.cache import default_cache_dir, encode_prepared
from lipstep.codecs.vae import (
    Codec,
    CodecConfig,
    CodecTrainConfig,
    CodecTrainResult,
    build_codec,
    load_codec,
    save_codec,
    train_codec,
)

__all__ = [
    "Codec", "CodecConfig", "CodecTrainConfig", "CodecTrainResult", "build_codec", "default_cache_dir",
    "encode_prepared", "load_codec", "save_codec", "train_codec",
]
