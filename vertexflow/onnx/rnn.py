"""ONNX RNN, LSTM and GRU, unrolled into vertices for the fed sequence length.

The input projection of every time step is one matrix product per direction
(X @ W^T over the whole sequence); each step then adds its recurrent product
and the gates. Directions are independent chains, so a bidirectional layer's
two directions run side by side on the actor executor like any two branches.
Every piece is an ordinary op with its derivative, so an imported recurrent
model can be fine-tuned.
"""

from __future__ import annotations

import numpy as np

from .. import ops
from ..ops.shape import ZerosLike
from .convert import Unsupported, named

ACTIVATIONS = {"Sigmoid": ops.sigmoid, "Tanh": ops.tanh, "Relu": ops.relu}
DEFAULTS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}


def why_unsupported_recurrent(node, attrs: dict) -> str | None:
    for name in attrs.get("activations", []):
        if name not in ACTIVATIONS:
            return f"activation {name!r} not supported ({', '.join(ACTIVATIONS)} are)"
    if attrs.get("activation_alpha") or attrs.get("activation_beta"):
        return "activation_alpha/activation_beta not supported"
    if attrs.get("input_forget", 0):
        return "input_forget=1 not supported"
    if attrs.get("direction", "forward") not in ("forward", "reverse", "bidirectional"):
        return f"direction={attrs['direction']!r}"
    return None


def _setup(env, node, xs, attrs):
    x = xs[0]
    layout = attrs.get("layout", 0)
    if layout:
        x = ops.transpose(x, (1, 0, 2))  # (batch, seq, in) -> (seq, batch, in)
    sizes = env.sizes(node.input[0], f"{node.op_type}'s sequence length")
    steps = sizes[1] if layout else sizes[0]
    if xs.present(4):
        lengths = np.asarray(xs.value(4, f"{node.op_type}'s sequence_lens"))
        if np.any(lengths != steps):
            raise Unsupported("sequence_lens shorter than the sequence (padded batches) not supported")
    direction = attrs.get("direction", "forward")
    dirs = 2 if direction == "bidirectional" else 1
    names = attrs.get("activations") or DEFAULTS[node.op_type] * dirs
    per = len(DEFAULTS[node.op_type])
    acts = [[ACTIVATIONS[n] for n in names[d * per:(d + 1) * per]] for d in range(dirs)]
    reverse = [direction == "reverse"] if dirs == 1 else [False, True]
    return x, steps, dirs, acts, reverse, layout


def _clipped(v, clip):
    return v if clip is None else ops.minimum(ops.maximum(v, -clip), clip)


def _initial(xs, position: int, d: int, like):
    return ops.getitem(xs[position], d) if xs.present(position) else ZerosLike()(like)


def _outputs(env, node, ys, finals, layout):
    """Y (seq, dirs, batch, hidden) and the last states (dirs, batch, hidden), in the node's output order."""
    y = ops.concat([ops.expand_dims(ops.concat([ops.expand_dims(h, 0) for h in seq], axis=0), 1) for seq in ys],
                   axis=1)
    if layout:
        y = ops.transpose(y, (2, 0, 1, 3))
    out = [y]
    for states in finals:
        state = ops.concat([ops.expand_dims(s, 0) for s in states], axis=0)
        out.append(ops.transpose(state, (1, 0, 2)) if layout else state)
    return [named(v, env, node, k) if k < len(node.output) and node.output[k] else None
            for k, v in enumerate(out[:len(node.output)])]


def lstm(env, node, xs, attrs):
    x, steps, dirs, acts, reverse, layout = _setup(env, node, xs, attrs)
    hidden = int(attrs.get("hidden_size", xs[2].shape[-1]))
    clip = attrs.get("clip")
    ys, last_h, last_c = [], [], []
    for d in range(dirs):
        f, g, h_act = acts[d]
        w, r = ops.getitem(xs[1], d), ops.getitem(xs[2], d)  # (4h, in), (4h, h): gates i, o, f, c
        projected = ops.matmul(x, ops.transpose(w))  # (seq, batch, 4h): every step's input term at once
        recurrent = ops.transpose(r)
        if xs.present(3):
            bias = ops.getitem(xs[3], d)
            projected = projected + (ops.getitem(bias, slice(0, 4 * hidden)) + ops.getitem(bias, slice(4 * hidden, None)))
        first = ops.getitem(projected, (0, slice(None), slice(0, hidden)))
        h = _initial(xs, 5, d, first)
        c = _initial(xs, 6, d, first)
        peep = ops.getitem(xs[7], d) if xs.present(7) else None
        outs = [None] * steps
        for t in (reversed(range(steps)) if reverse[d] else range(steps)):
            gates = ops.getitem(projected, t) + ops.matmul(h, recurrent)
            part = [ops.getitem(gates, (slice(None), slice(k * hidden, (k + 1) * hidden))) for k in range(4)]
            i_pre, o_pre, f_pre, c_pre = part
            if peep is not None:
                i_pre = i_pre + ops.getitem(peep, slice(0, hidden)) * c
                f_pre = f_pre + ops.getitem(peep, slice(2 * hidden, 3 * hidden)) * c
            i_gate, f_gate = f(_clipped(i_pre, clip)), f(_clipped(f_pre, clip))
            c = f_gate * c + i_gate * g(_clipped(c_pre, clip))
            if peep is not None:
                o_pre = o_pre + ops.getitem(peep, slice(hidden, 2 * hidden)) * c
            h = f(_clipped(o_pre, clip)) * h_act(c)
            outs[t] = h
        ys.append(outs)
        last_h.append(h)
        last_c.append(c)
    return _outputs(env, node, ys, [last_h, last_c], layout)


def gru(env, node, xs, attrs):
    x, steps, dirs, acts, reverse, layout = _setup(env, node, xs, attrs)
    hidden = int(attrs.get("hidden_size", xs[2].shape[-1]))
    clip = attrs.get("clip")
    before_reset = bool(attrs.get("linear_before_reset", 0))
    ys, last_h = [], []
    for d in range(dirs):
        f, g = acts[d]
        w, r = ops.getitem(xs[1], d), ops.getitem(xs[2], d)  # (3h, in), (3h, h): gates z, r, h
        projected = ops.matmul(x, ops.transpose(w))
        r_zr = ops.transpose(ops.getitem(r, slice(0, 2 * hidden)))
        r_h = ops.transpose(ops.getitem(r, slice(2 * hidden, None)))
        rb_zr = rb_h = None
        if xs.present(3):
            bias = ops.getitem(xs[3], d)
            projected = projected + ops.getitem(bias, slice(0, 3 * hidden))
            rb_zr = ops.getitem(bias, slice(3 * hidden, 5 * hidden))
            rb_h = ops.getitem(bias, slice(5 * hidden, None))
        first = ops.getitem(projected, (0, slice(None), slice(0, hidden)))
        h = _initial(xs, 5, d, first)
        outs = [None] * steps
        for t in (reversed(range(steps)) if reverse[d] else range(steps)):
            step = ops.getitem(projected, t)
            zr = ops.getitem(step, (slice(None), slice(0, 2 * hidden))) + ops.matmul(h, r_zr)
            if rb_zr is not None:
                zr = zr + rb_zr
            z = f(_clipped(ops.getitem(zr, (slice(None), slice(0, hidden))), clip))
            reset = f(_clipped(ops.getitem(zr, (slice(None), slice(hidden, None))), clip))
            x_h = ops.getitem(step, (slice(None), slice(2 * hidden, None)))
            if before_reset:
                rec = ops.matmul(h, r_h)
                if rb_h is not None:
                    rec = rec + rb_h
                candidate = x_h + reset * rec
            else:
                candidate = x_h + ops.matmul(reset * h, r_h)
                if rb_h is not None:
                    candidate = candidate + rb_h
            candidate = g(_clipped(candidate, clip))
            h = (1.0 - z) * candidate + z * h
            outs[t] = h
        ys.append(outs)
        last_h.append(h)
    return _outputs(env, node, ys, [last_h], layout)


def rnn(env, node, xs, attrs):
    """The simple recurrence h = f(x W^T + h R^T + Wb + Rb)."""
    x, steps, dirs, acts, reverse, layout = _setup(env, node, xs, attrs)
    clip = attrs.get("clip")
    ys, last_h = [], []
    for d in range(dirs):
        (f,) = acts[d]
        w, r = ops.getitem(xs[1], d), ops.getitem(xs[2], d)  # (h, in), (h, h)
        hidden = int(attrs.get("hidden_size", xs[2].shape[-1]))
        projected = ops.matmul(x, ops.transpose(w))
        if xs.present(3):
            bias = ops.getitem(xs[3], d)
            projected = projected + (ops.getitem(bias, slice(0, hidden)) + ops.getitem(bias, slice(hidden, None)))
        recurrent = ops.transpose(r)
        h = _initial(xs, 5, d, ops.getitem(projected, 0))
        outs = [None] * steps
        for t in (reversed(range(steps)) if reverse[d] else range(steps)):
            h = f(_clipped(ops.getitem(projected, t) + ops.matmul(h, recurrent), clip))
            outs[t] = h
        ys.append(outs)
        last_h.append(h)
    return _outputs(env, node, ys, [last_h], layout)
