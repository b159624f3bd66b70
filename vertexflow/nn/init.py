"""Seeded initializers for params: `g.param("w", shape, init=vf.init.glorot_normal(seed=0))`.

An initializer is a callable (shape, dtype) -> array. Each holds one random
generator made from its seed, so successive params drawn from the same
initializer differ, and the whole sequence is reproducible.
"""

from __future__ import annotations

import abc
import math

import numpy as np


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) as Keras and PyTorch count them: dense (in, out), conv (out, in, kh, kw)."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


class Initializer(abc.ABC):
    def __init__(self, seed: int | None = None):
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def __call__(self, shape, dtype="float32") -> np.ndarray:
        return np.asarray(self.sample(self._rng, tuple(shape)), dtype=dtype)

    @abc.abstractmethod
    def sample(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        """Values of `shape` drawn from `rng`."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seed={self.seed})"


class glorot_normal(Initializer):
    """Normal with std sqrt(2 / (fan_in + fan_out)) (Glorot and Bengio, 2010)."""

    def sample(self, rng, shape):
        fan_in, fan_out = _fans(shape)
        return rng.normal(0.0, math.sqrt(2.0 / (fan_in + fan_out)), shape)


class glorot_uniform(Initializer):
    """Uniform on +-sqrt(6 / (fan_in + fan_out))."""

    def sample(self, rng, shape):
        fan_in, fan_out = _fans(shape)
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, shape)


class he_normal(Initializer):
    """Normal with std sqrt(2 / fan_in) (He et al., 2015), for ReLU layers."""

    def sample(self, rng, shape):
        fan_in, _ = _fans(shape)
        return rng.normal(0.0, math.sqrt(2.0 / fan_in), shape)


class normal(Initializer):
    def __init__(self, mean: float = 0.0, std: float = 1.0, seed: int | None = None):
        super().__init__(seed)
        self.mean, self.std = mean, std

    def sample(self, rng, shape):
        return rng.normal(self.mean, self.std, shape)


class uniform(Initializer):
    def __init__(self, low: float = -1.0, high: float = 1.0, seed: int | None = None):
        super().__init__(seed)
        self.low, self.high = low, high

    def sample(self, rng, shape):
        return rng.uniform(self.low, self.high, shape)


class zeros(Initializer):
    def sample(self, rng, shape):
        return np.zeros(shape)


class ones(Initializer):
    def sample(self, rng, shape):
        return np.ones(shape)


__all__ = ["glorot_normal", "glorot_uniform", "he_normal", "normal", "uniform", "zeros", "ones", "Initializer"]
