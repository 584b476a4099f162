"""Latent codecs (frames <-> scaled latents) and the per-clip latent cache; see `lipstep.codecs.vae`."""

from lipstep.codecs.cache import default_cache_dir, encode_prepared, load_latents, read_cache_info
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
    "encode_prepared", "load_codec", "load_latents", "read_cache_info", "save_codec", "train_codec",
]
