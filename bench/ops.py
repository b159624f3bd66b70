"""Elementwise ops, ns per element: vertexflow's forward against the fastest numpy formulation and PyTorch.

    python bench/ops.py [--rows 256] [--cols 512] [--dtype float64] [--repeat 30]

For each op, vertexflow's forward as the executors run it (into a reused
buffer) and the fastest of the numpy formulations a user might write (in
place where numpy allows), and torch on one thread where it is installed;
each time is a median after warm-up, the configurations interleaved. The
target: every op within 1.5x of numpy's best.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np

import vertexflow as vf
from vertexflow.benchmarks.timing import interleaved
from vertexflow.ops import elementwise as ew


def _candidates(rng, shape, dtype):
    x = rng.standard_normal(shape).astype(dtype) * 3
    y = rng.standard_normal(shape).astype(dtype) * 3
    pos = np.abs(x) + dtype.type(0.5)
    out = np.empty(shape, dtype)
    t = dtype.type
    with np.errstate(all="ignore"):
        return {
            # op name: (vertexflow op, its inputs, {numpy formulation: callable}, torch formulation)
            "neg": (ew.Negative(), (x,), {"np.negative out": lambda: np.negative(x, out=out)}, "neg"),
            "abs": (ew.Abs(), (x,), {"np.abs out": lambda: np.abs(x, out=out)}, "abs"),
            "exp": (ew.Exp(), (x,), {"np.exp out": lambda: np.exp(x, out=out)}, "exp"),
            "log": (ew.Log(), (pos,), {"np.log out": lambda: np.log(pos, out=out)}, "log"),
            "sqrt": (ew.Sqrt(), (pos,), {"np.sqrt out": lambda: np.sqrt(pos, out=out)}, "sqrt"),
            "tanh": (ew.Tanh(), (x,), {"np.tanh out": lambda: np.tanh(x, out=out)}, "tanh"),
            "sigmoid": (ew.Sigmoid(), (x,), {
                "1/(1+exp(-x)) in place": lambda: np.reciprocal(
                    np.add(np.exp(np.negative(x, out=out), out=out), t(1), out=out), out=out),
                "0.5*tanh(x/2)+0.5 in place": lambda: np.add(
                    np.multiply(np.tanh(np.multiply(x, t(0.5), out=out), out=out), t(0.5), out=out), t(0.5),
                    out=out),
                "1/(1+exp(-x))": lambda: 1 / (1 + np.exp(-x)),
            }, "sigmoid"),
            "relu": (ew.Relu(), (x,), {"np.maximum(x, 0) out": lambda: np.maximum(x, t(0), out=out),
                                       "x * (x > 0)": lambda: x * (x > 0)}, "relu"),
            "add": (ew.Add(), (x, y), {"np.add out": lambda: np.add(x, y, out=out)}, "add"),
            "sub": (ew.Subtract(), (x, y), {"np.subtract out": lambda: np.subtract(x, y, out=out)}, "sub"),
            "mul": (ew.Multiply(), (x, y), {"np.multiply out": lambda: np.multiply(x, y, out=out)}, "mul"),
            "div": (ew.Divide(), (x, pos), {"np.divide out": lambda: np.divide(x, pos, out=out)}, "div"),
            "pow": (ew.Power(), (pos, y), {"np.power out": lambda: np.power(pos, y, out=out)}, "pow"),
            "maximum": (ew.Maximum(), (x, y), {"np.maximum out": lambda: np.maximum(x, y, out=out)}, "maximum"),
            "where": (ew.Where(), (x > 0, x, y), {"np.where": lambda: np.where(x > 0, x, y)}, "where"),
            "greater": (ew.Greater(), (x, y), {"np.greater": lambda: np.greater(x, y)}, "gt"),
        }


def _torch_call(torch, name, tensors):
    fns = {"neg": torch.neg, "abs": torch.abs, "exp": torch.exp, "log": torch.log, "sqrt": torch.sqrt,
           "tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": torch.relu, "add": torch.add, "sub": torch.sub,
           "mul": torch.mul, "div": torch.div, "pow": torch.pow, "maximum": torch.maximum, "gt": torch.gt,
           "where": torch.where}
    return lambda: fns[name](*tensors)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--cols", type=int, default=512)
    parser.add_argument("--dtype", default="float64")
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args(argv)
    dtype = np.dtype(args.dtype)
    shape = (args.rows, args.cols)
    n = args.rows * args.cols
    rng = np.random.default_rng(0)
    try:
        import torch

        torch.set_num_threads(1)  # numpy's ufuncs run on one thread
    except ImportError:
        torch = None
    results = {}
    print(f"{'op':9s} {'vertexflow':>11s} {'numpy best':>11s} {'torch 1t':>9s}  ratio  (ns/element, {args.dtype} {shape})")
    for name, (op, inputs, formulations, torch_name) in _candidates(rng, shape, dtype).items():
        spec = op.infer(*(vf.Spec.of(a) for a in inputs))
        buffer = np.empty(spec.shape, spec.dtype)
        runners = {"vertexflow": (lambda op=op, inputs=inputs, buffer=buffer: op.forward(np, *inputs, out=buffer))
                   if op.writes_out else (lambda op=op, inputs=inputs: op.forward(np, *inputs))}
        runners.update(formulations)
        if torch is not None:
            runners["torch"] = _torch_call(torch, torch_name, [torch.from_numpy(np.ascontiguousarray(a))
                                                                for a in inputs])
        with np.errstate(all="ignore"):
            times = interleaved(runners, args.repeat, inner=3)
        ns = {k: statistics.median(v) / n * 1e9 for k, v in times.items()}
        best_name = min(formulations, key=lambda k: ns[k])
        ratio = ns["vertexflow"] / ns[best_name]
        results[name] = {"vertexflow_ns": ns["vertexflow"], "numpy_best_ns": ns[best_name], "numpy_best": best_name,
                         "torch_ns": ns.get("torch"), "ratio": ratio}
        torch_ns = f"{ns['torch']:9.2f}" if "torch" in ns else f"{'-':>9s}"
        flag = "" if ratio <= 1.5 else "  over 1.5x"
        print(f"{name:9s} {ns['vertexflow']:11.2f} {ns[best_name]:11.2f} {torch_ns}  {ratio:5.2f}  {best_name}{flag}")
    return results


if __name__ == "__main__":
    main()
