"""`vf.init`: the seeded initializers of `vertexflow.nn.init`, under the short name."""

from .nn.init import *  # noqa: F403
from .nn.init import __all__  # noqa: F401
