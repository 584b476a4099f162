"""lipstep: fast audio-driven talking avatars by diffusion distillation.

Importing the package is cheap: heavy modules (torch, av, cv2) load only when their layer is used.
"""

__version__ = "0.1.0"

from lipstep.errors import ConfigError, LipstepError, MediaError  # noqa: E402

__all__ = ["__version__", "LipstepError", "ConfigError", "MediaError"]
