"""Array backends: where vertex values live and which array module (`xp`) computes them."""

from .backend import Backend, get_backend

__all__ = ["Backend", "get_backend"]
