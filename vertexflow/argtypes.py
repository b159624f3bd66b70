"""argparse types that refuse a bad value with words a user can act on (the CLI and the example programs).

Each is a `type=` for `add_argument`: it returns the parsed value or raises
`argparse.ArgumentTypeError`, so a mistake is one line before any work starts.
"""

from __future__ import annotations

import argparse
import os


class HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in the help, except where there is none to show or the help already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if "default" in text or default is None or default is False or default == [] or default is argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


def count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _writable(folder: str) -> bool:
    """Whether a file can be made in `folder` (tried, not guessed: root passes `os.access` everywhere,
    /proc included)."""
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def output_file(text: str) -> str:
    folder = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"{text}: the folder {folder} does not exist")
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file name")
    if not _writable(folder) or (os.path.exists(text) and not os.access(text, os.W_OK)):
        raise argparse.ArgumentTypeError(f"{text}: the folder {folder} is not writable")
    return text


def html_file(text: str) -> str:
    """An HTML page to write (a trace viewer); its Chrome JSON goes beside it, so it must end in .html."""
    if os.path.splitext(text)[1].lower() not in (".html", ".htm"):
        raise argparse.ArgumentTypeError(f"{text}: the viewer is an HTML page; give a name ending in .html "
                                         "(the JSON trace is written beside it)")
    return output_file(text)


def plot_file(text: str) -> str:
    """An image matplotlib can write, chosen by the file's extension."""
    extension = os.path.splitext(text)[1].lower().lstrip(".")
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        raise argparse.ArgumentTypeError("a plot needs matplotlib (pip install matplotlib, or pip install -e "
                                         "'.[bench]')") from None
    formats = FigureCanvasBase.get_supported_filetypes()
    if extension not in formats:
        raise argparse.ArgumentTypeError(f"{text}: a plot is written as one of {', '.join(sorted(formats))} "
                                         "(by its extension)")
    return output_file(text)


def output_folder(text: str) -> str:
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is a file; give a folder")
    existing = os.path.abspath(text)
    while not os.path.isdir(existing):  # the folder is made if missing: the nearest existing one must take it
        if os.path.exists(existing):
            raise argparse.ArgumentTypeError(f"{text}: {existing} is a file, not a folder")
        existing = os.path.dirname(existing)
    if not _writable(existing):
        raise argparse.ArgumentTypeError(f"{text}: {existing} is not writable")
    return text


def input_file(text: str) -> str:
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    if not os.access(text, os.R_OK):
        raise argparse.ArgumentTypeError(f"{text}: not readable")
    return text


def named_file(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=FILE.npy, got {text!r}")
    return name, input_file(path)


def named_source(text: str) -> tuple[str, str]:
    """NAME=FILE.npy, or NAME=FOLDER holding .npy files."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=FILE.npy or NAME=FOLDER, got {text!r}")
    if os.path.isdir(path):
        if not any(entry.endswith(".npy") for entry in os.listdir(path)):
            raise argparse.ArgumentTypeError(f"{path}: the folder holds no .npy files")
        return name, path
    return name, input_file(path)


def size(text: str) -> tuple[str, int]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, e.g. rows=128; got {text!r}")
    try:
        return key, int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{key}= takes a whole number, got {value!r}") from None


def positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def model_file(text: str) -> str:
    """Where to save a model: .npz or .safetensors, in a folder that exists and is writable."""
    if os.path.splitext(text)[1].lower() not in (".npz", ".safetensors"):
        raise argparse.ArgumentTypeError(f"{text}: a model file ends in .npz or .safetensors")
    return output_file(text)
