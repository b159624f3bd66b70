"""Datasets: IDX files (MNIST, Fashion-MNIST), scikit-learn's bundled 8x8 digits, and batching."""

from .loaders import batches, load_digits, load_idx, save_idx, train_test_split

__all__ = ["batches", "load_digits", "load_idx", "save_idx", "train_test_split"]
