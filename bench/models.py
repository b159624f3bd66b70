"""The models `bench/onnx_models.py` exports with torch and times: the kinds users import, written small.

Each is a torch module in eval mode with the input shape it takes (batch left
out): a MobileNetV2-style stem and two inverted-residual blocks (1x1, depthwise
3x3 and 1x1 convolutions, batch norm folded at export, hardswish), a small
UNet (3x3 convolutions, max pool, ConvTranspose, a skip concat), a 1-D audio
model (Conv1d, BatchNorm1d, ReLU, AdaptiveAvgPool1d), a tiny ViT (patch
convolution, two pre-norm encoder layers with GELU), a 2-block MLP-mixer
(LayerNorm, token and channel MLPs with GELU), three MLP branches (GELU, ReLU,
sigmoid), a 4-member MLP ensemble and an inception-style block.
"""
import torch
from torch import nn


class InvertedResidual(nn.Module):
    """MobileNetV2's block: expand 1x1, depthwise 3x3, project 1x1, a residual add."""

    def __init__(self, c=24, expand=6):
        super().__init__()
        h = c * expand
        self.block = nn.Sequential(
            nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.Hardswish(),
            nn.Conv2d(h, h, 3, padding=1, groups=h, bias=False), nn.BatchNorm2d(h), nn.Hardswish(),
            nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.block(x)


class MobileNetBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 24, 3, stride=2, padding=1), nn.BatchNorm2d(24), nn.Hardswish())
        self.blocks = nn.Sequential(InvertedResidual(), InvertedResidual())
        self.head = nn.Linear(24, 10)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


class UNet(nn.Module):
    def __init__(self, c=16):
        super().__init__()
        def double(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.ReLU(), nn.Conv2d(o, o, 3, padding=1), nn.ReLU())
        self.down1, self.down2 = double(3, c), double(c, 2 * c)
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ConvTranspose2d(2 * c, c, 2, stride=2)
        self.fuse = double(2 * c, c)
        self.out = nn.Conv2d(c, 2, 1)

    def forward(self, x):
        a = self.down1(x)
        b = self.down2(self.pool(a))
        return self.out(self.fuse(torch.cat([a, self.up(b)], dim=1)))


class Audio1d(nn.Module):
    def __init__(self):
        super().__init__()
        layers, c = [], 1
        for o in (16, 32, 64):
            layers += [nn.Conv1d(c, o, 9, stride=2, padding=4), nn.BatchNorm1d(o), nn.ReLU()]
            c = o
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool1d(1))
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class TinyViT(nn.Module):
    def __init__(self, d=64, depth=2):
        super().__init__()
        self.patch = nn.Conv2d(3, d, 4, stride=4)
        self.pos = nn.Parameter(torch.randn(1, 64, d) * 0.02)
        self.layers = nn.ModuleList(nn.TransformerEncoderLayer(d, 4, 2 * d, dropout=0.0, activation="gelu",
                                                               batch_first=True, norm_first=True)
                                    for _ in range(depth))
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, 10)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        for layer in self.layers:
            t = layer(t)
        return self.head(self.norm(t).mean(dim=1))


class MixerBlock(nn.Module):
    def __init__(self, tokens=64, d=64):
        super().__init__()
        self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.tok = nn.Sequential(nn.Linear(tokens, 2 * tokens), nn.GELU(), nn.Linear(2 * tokens, tokens))
        self.chan = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        x = x + self.tok(self.n1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.chan(self.n2(x))


class Mixer(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(MixerBlock(), MixerBlock())
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        return self.head(self.blocks(x).mean(dim=1))


class ThreeBranch(nn.Module):
    def __init__(self, d=512, h=1024):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Linear(d, h), act, nn.Linear(h, d)) for act in (nn.GELU(), nn.ReLU(), nn.Sigmoid()))

    def forward(self, x):
        return sum(b(x) for b in self.branches)


class Ensemble(nn.Module):
    """Four MLP members averaged."""

    def __init__(self, members=4, d=256, h=512, out=10):
        super().__init__()
        self.members = nn.ModuleList(
            nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, out))
            for _ in range(members))

    def forward(self, x):
        return sum(m(x) for m in self.members) / len(self.members)


class Inception(nn.Module):
    """1x1, 3x3, 5x5 and pooled branches concatenated, then a head."""

    def __init__(self, c=16, w=16):
        super().__init__()
        self.b1 = nn.Sequential(nn.Conv2d(c, w, 1), nn.ReLU())
        self.b3 = nn.Sequential(nn.Conv2d(c, w, 1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1), nn.ReLU())
        self.b5 = nn.Sequential(nn.Conv2d(c, w, 1), nn.ReLU(), nn.Conv2d(w, w, 5, padding=2), nn.ReLU())
        self.bp = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), nn.Conv2d(c, w, 1), nn.ReLU())
        self.head = nn.Sequential(nn.AvgPool2d(16), nn.Flatten(), nn.Linear(4 * w, 10))

    def forward(self, x):
        return self.head(torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], dim=1))


def zoo() -> dict:
    """name -> (module in eval mode, input shape without the batch)."""
    torch.manual_seed(0)
    return {"mobilenet-block": (MobileNetBlock().eval(), (3, 32, 32)),
            "unet": (UNet().eval(), (3, 32, 32)),
            "audio-1d": (Audio1d().eval(), (1, 2048)),
            "tiny-vit": (TinyViT().eval(), (3, 32, 32)),
            "mixer": (Mixer().eval(), (64, 64)),
            "three-branch": (ThreeBranch().eval(), (512,)),
            "ensemble": (Ensemble().eval(), (256,)),
            "inception": (Inception().eval(), (16, 16, 16))}


MLP_KINDS = ("three-branch", "ensemble")  # the target for these: at most 1.0x onnxruntime


def export(module, shape, path, batch=8) -> None:
    """torch.onnx.export at opset 17, the batch dimension dynamic (the TorchScript exporter)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(batch, *shape),), path, input_names=["x"], output_names=["y"],
                          opset_version=17, dynamo=False, dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
