"""Neural-network kit: initializers now; layers, losses, optimizers and training to come."""

from . import init

__all__ = ["init"]
