"""Audio encoders: speech or viseme labels -> per-video-frame windows [T, K, D]; see `lipstep.audio.encoders`
(and `lipstep.audio.visemes` for the audio -> viseme classifier)."""

from lipstep.audio.encoders import (
    AudioConfig,
    AudioEncoder,
    HFAudioEncoder,
    MelEncoder,
    VisemeAudioEncoder,
    VisemeEncoder,
    build_audio_encoder,
    load_audio_encoder,
    save_audio_encoder,
)

__all__ = [
    "AudioConfig", "AudioEncoder", "HFAudioEncoder", "MelEncoder", "VisemeAudioEncoder", "VisemeEncoder",
    "build_audio_encoder", "load_audio_encoder", "save_audio_encoder",
]
