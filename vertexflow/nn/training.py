"""Training: `fit` runs epochs of minibatch steps on either executor; `evaluate` measures a split.

Each step is runtime backward (`executor.backward`) then `optimizer.step`,
so the same loop runs on the tape or on actors. Shuffling is seeded per epoch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import GraphError
from ..executor import Executor
from ..factory import make_executor
from ..graph import Node
from .optim import Optimizer


@dataclass
class History:
    """Per-epoch figures: mean training loss, and accuracies (and loss) where measured."""

    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)


def evaluate(executor: Executor, x: Node, data, output: Node | None = None, loss: Node | None = None,
             y: Node | None = None, batch_size: int = 256, mode=None) -> dict[str, float]:
    """Mean loss and classification accuracy (argmax of `output` against integer labels) over a split."""
    from ..data import batches

    if mode is not None:
        mode.training = False
    xs, ys = data
    total, correct, loss_sum = 0, 0, 0.0
    fetch = [n for n in (output, loss) if n is not None]
    for xb, yb in batches(xs, ys, batch_size):
        feeds = {x: xb} if y is None else {x: xb, y: yb}
        outs = executor.run(feeds, fetch)
        n = len(xb)
        if output is not None:
            correct += int((np.argmax(outs[0], axis=-1) == yb).sum())
        if loss is not None:
            loss_sum += float(outs[-1]) * n
        total += n
    if mode is not None:
        mode.training = True
    out = {}
    if output is not None:
        out["accuracy"] = correct / total
    if loss is not None:
        out["loss"] = loss_sum / total
    return out


def fit(
    loss: Node,
    optimizer: Optimizer,
    x: Node,
    y: Node,
    data: tuple[np.ndarray, np.ndarray],
    *,
    epochs: int = 1,
    batch_size: int = 32,
    seed: int = 0,
    executor: str | Executor = "sequential",
    threads: int = 2,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    output: Node | None = None,
    mode=None,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> History:
    """Train by minibatch steps: backward, then optimizer.step, `epochs` times over `data`.

    Args:
        loss: the scalar loss vertex; x, y: the input vertices the batches feed.
        data: (inputs, targets) arrays; shuffled with `seed + epoch` each epoch.
        executor: "sequential", "actor" or an executor of this graph.
        validation: a held-out (inputs, targets) split, measured after each epoch.
        output: a class-score vertex; with it, accuracies are measured (argmax vs integer targets).
        mode: a layers' Mode (e.g. model.mode), switched to evaluation while measuring.
        progress: report progress: on a terminal a bar with the running loss (and accuracy,
            given `output`) and a line per epoch; elsewhere (a log, a pipe) the line per epoch
            only. `TQDM_DISABLE=1` silences both.

    Returns:
        History with per-epoch loss (mean over the epoch's steps) and measured accuracies.
    """
    from ..data import batches
    from ..progress import progress as progress_report

    if loss.graph is not x.graph or loss.graph is not y.graph:
        raise GraphError("loss, x and y must belong to one graph")
    ex = make_executor(loss.graph, executor, **({"threads": threads} if executor == "actor" else {}))
    history = History()
    xs, ys = data
    steps_per_epoch = -(-len(xs) // batch_size)
    try:
        for epoch in range(epochs):
            bar = progress_report(steps_per_epoch, f"epoch {epoch + 1}/{epochs}", quiet=not progress)
            total, seen, correct = 0.0, 0, 0
            for xb, yb in batches(xs, ys, batch_size, shuffle=True, seed=seed + epoch):
                if output is not None:  # the scores come from the same forward pass, for the bar's accuracy
                    value, grads, scores = ex.backward({x: xb, y: yb}, loss, optimizer.params, fetch=output)
                    correct += int((np.argmax(scores, axis=-1) == yb).sum())
                else:
                    value, grads = ex.backward({x: xb, y: yb}, loss, optimizer.params)
                optimizer.step(grads)
                value = float(value)
                history.step_losses.append(value)
                total += value * len(xb)
                seen += len(xb)
                if on_step is not None:
                    on_step(len(history.step_losses), value)
                bar.update(1)
                postfix = {"loss": f"{total / seen:.4f}"}
                if output is not None:
                    postfix["accuracy"] = f"{correct / seen:.4f}"
                bar.set_postfix(postfix)
            bar.close()
            history.loss.append(total / seen)
            line = f"epoch {epoch + 1}/{epochs}: loss {total / seen:.4f}"
            if output is not None:
                train = evaluate(ex, x, (xs, ys), output, mode=mode)
                history.accuracy.append(train["accuracy"])
                line += f", accuracy {train['accuracy']:.4f}"
            if validation is not None:
                held = evaluate(ex, x, validation, output, loss, y, mode=mode)
                history.val_loss.append(held["loss"])
                line += f", val_loss {held['loss']:.4f}"
                if output is not None:
                    history.val_accuracy.append(held["accuracy"])
                    line += f", val_accuracy {held['accuracy']:.4f}"
            bar.note(line)
    finally:
        if not isinstance(executor, Executor):
            ex.close()
    return history
