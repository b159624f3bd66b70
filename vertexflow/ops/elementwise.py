"""Elementwise ops: unary math, broadcasting binary math, comparisons, `where`, casts.

Each op's derivative rule sits right below its forward. Binary rules reduce
their gradients back to each input's shape with `F.sum_to`, the one shared
broadcasting helper.
"""

from __future__ import annotations

from ..errors import ShapeError
from ..graph import Spec, as_dtype
from .base import Op, broadcast_shapes, numel, require_float, require_numeric, sum_to, summing_to


# -- unary -------------------------------------------------------------------
class Unary(Op):
    """One input, same shape and dtype out; floating point only unless `numeric`."""

    numeric = False
    writes_out = True
    inplace = True
    # Costs are in "simple-op element" units: a transcendental takes several times an add.
    per_element = 1.0

    def infer(self, x: Spec) -> Spec:
        (require_numeric if self.numeric else require_float)(x)
        return x

    def cost(self, x: Spec) -> float:
        return self.per_element * numel(x)


class Negative(Unary):
    name = "neg"
    ufunc = "negative"
    numeric = True

    def forward(self, xp, x, out=None):
        return xp.negative(x, out=out)

    def vjp(self, F, g, xs, y):
        return (F.neg(g),)


class Abs(Unary):
    name = "abs"
    ufunc = "absolute"
    numeric = True

    def forward(self, xp, x, out=None):
        return xp.abs(x, out=out)

    def vjp(self, F, g, xs, y):
        return (F.mul(g, F.sign(xs[0])),)


class Sign(Unary):
    name = "sign"
    ufunc = "sign"
    numeric = True

    def forward(self, xp, x, out=None):
        return xp.sign(x, out=out)

    def vjp(self, F, g, xs, y):
        return (None,)  # zero almost everywhere


class Exp(Unary):
    name = "exp"
    vjp_reads_inputs = False  # g * y
    vjp_fresh = True
    ufunc = "exp"
    per_element = 8.0

    def forward(self, xp, x, out=None):
        return xp.exp(x, out=out)

    def vjp(self, F, g, xs, y):
        return (F.mul(g, y),)


class Log(Unary):
    name = "log"
    ufunc = "log"
    per_element = 8.0

    def forward(self, xp, x, out=None):
        return xp.log(x, out=out)

    def vjp(self, F, g, xs, y):
        return (F.div(g, xs[0]),)


class Sqrt(Unary):
    name = "sqrt"
    vjp_reads_inputs = False  # g / 2y
    vjp_fresh = True
    ufunc = "sqrt"
    per_element = 2.0

    def forward(self, xp, x, out=None):
        return xp.sqrt(x, out=out)

    def vjp(self, F, g, xs, y):
        return (F.div(g, F.mul(y, 2)),)


class Tanh(Unary):
    name = "tanh"
    vjp_reads_inputs = False  # g (1 - y^2)
    vjp_fresh = True
    ufunc = "tanh"
    per_element = 8.0

    def forward(self, xp, x, out=None):
        return xp.tanh(x, out=out)

    def vjp(self, F, g, xs, y):
        return (F.mul(g, F.sub(1, F.mul(y, y))),)


class Sigmoid(Unary):
    name = "sigmoid"
    vjp_reads_inputs = False  # g y (1 - y)
    vjp_fresh = True
    per_element = 12.0

    def forward(self, xp, x, out=None):
        # 1 / (1 + exp(-x)) in place, four passes over one buffer. For x << 0, exp(-x)
        # overflows to inf and the result is 0 (exact to the dtype's precision), never NaN;
        # for x >> 0 it is 1. (exp(-logaddexp(0, -x)) is as stable but ten times slower.)
        out = xp.negative(x, out=out)
        xp.exp(out, out=out)
        xp.add(out, x.dtype.type(1), out=out)
        return xp.reciprocal(out, out=out)

    def vjp(self, F, g, xs, y):
        return (F.mul(F.mul(g, y), F.sub(1, y)),)


class Erf(Unary):
    """The error function: a compiled float32 kernel (kernels/special.py), scipy.special otherwise
    (cupyx.scipy.special on a GPU): numpy has none."""

    name = "erf"
    per_element = 12.0
    inplace = False  # its float32 kernel is a numba ufunc: 2.7x slower given its own input as out=

    def forward(self, xp, x, out=None):
        if xp.__name__ == "numpy":
            if x.dtype == xp.float32:
                from ..kernels.special import erf32

                return erf32(x, out=out)
            from scipy import special
        else:
            from cupyx.scipy import special
        return special.erf(x, out=out)

    def vjp(self, F, g, xs, y):
        (x,) = xs
        return (F.mul(g, F.mul(F.exp(F.neg(F.mul(x, x))), _TWO_OVER_SQRT_PI)),)


_TWO_OVER_SQRT_PI = 1.1283791670955126


class Relu(Unary):
    name = "relu"
    vjp_reads_inputs = False  # g (y > 0)
    vjp_fresh = True

    def forward(self, xp, x, out=None):
        # The ufunc itself: np.clip's Python wrapper costs more than the pass on a small array. (NaN
        # and -0.0 come out as clip(x, 0, inf) gives them, so the epilogue kernel's CLIP matches.)
        return xp.maximum(x, x.dtype.type(0), out=out)

    def vjp(self, F, g, xs, y):
        return (F.apply(_RELU_GRAD, g, y),)

    def bind_vjp(self, xp, needs, specs, out):
        rule = _RELU_GRAD.bind(xp, (out, out), out)

        def derivative(g, x, y):
            return (rule(g, y),)

        return derivative


class ReluGrad(Op):
    """g * (y > 0): relu's derivative rule (y its output), one pass (kernels/special.py)."""

    name = "relu_grad"
    writes_out = True

    def infer(self, g: Spec, y: Spec) -> Spec:
        require_float(g)
        return Spec(broadcast_shapes(g.shape, y.shape), g.dtype)

    def forward(self, xp, g, y, out=None):
        if xp.__name__ == "numpy":
            from ..kernels.special import relu_grad

            return relu_grad(g, y, out=out)
        return xp.multiply(g, y > 0, out=out)

    def bind(self, xp, specs, out):
        if xp.__name__ == "numpy":
            from ..kernels.special import relu_grad, relu_grad_for

            g, y = specs
            return relu_grad_for(out.shape, out.dtype) if g == y == out and out.static else relu_grad
        return super().bind(xp, specs, out)

    def vjp(self, F, h, xs, y):
        return (F.apply(_RELU_GRAD, h, xs[1]), None)  # linear in g; y only selects

    def cost(self, g: Spec, y: Spec) -> float:
        return 2.0 * max(numel(g), numel(y))


_RELU_GRAD = ReluGrad()


class Clip(Unary):
    """min(max(x, low), high) for constant bounds (ONNX's Clip, ReLU6): one pass, NaN kept."""

    name = "clip"

    def __init__(self, low: float | None = None, high: float | None = None):
        self.low = -float("inf") if low is None else float(low)
        self.high = float("inf") if high is None else float(high)
        if self.low > self.high:
            raise ShapeError(f"clip: low {self.low} is above high {self.high}")

    def forward(self, xp, x, out=None):
        t = x.dtype.type
        return xp.clip(x, t(self.low), t(self.high), out=out)

    def vjp(self, F, g, xs, y):
        # the gradient passes where x is strictly inside the bounds (torch's rule at the ends: it passes)
        (x,) = xs
        return (F.where(F.less(x, self.low), 0.0, F.where(F.greater(x, self.high), 0.0, g)),)

    def cost(self, x: Spec) -> float:
        return float(numel(x))


class LeakyRelu(Unary):
    name = "leaky_relu"

    def __init__(self, negative_slope: float = 0.01):
        self.negative_slope = float(negative_slope)

    writes_out = False

    def forward(self, xp, x):
        return xp.where(x > 0, x, x * x.dtype.type(self.negative_slope))

    def vjp(self, F, g, xs, y):
        return (F.where(F.greater(xs[0], 0), g, F.mul(g, self.negative_slope)),)


class Cast(Op):
    name = "astype"

    def __init__(self, dtype):
        self.dtype = as_dtype(dtype)

    def infer(self, x: Spec) -> Spec:
        return Spec(x.shape, self.dtype)

    def forward(self, xp, x):
        return x.astype(self.dtype, copy=False)

    def vjp(self, F, g, xs, y):
        source = F.dtype(xs[0])
        if source.kind != "f" or self.dtype.kind != "f":
            return (None,)
        return (F.cast(g, source),)


# -- binary ------------------------------------------------------------------
class Binary(Op):
    """Two inputs broadcast together, numpy's dtype promotion."""

    writes_out = True
    inplace = True

    def infer(self, a: Spec, b: Spec) -> Spec:
        for s in (a, b):
            if s.dtype.kind not in "fiub":
                raise ShapeError(f"needs numeric or boolean inputs, got {s.dtype}")
        return Spec(broadcast_shapes(a.shape, b.shape), _promote(a, b))

    def cost(self, a: Spec, b: Spec) -> float:
        return float(max(numel(a), numel(b)))


def _promote(*specs: Spec):
    import numpy as np

    return np.result_type(*(s.dtype for s in specs))


class Add(Binary):
    name = "add"
    vjp_reads_inputs = vjp_reads_output = False  # g, summed to each input's shape
    vjp_fresh = True
    ufunc = "add"

    def forward(self, xp, a, b, out=None):
        return xp.add(a, b, out=out)

    def vjp(self, F, g, xs, y):
        a, b = xs
        need_a, need_b = F.needs_input_grad
        return (F.sum_to(g, a) if need_a else None, F.sum_to(g, b) if need_b else None)

    def bind_vjp(self, xp, needs, specs, out):
        # g itself, or g summed to an input's shape (a bias's gradient): the reductions chosen ahead
        (need_a, need_b), (a, b), shape = needs, specs, out.shape
        to_a, to_b = (summing_to(xp, shape, s.shape) for s in (a, b))

        def derivative(g, x, y, z):
            if g.shape != shape:  # a gradient shaped otherwise than the output: reduced by its own shape
                return (sum_to(xp, g, a.shape) if need_a else None, sum_to(xp, g, b.shape) if need_b else None)
            return (None if not need_a else g if to_a is None else to_a(g),
                    None if not need_b else g if to_b is None else to_b(g))

        return derivative


class Subtract(Binary):
    name = "sub"
    vjp_reads_inputs = vjp_reads_output = False  # g and -g, summed to each input's shape
    vjp_fresh = True
    ufunc = "subtract"

    def forward(self, xp, a, b, out=None):
        return xp.subtract(a, b, out=out)

    def vjp(self, F, g, xs, y):
        a, b = xs
        need_a, need_b = F.needs_input_grad
        return (F.sum_to(g, a) if need_a else None, F.sum_to(F.neg(g), b) if need_b else None)


class Multiply(Binary):
    name = "mul"
    vjp_reads_output = False
    vjp_fresh = True
    ufunc = "multiply"

    def forward(self, xp, a, b, out=None):
        return xp.multiply(a, b, out=out)

    def vjp(self, F, g, xs, y):
        a, b = xs
        need_a, need_b = F.needs_input_grad
        return (
            F.sum_to(F.mul(g, b), a) if need_a else None,
            F.sum_to(F.mul(g, a), b) if need_b else None,
        )


class Divide(Binary):
    name = "div"
    ufunc = "true_divide"

    def infer(self, a: Spec, b: Spec) -> Spec:
        spec = super().infer(a, b)
        if spec.dtype.kind != "f":  # numpy's true division of integers gives float64
            return Spec(spec.shape, "float64")
        return spec

    def forward(self, xp, a, b, out=None):
        return xp.true_divide(a, b, out=out)

    def vjp(self, F, g, xs, y):
        a, b = xs
        need_a, need_b = F.needs_input_grad
        return (
            F.sum_to(F.div(g, b), a) if need_a else None,
            F.sum_to(F.neg(F.div(F.mul(g, y), b)), b) if need_b else None,
        )


class Power(Binary):
    name = "pow"
    ufunc = "power"

    def forward(self, xp, a, b, out=None):
        return xp.power(a, b, out=out)

    def vjp(self, F, g, xs, y):
        a, b = xs
        need_a, need_b = F.needs_input_grad
        ga = gb = None
        if need_a:
            ga = F.sum_to(F.mul(F.mul(g, b), F.power(a, F.sub(b, 1))), a)
        if need_b:
            # d(a**b)/db = a**b * log(a); taken as 0 where a <= 0 (no real logarithm there).
            positive = F.greater(a, 0)
            log_a = F.log(F.where(positive, a, 1))
            gb = F.sum_to(F.where(positive, F.mul(F.mul(g, y), log_a), 0), b)
        return (ga, gb)


class Maximum(Binary):
    name = "maximum"
    ufunc = "maximum"

    def forward(self, xp, a, b, out=None):
        return xp.maximum(a, b, out=out)

    def vjp(self, F, g, xs, y):
        return _select_vjp(F, g, xs, F.greater)


class Minimum(Binary):
    name = "minimum"
    ufunc = "minimum"

    def forward(self, xp, a, b, out=None):
        return xp.minimum(a, b, out=out)

    def vjp(self, F, g, xs, y):
        return _select_vjp(F, g, xs, F.less)


class Remainder(Binary):
    """a mod b: with the divisor's sign (numpy's `mod`, Python's %), or the dividend's (`fmod`, C's)."""

    name = "mod"

    def __init__(self, fmod: bool = False):
        self.fmod = bool(fmod)

    def forward(self, xp, a, b, out=None):
        return (xp.fmod if self.fmod else xp.mod)(a, b, out=out)

    def vjp(self, F, g, xs, y):
        # a - q * b with q = floor(a / b) (or its truncation) piecewise constant: d/da = 1, d/db = -q.
        a, b = xs
        need_a, need_b = F.needs_input_grad
        gb = None
        if need_b:
            quotient = F.div(F.sub(a, y), b)
            gb = F.sum_to(F.neg(F.mul(g, quotient)), b)
        return (F.sum_to(g, a) if need_a else None, gb)


def _select_vjp(F, g, xs, wins):
    """Gradient of max/min: to the winner; split evenly on ties (as PyTorch does)."""
    a, b = xs
    need_a, need_b = F.needs_input_grad
    tie = F.equal(a, b)
    half = F.mul(g, 0.5)
    ga = F.sum_to(F.where(wins(a, b), g, F.where(tie, half, 0)), a) if need_a else None
    gb = F.sum_to(F.where(wins(b, a), g, F.where(tie, half, 0)), b) if need_b else None
    return (ga, gb)


class Compare(Binary):
    """Comparisons give booleans and pass no gradient."""

    ufunc = ""

    def infer(self, a: Spec, b: Spec) -> Spec:
        return Spec(broadcast_shapes(a.shape, b.shape), "bool")

    def forward(self, xp, a, b, out=None):
        return getattr(xp, self.ufunc)(a, b, out=out)

    def vjp(self, F, g, xs, y):
        return (None, None)


class Greater(Compare):
    name = ufunc = "greater"


class Less(Compare):
    name = ufunc = "less"


class GreaterEqual(Compare):
    name = ufunc = "greater_equal"


class LessEqual(Compare):
    name = ufunc = "less_equal"


class Equal(Compare):
    name = ufunc = "equal"


class NotEqual(Compare):
    name = ufunc = "not_equal"


class Logical(Compare):
    """and, or, xor of booleans."""

    def infer(self, a: Spec, b: Spec) -> Spec:
        for s in (a, b):
            if s.dtype.kind != "b":
                raise ShapeError(f"needs boolean inputs, got {s.dtype}")
        return super().infer(a, b)


class LogicalAnd(Logical):
    name = ufunc = "logical_and"


class LogicalOr(Logical):
    name = ufunc = "logical_or"


class LogicalXor(Logical):
    name = ufunc = "logical_xor"


class LogicalNot(Unary):
    name = "logical_not"
    ufunc = "logical_not"

    def infer(self, x: Spec) -> Spec:
        if x.dtype.kind != "b":
            raise ShapeError(f"needs a boolean input, got {x.dtype}")
        return x

    def forward(self, xp, x, out=None):
        return xp.logical_not(x, out=out)

    def vjp(self, F, g, xs, y):
        return (None,)


# -- trigonometric, hyperbolic, rounding and tests -----------------------------
class Sin(Unary):
    name = ufunc = "sin"
    per_element = 8.0

    def forward(self, xp, x, out=None):
        return xp.sin(x, out=out)

    def vjp(self, F, g, xs, y):
        return (F.mul(g, F.apply(_COS, xs[0])),)


class Cos(Unary):
    name = ufunc = "cos"
    per_element = 8.0

    def forward(self, xp, x, out=None):
        return xp.cos(x, out=out)

    def vjp(self, F, g, xs, y):
        return (F.neg(F.mul(g, F.apply(_SIN, xs[0]))),)


class Tan(Unary):
    name = ufunc = "tan"
    per_element = 8.0

    def forward(self, xp, x, out=None):
        return xp.tan(x, out=out)

    def vjp(self, F, g, xs, y):
        return (F.mul(g, F.add(F.mul(y, y), 1)),)


class Arcsin(Unary):
    name = "asin"
    ufunc = "arcsin"
    per_element = 8.0

    def forward(self, xp, x, out=None):
        return xp.arcsin(x, out=out)

    def vjp(self, F, g, xs, y):
        x = xs[0]
        return (F.mul(g, F.power(F.sub(1, F.mul(x, x)), -0.5)),)


class Arccos(Unary):
    name = "acos"
    ufunc = "arccos"
    per_element = 8.0

    def forward(self, xp, x, out=None):
        return xp.arccos(x, out=out)

    def vjp(self, F, g, xs, y):
        x = xs[0]
        return (F.neg(F.mul(g, F.power(F.sub(1, F.mul(x, x)), -0.5))),)


class Arctan(Unary):
    name = "atan"
    ufunc = "arctan"
    per_element = 8.0

    def forward(self, xp, x, out=None):
        return xp.arctan(x, out=out)

    def vjp(self, F, g, xs, y):
        x = xs[0]
        return (F.div(g, F.add(F.mul(x, x), 1)),)


class Sinh(Unary):
    name = ufunc = "sinh"
    per_element = 8.0

    def forward(self, xp, x, out=None):
        return xp.sinh(x, out=out)

    def vjp(self, F, g, xs, y):
        return (F.mul(g, F.apply(_COSH, xs[0])),)


class Cosh(Unary):
    name = ufunc = "cosh"
    per_element = 8.0

    def forward(self, xp, x, out=None):
        return xp.cosh(x, out=out)

    def vjp(self, F, g, xs, y):
        return (F.mul(g, F.apply(_SINH, xs[0])),)


class Arcsinh(Unary):
    name = "asinh"
    ufunc = "arcsinh"
    per_element = 8.0

    def forward(self, xp, x, out=None):
        return xp.arcsinh(x, out=out)

    def vjp(self, F, g, xs, y):
        x = xs[0]
        return (F.mul(g, F.power(F.add(F.mul(x, x), 1), -0.5)),)


class Arccosh(Unary):
    name = "acosh"
    ufunc = "arccosh"
    per_element = 8.0

    def forward(self, xp, x, out=None):
        return xp.arccosh(x, out=out)

    def vjp(self, F, g, xs, y):
        x = xs[0]
        return (F.mul(g, F.power(F.sub(F.mul(x, x), 1), -0.5)),)


class Arctanh(Unary):
    name = "atanh"
    ufunc = "arctanh"
    per_element = 8.0

    def forward(self, xp, x, out=None):
        return xp.arctanh(x, out=out)

    def vjp(self, F, g, xs, y):
        x = xs[0]
        return (F.div(g, F.sub(1, F.mul(x, x))),)


class Floor(Unary):
    name = ufunc = "floor"

    def forward(self, xp, x, out=None):
        return xp.floor(x, out=out)

    def vjp(self, F, g, xs, y):
        return (None,)  # zero almost everywhere


class Ceil(Unary):
    name = ufunc = "ceil"

    def forward(self, xp, x, out=None):
        return xp.ceil(x, out=out)

    def vjp(self, F, g, xs, y):
        return (None,)


class Round(Unary):
    """Halves to even, as numpy and ONNX round."""

    name = "round"
    ufunc = "rint"

    def forward(self, xp, x, out=None):
        return xp.rint(x, out=out)

    def vjp(self, F, g, xs, y):
        return (None,)


class IsNaN(Unary):
    name = ufunc = "isnan"
    writes_out = inplace = False

    def infer(self, x: Spec) -> Spec:
        require_float(x)
        return Spec(x.shape, "bool")

    def forward(self, xp, x):
        return xp.isnan(x)

    def vjp(self, F, g, xs, y):
        return (None,)


class IsInf(Unary):
    """x is +inf (when `positive`) or -inf (when `negative`)."""

    name = "isinf"
    writes_out = inplace = False

    def __init__(self, positive: bool = True, negative: bool = True):
        self.positive, self.negative = bool(positive), bool(negative)

    def infer(self, x: Spec) -> Spec:
        require_float(x)
        return Spec(x.shape, "bool")

    def forward(self, xp, x):
        if self.positive and self.negative:
            return xp.isinf(x)
        if self.positive:
            return xp.isposinf(x)
        if self.negative:
            return xp.isneginf(x)
        return xp.zeros(x.shape, dtype=bool)

    def vjp(self, F, g, xs, y):
        return (None,)


_SIN, _COS, _SINH, _COSH = Sin(), Cos(), Sinh(), Cosh()


# -- bitwise -----------------------------------------------------------------
class Bitwise(Binary):
    """An integer (or boolean) bitwise op, numpy's dtype promotion; no derivative."""

    def infer(self, a: Spec, b: Spec) -> Spec:
        for s in (a, b):
            if s.dtype.kind not in "iub":
                raise ShapeError(f"{self.name} needs integer or boolean inputs, got {s.dtype}")
        return Spec(broadcast_shapes(a.shape, b.shape), _promote(a, b))

    def forward(self, xp, a, b, out=None):
        return getattr(xp, self.ufunc)(a, b, out=out)

    def vjp(self, F, g, xs, y):
        return (None, None)


class BitwiseAnd(Bitwise):
    name = ufunc = "bitwise_and"


class BitwiseOr(Bitwise):
    name = ufunc = "bitwise_or"


class BitwiseXor(Bitwise):
    name = ufunc = "bitwise_xor"


class LeftShift(Bitwise):
    name = ufunc = "left_shift"


class RightShift(Bitwise):
    name = ufunc = "right_shift"


class BitwiseNot(Unary):
    name = "bitwise_not"
    ufunc = "invert"

    def infer(self, x: Spec) -> Spec:
        if x.dtype.kind not in "iub":
            raise ShapeError(f"bitwise_not needs an integer or boolean input, got {x.dtype}")
        return x

    def forward(self, xp, x, out=None):
        return xp.invert(x, out=out)

    def vjp(self, F, g, xs, y):
        return (None,)


class Where(Op):
    name = "where"

    def infer(self, cond: Spec, a: Spec, b: Spec) -> Spec:
        if cond.dtype.kind != "b":
            raise ShapeError(f"condition must be boolean, got {cond.dtype}")
        return Spec(broadcast_shapes(cond.shape, a.shape, b.shape), _promote(a, b))

    writes_out = True

    def forward(self, xp, cond, a, b, out=None):
        if out is None:
            return xp.where(cond, a, b)
        xp.copyto(out, b)
        xp.copyto(out, a, where=cond)
        return out

    def vjp(self, F, g, xs, y):
        cond, a, b = xs
        _, need_a, need_b = F.needs_input_grad
        return (
            None,
            F.sum_to(F.where(cond, g, 0), a) if need_a else None,
            F.sum_to(F.where(cond, 0, g), b) if need_b else None,
        )

    def cost(self, *specs: Spec) -> float:
        return float(max(numel(s) for s in specs))


# -- functions ---------------------------------------------------------------
def add(a, b, name=None):
    """a + b with broadcasting."""
    return Add()(a, b, name=name)


def subtract(a, b, name=None):
    return Subtract()(a, b, name=name)


def multiply(a, b, name=None):
    return Multiply()(a, b, name=name)


def divide(a, b, name=None):
    return Divide()(a, b, name=name)


def power(a, b, name=None):
    return Power()(a, b, name=name)


def maximum(a, b, name=None):
    return Maximum()(a, b, name=name)


def minimum(a, b, name=None):
    return Minimum()(a, b, name=name)


def negative(x, name=None):
    return Negative()(x, name=name)


def abs(x, name=None):  # noqa: A001 - numpy's name
    return Abs()(x, name=name)


def sign(x, name=None):
    return Sign()(x, name=name)


def exp(x, name=None):
    return Exp()(x, name=name)


def log(x, name=None):
    return Log()(x, name=name)


def sqrt(x, name=None):
    return Sqrt()(x, name=name)


def tanh(x, name=None):
    return Tanh()(x, name=name)


def sigmoid(x, name=None):
    return Sigmoid()(x, name=name)


def relu(x, name=None):
    return Relu()(x, name=name)


def erf(x, name=None):
    return Erf()(x, name=name)


def gelu(x, approximate: str = "none", name=None):
    """x * P(X <= x) for a standard normal X, as torch.nn.GELU: exactly (one vertex, one pass), or with
    `approximate="tanh"` (built from elementwise vertices; `name` names the last of them).
    """
    if approximate == "none":
        from .activation import Gelu

        return Gelu()(x, name=name)
    if approximate == "tanh":
        inner = multiply(add(x, multiply(multiply(multiply(x, x), x), 0.044715)), 0.7978845608028654)
        return multiply(multiply(x, 0.5), add(tanh(inner), 1.0), name=name)
    raise ValueError(f"gelu: approximate= takes 'none' or 'tanh', got {approximate!r}")


def clip(x, low=None, high=None, name=None):
    """x limited to [low, high] (constant bounds; None: unbounded on that side), as numpy's clip."""
    return Clip(low, high)(x, name=name)


def leaky_relu(x, negative_slope=0.01, name=None):
    return LeakyRelu(negative_slope)(x, name=name)


def astype(x, dtype, name=None):
    return Cast(dtype)(x, name=name)


def greater(a, b, name=None):
    return Greater()(a, b, name=name)


def less(a, b, name=None):
    return Less()(a, b, name=name)


def greater_equal(a, b, name=None):
    return GreaterEqual()(a, b, name=name)


def less_equal(a, b, name=None):
    return LessEqual()(a, b, name=name)


def equal(a, b, name=None):
    return Equal()(a, b, name=name)


def not_equal(a, b, name=None):
    return NotEqual()(a, b, name=name)


def remainder(a, b, fmod=False, name=None):
    """a mod b elementwise: the result takes b's sign (numpy's `mod`), or a's with fmod=True."""
    return Remainder(fmod)(a, b, name=name)


def logical_and(a, b, name=None):
    return LogicalAnd()(a, b, name=name)


def logical_or(a, b, name=None):
    return LogicalOr()(a, b, name=name)


def logical_xor(a, b, name=None):
    return LogicalXor()(a, b, name=name)


def logical_not(x, name=None):
    return LogicalNot()(x, name=name)


def where(cond, a, b, name=None):
    return Where()(cond, a, b, name=name)


def sin(x, name=None):
    return Sin()(x, name=name)


def cos(x, name=None):
    return Cos()(x, name=name)


def tan(x, name=None):
    return Tan()(x, name=name)


def arcsin(x, name=None):
    return Arcsin()(x, name=name)


def arccos(x, name=None):
    return Arccos()(x, name=name)


def arctan(x, name=None):
    return Arctan()(x, name=name)


def sinh(x, name=None):
    return Sinh()(x, name=name)


def cosh(x, name=None):
    return Cosh()(x, name=name)


def arcsinh(x, name=None):
    return Arcsinh()(x, name=name)


def arccosh(x, name=None):
    return Arccosh()(x, name=name)


def arctanh(x, name=None):
    return Arctanh()(x, name=name)


def floor(x, name=None):
    return Floor()(x, name=name)


def ceil(x, name=None):
    return Ceil()(x, name=name)


def round(x, name=None):  # noqa: A001 - numpy's name
    """Halves to even."""
    return Round()(x, name=name)


def isnan(x, name=None):
    return IsNaN()(x, name=name)


def isinf(x, positive=True, negative=True, name=None):
    return IsInf(positive, negative)(x, name=name)


def bitwise_and(a, b, name=None):
    return BitwiseAnd()(a, b, name=name)


def bitwise_or(a, b, name=None):
    return BitwiseOr()(a, b, name=name)


def bitwise_xor(a, b, name=None):
    return BitwiseXor()(a, b, name=name)


def bitwise_not(x, name=None):
    return BitwiseNot()(x, name=name)


def left_shift(a, b, name=None):
    return LeftShift()(a, b, name=name)


def right_shift(a, b, name=None):
    return RightShift()(a, b, name=name)
