"""Shared argument handling for the example programs."""

from __future__ import annotations

import argparse


def parser(description: str, epochs: int, batch_size: int, lr: float) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--executor", choices=["sequential", "actor"], default="sequential")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="use only the first N training samples")
    p.add_argument("--save", default=None, help="write the trained params here (.npz or .safetensors)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p
