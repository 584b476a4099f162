"""lipstep.nets: pure nn.Modules: the AvatarDiT denoiser (`dit`, re-exported here) and the evaluators'
networks (`syncnet`, `mouthreader`, `identity`, `features`, `inception`)."""

from lipstep.nets.dit import *  # the public names are dit.__all__
from lipstep.nets.dit import __all__  # noqa: F401
