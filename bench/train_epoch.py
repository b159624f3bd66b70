"""One training epoch of the talk's MLP on the digits: sequential vs actor vs PyTorch CPU, in one run.

    python bench/train_epoch.py [--repeat 5] [--batch-size 32] [--hidden 250 100]

Same initial weights, same batches, RMSProp; median epoch time of each after
a warm-up epoch, and ratios to the sequential executor.
"""

from __future__ import annotations

import argparse
import statistics

import vertexflow as vf
from vertexflow.benchmarks.timing import interleaved


def build(sizes, seed=0):
    g = vf.Graph("mlp")
    x = g.input("x", shape=(None, sizes[0]))
    y = g.input("y", shape=(None,), dtype="int64")
    layers = [vf.nn.Linear(a, b, "relu" if i < len(sizes) - 2 else None, seed=seed + i)
              for i, (a, b) in enumerate(zip(sizes, sizes[1:]))]
    model = vf.nn.Sequential(*layers)
    return g, x, y, model, vf.cross_entropy(model(x), y)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--hidden", type=int, nargs="+", default=[250, 100])
    args = parser.parse_args(argv)
    xs, ys = vf.data.load_digits()
    sizes = [64, *args.hidden, 10]
    runs = {}
    for name in ("sequential", "actor"):
        g, x, y, model, loss = build(sizes)
        opt = vf.optim.RMSProp(model.parameters(), lr=1e-3)
        ex = vf.SequentialExecutor(g) if name == "sequential" else vf.ActorExecutor(g, threads=2)

        def epoch(ex=ex, x=x, y=y, loss=loss, opt=opt):
            for xb, yb in vf.data.batches(xs, ys, args.batch_size, shuffle=True, seed=0):
                _, grads = ex.backward({x: xb, y: yb}, loss, opt.params)
                opt.step(grads)

        runs[name] = (epoch, ex.close)
        init = [p.value.copy() for p in model.parameters()]
    try:
        import torch

        torch.set_num_threads(2)
        layers = []
        for i in range(0, len(init), 2):
            lin = torch.nn.Linear(*init[i].shape)
            with torch.no_grad():
                lin.weight.copy_(torch.tensor(init[i].T))
                lin.bias.copy_(torch.tensor(init[i + 1]))
            layers += [lin, torch.nn.ReLU()]
        net = torch.nn.Sequential(*layers[:-1])
        topt = torch.optim.RMSprop(net.parameters(), lr=1e-3)

        def torch_epoch():
            for xb, yb in vf.data.batches(xs, ys, args.batch_size, shuffle=True, seed=0):
                topt.zero_grad()
                torch.nn.functional.cross_entropy(net(torch.from_numpy(xb)), torch.from_numpy(yb)).backward()
                topt.step()

        runs["pytorch"] = (torch_epoch, lambda: None)
    except ImportError:
        print("PyTorch is not installed: its column is left out")
    times = interleaved({name: fn for name, (fn, _) in runs.items()}, args.repeat, inner=1)
    for _, close in runs.values():
        close()
    steps = -(-len(xs) // args.batch_size)
    seq = statistics.median(times["sequential"])
    print(f"MLP {'-'.join(map(str, sizes))}, batch {args.batch_size}, {steps} steps an epoch, RMSProp")
    result = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        result[name] = med
        print(f"    {name:12s} {med * 1e3:8.1f} ms an epoch  ({med / steps * 1e3:.2f} ms a step)  "
              f"{med / seq:.2f}x the sequential time")
    return result


if __name__ == "__main__":
    main()
