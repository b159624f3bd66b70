"""The example programs run end to end at a tiny size, so they never rot."""

import numpy as np
import pytest

from vertexflow.cli import main

pytest.importorskip("sklearn", reason="the examples train on scikit-learn's bundled digits")


@pytest.mark.parametrize("example", ["mlp", "autoencoder", "cnn", "linear"])
@pytest.mark.parametrize("executor", ["sequential", "actor"])
def test_training_examples_run(example, executor, tmp_path, capsys):
    save = str(tmp_path / "model.npz")
    assert main(["train", example, "--epochs", "1", "--limit", "128", "--quiet", "--executor", executor,
                 "--save", save]) == 0
    out = capsys.readouterr().out
    assert {"mlp": "test accuracy after 1 epochs", "autoencoder": "held-out reconstruction MSE",
            "cnn": "test accuracy", "linear": "w = "}[example] in out
    if example != "linear":
        assert (tmp_path / "model.npz").exists()


def test_mlp_example_reads_idx_files(tmp_path, capsys):
    import vertexflow as vf

    rng = np.random.default_rng(0)
    for split, n in (("train", 64), ("test", 32)):
        vf.data.save_idx(str(tmp_path / f"{split}-images.gz"), rng.integers(0, 256, (n, 28, 28)).astype(np.uint8))
        vf.data.save_idx(str(tmp_path / f"{split}-labels.gz"), rng.integers(0, 10, n).astype(np.uint8))
    args = ["train", "mlp", "--epochs", "1", "--quiet"]
    for split in ("train", "test"):
        args += [f"--{split}-images", str(tmp_path / f"{split}-images.gz"),
                 f"--{split}-labels", str(tmp_path / f"{split}-labels.gz")]
    assert main(args) == 0
    assert "(32 held-out samples)" in capsys.readouterr().out


def test_the_cnn_export_example_writes_a_model_that_vertexflow_serves(tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    import runpy

    from vertexflow import onnx as vf_onnx

    module = runpy.run_path(str(__import__("pathlib").Path(__file__).parents[1] / "examples" / "export_cnn.py"))
    assert module["main"](["--epochs", "1", "--out", str(tmp_path)]) == 0
    assert "torch test accuracy" in capsys.readouterr().out
    model = vf_onnx.load(str(tmp_path / "cnn.onnx"))
    images, labels = np.load(tmp_path / "images.npy"), np.load(tmp_path / "labels.npy")
    (logits,) = model.run({"x": images}, executor="actor")
    assert logits.shape == (len(labels), 10)
    assert (logits.argmax(1) == labels).mean() > 0.5  # a trained model, not random weights
    model.close()


def test_the_remote_calls_example_awaits_its_own_server(capsys):
    import runpy

    module = runpy.run_path(str(__import__("pathlib").Path(__file__).parents[1] / "examples" / "remote_calls.py"))
    assert module["main"](["--calls", "4", "--latency", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "runs as: network" in out and "4 calls of 10 ms" in out and "the same values on both" in out
