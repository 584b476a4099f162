"""lipstep: fast audio-driven talking avatars by diffusion distillation.

Importing the package is cheap: heavy modules (torch, av, cv2) load only when their layer is used.
"""

from lipstep.errors import ConfigError, LipstepError, MediaError

__version__ = "0.1.0"

__all__ = ["ConfigError", "LipstepError", "MediaError", "__version__"]
