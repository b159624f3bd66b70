"""Shared argument handling for the example programs."""

from __future__ import annotations

import argparse
import os
import sys

from vertexflow.argtypes import HelpWithDefaults, count, model_file, positive_number


class _OneLineErrors(argparse.ArgumentParser):
    """A mistake in the arguments is one line on stderr and exit status 2, as in `vertexflow`'s own commands."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message}\n")


def _prog() -> str:
    # `vertexflow train mlp ...` runs these programs with its own argv; name the command the user typed.
    if sys.argv[1:2] == ["train"] and len(sys.argv) > 2:
        return f"vertexflow train {sys.argv[2]}"
    return os.path.basename(sys.argv[0])


def parser(description: str, epochs: int, batch_size: int, lr: float) -> argparse.ArgumentParser:
    p = _OneLineErrors(prog=_prog(), description=description, allow_abbrev=False,
                       formatter_class=HelpWithDefaults)
    p.add_argument("--epochs", type=count, default=epochs, help="passes over the training set")
    p.add_argument("--batch-size", type=count, default=batch_size, help="samples per training step")
    p.add_argument("--lr", type=positive_number, default=lr, help="the optimizer's learning rate")
    p.add_argument("--executor", choices=["sequential", "actor"], default="sequential",
                   help="the executor of every training step")
    p.add_argument("--seed", type=int, default=0, help="seeds the initial weights, the split and the shuffling")
    p.add_argument("--limit", type=count, default=None, help="use only the first N training samples (default: all)")
    p.add_argument("--save", type=model_file, default=None,
                   help="write the trained params here (.npz or .safetensors; default: not saved)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p
