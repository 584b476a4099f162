"""lipstep.nets: pure nn.Modules (the AvatarDiT denoiser network and its layers)."""

from lipstep.nets.dit import *  # noqa: F401,F403  (the public names are dit.__all__)
from lipstep.nets.dit import __all__  # noqa: F401
