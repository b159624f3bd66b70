"""Models written with torch and exported by `torch.onnx.export` (opset 17, dynamic batch), both exporters:
outputs equal torch's on two batches on both executors, and onnxruntime's; an imported model fine-tunes."""

from __future__ import annotations

import importlib.util
import io
import warnings

import numpy as np
import pytest

pytest.importorskip("onnx", reason="onnx is not installed (pip install -e '.[onnx]')")
torch = pytest.importorskip("torch", reason="torch is not installed (pip install -e '.[test]')")

import vertexflow as vf  # noqa: E402
from vertexflow import onnx as vf_onnx  # noqa: E402

needs_onnxscript = pytest.mark.skipif(importlib.util.find_spec("onnxscript") is None,
                                      reason="the dynamo exporter needs onnxscript (pip install -e '.[test]')")


class Residual(torch.nn.Module):
    """A residual block: depthwise 3x3 and pointwise 1x1 convolutions, batch norm, ReLU."""

    def __init__(self, channels=8):
        super().__init__()
        self.depthwise = torch.nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.pointwise = torch.nn.Conv2d(channels, channels, 1)
        self.norm = torch.nn.BatchNorm2d(channels)
        self.head = torch.nn.Linear(channels, 3)

    def forward(self, x):
        y = torch.relu(x + self.norm(self.pointwise(self.depthwise(x))))
        return self.head(y.mean(dim=(2, 3)))


class Encoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)

    def forward(self, x):
        return self.layer(x, is_causal=False)


class Embedding(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.table = torch.nn.Embedding(50, 16)
        self.out = torch.nn.Linear(16, 8)

    def forward(self, ids):
        return self.out(torch.nn.functional.gelu(self.table(ids))).mean(dim=1)


class NormSiLU(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.norm, self.b = torch.nn.Linear(12, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 4)

    def forward(self, x):
        return self.b(torch.nn.functional.silu(self.norm(self.a(x))))


class Recurrent(torch.nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.rnn = getattr(torch.nn, kind)(6, 10, batch_first=True, bidirectional=True)
        self.out = torch.nn.Linear(20, 3)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.out(y[:, -1])


class Upsample(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        up = torch.nn.functional.interpolate(self.conv(x), scale_factor=2, mode="bilinear", align_corners=False)
        return up + torch.nn.functional.interpolate(x[:, :1], scale_factor=2, mode="nearest")


class Attention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.attention = torch.nn.MultiheadAttention(16, 4, batch_first=True)

    def forward(self, x):
        return self.attention(x, x, x, need_weights=False)[0]


class CausalScores(torch.nn.Module):
    """A causal mask from torch.triu (ONNX Trilu) over scores, softmax, weighted sum."""

    def __init__(self):
        super().__init__()
        self.query = torch.nn.Linear(16, 16)

    def forward(self, x):
        steps = x.shape[1]
        mask = torch.triu(torch.ones(steps, steps, dtype=torch.bool), 1)
        scores = (self.query(x) @ x.transpose(1, 2)).masked_fill(mask, float("-inf"))
        return torch.softmax(scores, -1) @ x


class GroupNormMish(torch.nn.Module):
    """Conv1d, GroupNorm (exported as InstanceNormalization between reshapes), Mish."""

    def __init__(self):
        super().__init__()
        self.conv, self.norm = torch.nn.Conv1d(4, 6, 3, padding=1), torch.nn.GroupNorm(2, 6)

    def forward(self, x):
        return torch.nn.functional.mish(self.norm(self.conv(x)))


class Decoder(torch.nn.Module):
    """Transposed convolutions up, with an output_padding, and an instance norm."""

    def __init__(self):
        super().__init__()
        self.up = torch.nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1)
        self.norm = torch.nn.InstanceNorm2d(4, affine=True)
        self.mix = torch.nn.ConvTranspose2d(4, 2, 2, stride=2, groups=2)

    def forward(self, x):
        return self.mix(torch.relu(self.norm(self.up(x))))


class RankedHead(torch.nn.Module):
    """A classifier head read three ways: the top three scores, the running sum of the probabilities,
    the winning class (ONNX TopK, CumSum, ArgMax)."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(12, 6)

    def forward(self, x):
        logits = self.head(x)
        top = torch.topk(logits, 3, dim=1).values
        running = torch.cumsum(torch.softmax(logits, dim=1), dim=1)
        winner = torch.argmax(logits, dim=1, keepdim=True).to(logits.dtype)
        return torch.cat([top, running, winner], dim=1)


class SuperResolution(torch.nn.Module):
    """Interpolate, convolve to r*r channels per output channel, shuffle them into space (DepthToSpace)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3 * 4, 3, padding=1)
        self.shuffle = torch.nn.PixelShuffle(2)

    def forward(self, x):
        smooth = torch.nn.functional.interpolate(x, scale_factor=1.5, mode="bilinear", align_corners=False)
        return self.shuffle(self.conv(smooth))


class Contractions(torch.nn.Module):
    """Attention scores and a bilinear form written with torch.einsum."""

    def __init__(self):
        super().__init__()
        self.project = torch.nn.Parameter(torch.randn(8, 8) * 0.3)
        self.mix = torch.nn.Parameter(torch.randn(8, 5) * 0.3)

    def forward(self, x):
        q = torch.einsum("bsd,de->bse", x, self.project)
        scores = torch.einsum("bqd,bkd->bqk", q, x).softmax(-1)
        return torch.einsum("bqk,bkd,de->bqe", scores, x, self.mix)


class Warp(torch.nn.Module):
    """A spatial transformer: a predicted affine grid (AffineGrid), the image sampled on it (GridSample)."""

    def __init__(self):
        super().__init__()
        self.locate = torch.nn.Linear(3 * 6 * 6, 6)
        with torch.no_grad():
            self.locate.weight.mul_(0.05)
            self.locate.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))

    def forward(self, x):
        theta = self.locate(x.flatten(1)).view(-1, 2, 3)
        grid = torch.nn.functional.affine_grid(theta, [x.shape[0], 3, 5, 5], align_corners=False)
        return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class Clip3d(torch.nn.Module):
    """A video block: 3-D convolutions (one strided, one grouped), 3-D max and average pools."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv3d(3, 8, (3, 3, 3), padding=1)
        self.b = torch.nn.Conv3d(8, 8, (3, 1, 3), stride=(2, 1, 2), groups=2)
        self.pool = torch.nn.MaxPool3d(2, ceil_mode=True)

    def forward(self, x):
        y = self.pool(torch.relu(self.b(torch.relu(self.a(x)))))
        return torch.nn.functional.avg_pool3d(y, (1, 2, 1), padding=(0, 1, 0), count_include_pad=False)


class Patches(torch.nn.Module):
    """Overlapping patches weighted and folded back (nn.Unfold, nn.Fold: ONNX's Col2Im)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(3 * 9, 1))

    def forward(self, x):
        cols = torch.nn.functional.unfold(x, 3, padding=1, stride=2)
        return torch.nn.functional.fold(cols * self.w, (7, 9), 3, padding=1, stride=2)


def _residual():
    net = Residual()
    with torch.no_grad():  # non-trivial running statistics
        net.norm.running_mean.uniform_(-0.5, 0.5)
        net.norm.running_var.uniform_(0.5, 1.5)
    return net


MODELS = {
    "residual_depthwise": (_residual, lambda b: torch.randn(b, 8, 10, 10)),
    "transformer_encoder": (Encoder, lambda b: torch.randn(b, 7, 16)),
    "embedding_gelu": (Embedding, lambda b: torch.randint(0, 50, (b, 9))),
    "layernorm_silu": (NormSiLU, lambda b: torch.randn(b, 12)),
    "lstm": (lambda: Recurrent("LSTM"), lambda b: torch.randn(b, 5, 6)),
    "gru": (lambda: Recurrent("GRU"), lambda b: torch.randn(b, 5, 6)),
    "upsample": (Upsample, lambda b: torch.randn(b, 3, 6, 6)),
    "attention": (Attention, lambda b: torch.randn(b, 7, 16)),
    "causal_scores": (CausalScores, lambda b: torch.randn(b, 6, 16)),
    "conv1d_groupnorm_mish": (GroupNormMish, lambda b: torch.randn(b, 4, 9)),
    "transposed_conv_decoder": (Decoder, lambda b: torch.randn(b, 3, 5, 5)),
    "argmax_topk_cumsum_head": (RankedHead, lambda b: torch.randn(b, 12)),
    "interpolate_pixel_shuffle": (SuperResolution, lambda b: torch.randn(b, 3, 6, 6)),
    "einsum": (Contractions, lambda b: torch.randn(b, 7, 8)),
    "affine_grid_sample": (Warp, lambda b: torch.randn(b, 3, 6, 6)),
    "conv3d_pools": (Clip3d, lambda b: torch.randn(b, 3, 6, 7, 8)),
    "unfold_fold": (Patches, lambda b: torch.randn(b, 3, 7, 9)),
}


OPSETS = {"affine_grid_sample": 20, "unfold_fold": 18}  # AffineGrid came in opset 20, Col2Im in 18; the rest: 17


def export(net, example, dynamo: bool, opset: int = 17) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            program = torch.onnx.export(net, (example,), input_names=["x"], output_names=["y"], dynamo=True,
                                        opset_version=opset, verbose=False,
                                        dynamic_shapes=({0: torch.export.Dim("batch", min=2, max=1024)},))
            return program.model_proto.SerializeToString()
        buf = io.BytesIO()
        torch.onnx.export(net, (example,), buf, input_names=["x"], output_names=["y"], dynamo=False,
                          opset_version=opset, dynamic_axes={"x": {0: "batch"}})
        return buf.getvalue()


@pytest.mark.parametrize("exporter", ["torchscript", pytest.param("dynamo", marks=needs_onnxscript)])
@pytest.mark.parametrize("name", list(MODELS))
def test_exported_models_match_torch_on_two_batches_and_both_executors(name, exporter):
    torch.manual_seed(0)
    make, data = MODELS[name]
    net = make().eval()
    _matches_torch_and_onnxruntime(net, data, export(net, data(3), exporter == "dynamo", OPSETS.get(name, 17)))


def _matches_torch_and_onnxruntime(net, data, model_bytes, atol=1e-5):
    """The imported model against torch on batches of 3 and 5 on both executors, then against onnxruntime."""
    model = vf_onnx.load(model_bytes)
    try:
        for batch in (3, 5):
            x = data(batch)
            with torch.no_grad():
                want = net(x).numpy()
            for executor in ("sequential", "actor"):
                (got,) = model.run({"x": x.numpy()}, executor=executor)
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=atol, err_msg=f"batch {batch} on {executor}")
        ort = pytest.importorskip("onnxruntime")
        session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
        (reference,) = session.run(None, {"x": x.numpy()})
        np.testing.assert_allclose(model.run({"x": x.numpy()})[0], reference, rtol=1e-4, atol=atol)
    finally:
        model.close()


def test_an_imported_embedding_model_fine_tunes_with_torchs_gradients():
    """Gather with run-time indices is an ordinary op: the loss's gradient reaches the table."""
    torch.manual_seed(0)
    net = Embedding().eval()
    ids = torch.randint(0, 50, (4, 9))
    model = vf_onnx.load(export(net, ids, dynamo=False))
    g = model.graph
    probe = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    loss = vf.sum(model.outputs[0] * probe)
    table, bias = g["table.weight"], g["out.bias"]
    value, grads = vf.SequentialExecutor(g).backward({"x": ids.numpy()}, loss, [table, bias])
    t_loss = (net(ids) * torch.tensor(probe)).sum()
    t_loss.backward()
    np.testing.assert_allclose(value, t_loss.item(), rtol=1e-5)
    np.testing.assert_allclose(grads[table], net.table.weight.grad.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grads[bias], net.out.bias.grad.numpy(), rtol=1e-4, atol=1e-6)
    assert np.count_nonzero(np.abs(grads[table]).sum(axis=1)) == len(np.unique(ids.numpy()))  # only rows looked up


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_gradients_flow_back_through_an_unrolled_recurrent_layer_as_in_torch(kind):
    torch.manual_seed(0)
    net = Recurrent(kind).eval()
    x = torch.randn(4, 5, 6)
    model = vf_onnx.load(export(net, x, dynamo=False))
    built = model.specialize({"x": x.numpy()})  # the sequence length unrolls it
    probe = np.random.default_rng(1).normal(size=(4, 3)).astype(np.float32)
    loss = vf.sum(built.outputs[0] * probe)
    (x_node,) = built.inputs
    value, grads = vf.SequentialExecutor(built.graph).backward({"x": x.numpy()}, loss, [x_node, built.graph["out.bias"]])
    t_x = x.clone().requires_grad_(True)
    t_loss = (net(t_x) * torch.tensor(probe)).sum()
    t_loss.backward()
    np.testing.assert_allclose(value, t_loss.item(), rtol=1e-5)
    np.testing.assert_allclose(grads[x_node], t_x.grad.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grads[built.graph["out.bias"]], net.out.bias.grad.numpy(), rtol=1e-4, atol=1e-6)
    model.close()


class LogSpectrogram(torch.nn.Module):
    """An audio front end: a windowed STFT's log power, then a 1-D convolution over the frames."""

    def __init__(self):
        super().__init__()
        self.register_buffer("window", torch.hann_window(64))
        self.conv = torch.nn.Conv1d(33, 8, 3)

    def forward(self, x):
        s = torch.stft(x, n_fft=64, hop_length=16, window=self.window, center=False, return_complex=True)
        return self.conv(torch.log(s.real ** 2 + s.imag ** 2 + 1e-6))


@needs_onnxscript
def test_an_exported_spectrogram_matches_torch_on_both_executors():
    """torch.stft exports (with the dynamo exporter; the TorchScript one refuses complex values) to ONNX's
    STFT, imported as a gather of frames and vf.fourier."""
    torch.manual_seed(0)
    net = LogSpectrogram().eval()
    _matches_torch_and_onnxruntime(net, lambda b: torch.randn(b, 400),
                                   export(net, torch.randn(3, 400), dynamo=True, opset=18), atol=1e-4)
