"""Optimizers: update params' values from the gradients runtime backward returns.

    opt = vf.optim.Adam(params, lr=1e-3)
    loss, grads = executor.backward(feeds, loss_node)
    opt.step(grads)                    # assigns p.value; the next run uses it

The update rules follow PyTorch's (torch.optim) so that training matches it
step for step. Weight decay is L2 added to the gradient, as there;
`clip_norm` scales all gradients together so their global norm is at most it
(torch.nn.utils.clip_grad_norm_), `clip_value` clamps each element. An
optimizer's state (moments, step count) is a flat dict of arrays, saved and
loaded with the model (`vf.nn.save`, `vf.nn.load`).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import GraphError
from ..graph import Node


class Optimizer(abc.ABC):
    """Base: the params, their state slots, and `step(grads)`."""

    slots: tuple[str, ...] = ()

    def __init__(self, params: Sequence[Node], lr: float, weight_decay: float = 0.0,
                 clip_norm: float | None = None, clip_value: float | None = None):
        params = list(params)
        if not params:
            raise GraphError("an optimizer needs at least one param")
        for p in params:
            if p.kind != "param":
                raise GraphError(f"{p.name!r} is a {p.kind}, not a param: only params are optimized")
        names = [p.name for p in params]
        if len(set(names)) != len(names):
            raise GraphError("params given to an optimizer must be distinct")
        self.params = params
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.clip_norm = clip_norm
        self.clip_value = clip_value
        self.steps = 0
        self.state: dict[str, dict[str, np.ndarray]] = {p.name: {} for p in params}

    def _gradients(self, grads: Mapping[Node, np.ndarray]) -> list[np.ndarray]:
        out = []
        for p in self.params:
            if p not in grads:
                raise GraphError(f"no gradient for param {p.name!r}; pass the dict that backward returned")
            g = np.asarray(grads[p], dtype=p.dtype)
            if g.shape != p.shape:
                raise GraphError(f"gradient for {p.name!r} has shape {g.shape}, the param {p.shape}")
            out.append(g)
        if self.clip_value is not None:
            out = [np.clip(g, -self.clip_value, self.clip_value) for g in out]
        if self.clip_norm is not None:
            total = float(np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in out)))
            scale = self.clip_norm / (total + 1e-6)
            if scale < 1.0:
                out = [g * g.dtype.type(scale) for g in out]
        if self.weight_decay:
            out = [g + p.value * p.dtype.type(self.weight_decay) for g, p in zip(out, self.params)]
        return out

    def step(self, grads: Mapping[Node, np.ndarray]) -> None:
        """One update of every param from `grads` ({param: gradient})."""
        gradients = self._gradients(grads)
        self.steps += 1
        for p, g in zip(self.params, gradients):
            p.value = self.update(p.value, g, self.state[p.name])

    @abc.abstractmethod
    def update(self, value: np.ndarray, grad: np.ndarray, state: dict) -> np.ndarray:
        """The param's new value from its value, gradient and state slots (updated in place)."""

    # -- state ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """Flat {"param/slot": array} plus "steps", for saving."""
        out = {"steps": np.asarray(self.steps, dtype=np.int64)}
        for name, slots in self.state.items():
            for slot, array in slots.items():
                out[f"{name}/{slot}"] = array
        return out

    def check_state(self, state: Mapping[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
        """Validate a state_dict against these params; the parsed state, or GraphError saying what is off."""
        shapes = {p.name: p for p in self.params}
        parsed: dict[str, dict[str, np.ndarray]] = {p.name: {} for p in self.params}
        for key, array in state.items():
            array = np.asarray(array)
            if key == "steps":
                self._check_steps(array)
                continue
            name, _, slot = key.rpartition("/")
            if name not in shapes or slot not in self.slots:
                raise GraphError(f"optimizer state has {key!r}, which this {type(self).__name__} over these params lacks")
            p = shapes[name]
            if array.shape != p.shape:
                raise GraphError(f"optimizer state {key!r} has shape {array.shape}, the param {p.shape}")
            if array.dtype.kind not in "fiu":
                raise GraphError(f"optimizer state {key!r} holds {array.dtype} values, not numbers")
            with np.errstate(over="ignore", invalid="ignore"):  # checked after the cast: 1e300 is inf in float32
                cast = np.array(array, dtype=p.dtype)
            if not np.isfinite(cast).all():
                raise GraphError(f"optimizer state {key!r} holds NaN or infinite values (as {p.dtype})")
            parsed[name][slot] = cast
        return parsed

    @staticmethod
    def _check_steps(array: np.ndarray) -> int:
        if array.shape != () or array.dtype.kind not in "iu" or int(array) < 0:
            raise GraphError(f"optimizer state 'steps' must be one integer >= 0, got {array.dtype} of shape "
                             f"{array.shape}")
        return int(array)

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        parsed = self.check_state(state)
        steps = self._check_steps(np.asarray(state.get("steps", 0)))
        self.state = parsed
        self.steps = steps


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum."""

    slots = ("momentum",)

    def __init__(self, params, lr: float = 0.01, momentum: float = 0.0, nesterov: bool = False,
                 dampening: float = 0.0, **options):
        super().__init__(params, lr, **options)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum needs momentum > 0 and no dampening")
        self.momentum, self.nesterov, self.dampening = momentum, nesterov, dampening

    def update(self, value, grad, state):
        if self.momentum:
            buf = state.get("momentum")
            if buf is None:
                buf = grad.copy()
            else:
                buf = buf * grad.dtype.type(self.momentum) + grad * grad.dtype.type(1 - self.dampening)
            state["momentum"] = buf
            grad = grad + buf * grad.dtype.type(self.momentum) if self.nesterov else buf
        return value - grad * value.dtype.type(self.lr)


class RMSProp(Optimizer):
    """Divide by a running root mean square of gradients (torch.optim.RMSprop, centered=False)."""

    slots = ("square_avg", "momentum")

    def __init__(self, params, lr: float = 0.01, alpha: float = 0.99, eps: float = 1e-8, momentum: float = 0.0,
                 **options):
        super().__init__(params, lr, **options)
        self.alpha, self.eps, self.momentum = alpha, eps, momentum

    def update(self, value, grad, state):
        t = value.dtype.type
        avg = state.get("square_avg", np.zeros_like(value))
        avg = avg * t(self.alpha) + grad * grad * t(1 - self.alpha)
        state["square_avg"] = avg
        step = grad / (np.sqrt(avg) + t(self.eps))
        if self.momentum:
            buf = state.get("momentum", np.zeros_like(value)) * t(self.momentum) + step
            state["momentum"] = buf
            step = buf
        return value - step * t(self.lr)


class Adam(Optimizer):
    """Adaptive moments with bias correction (torch.optim.Adam)."""

    slots = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 **options):
        super().__init__(params, lr, **options)
        self.beta1, self.beta2 = betas
        self.eps = eps

    def update(self, value, grad, state):
        t = value.dtype.type
        m = state.get("exp_avg", np.zeros_like(value)) * t(self.beta1) + grad * t(1 - self.beta1)
        v = state.get("exp_avg_sq", np.zeros_like(value)) * t(self.beta2) + grad * grad * t(1 - self.beta2)
        state["exp_avg"], state["exp_avg_sq"] = m, v
        correction1 = 1 - self.beta1**self.steps
        correction2 = 1 - self.beta2**self.steps
        denom = np.sqrt(v) / t(np.sqrt(correction2)) + t(self.eps)
        return value - (m / denom) * t(self.lr / correction1)


class AdaGrad(Optimizer):
    """Per-element learning rates from the sum of squared gradients (torch.optim.Adagrad)."""

    slots = ("sum",)

    def __init__(self, params, lr: float = 0.01, lr_decay: float = 0.0, eps: float = 1e-10, **options):
        super().__init__(params, lr, **options)
        self.lr_decay, self.eps = lr_decay, eps

    def update(self, value, grad, state):
        t = value.dtype.type
        total = state.get("sum", np.zeros_like(value)) + grad * grad
        state["sum"] = total
        lr = self.lr / (1 + (self.steps - 1) * self.lr_decay)
        return value - grad / (np.sqrt(total) + t(self.eps)) * t(lr)


__all__ = ["Optimizer", "SGD", "RMSProp", "Adam", "AdaGrad"]
