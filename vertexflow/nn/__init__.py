"""Neural-network kit: layers, initializers, losses, optimizers, training, and model files.

    model = vf.nn.Sequential(vf.nn.Linear(64, 250, "relu"), vf.nn.Linear(250, 10))
    logits = model(x)
    opt = vf.optim.RMSProp(model.parameters(), lr=1e-3)
    vf.nn.fit(vf.cross_entropy(logits, y), opt, x, y, (X, Y), epochs=10, output=logits)
    vf.nn.save("model.safetensors", model.parameters(), opt)
"""

from . import init, optim
from .io import ModelFileError, load, save
from .layers import Activation, Conv2d, Dropout, Flatten, Layer, Linear, MaxPool2d, Mode, Sequential
from .losses import binary_cross_entropy, cross_entropy, mse
from .training import History, evaluate, fit

__all__ = [
    "init", "optim", "ModelFileError", "load", "save",
    "Activation", "Conv2d", "Dropout", "Flatten", "Layer", "Linear", "MaxPool2d", "Mode", "Sequential",
    "binary_cross_entropy", "cross_entropy", "mse", "History", "evaluate", "fit",
]
