"""Progress a person can read: a tqdm bar on a terminal, a line per stage in a log, nothing when quiet.

`progress(total, desc)` is the one way the demo, `bench`, `train` and
`vf.nn.fit` report progress. A bar redraws only where someone watches it
(stderr is a terminal); piped to a file, a bar's carriage returns would be
kilobytes of noise, so `Lines` writes one line when asked (`note`) and at
the end instead. `TQDM_DISABLE=1` or `quiet=True` silences both.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def enabled(quiet: bool = False) -> bool:
    """Whether progress is shown at all (not quiet, and TQDM_DISABLE unset or 0)."""
    return not quiet and os.environ.get("TQDM_DISABLE", "").lower() in ("", "0", "false")


def on_terminal() -> bool:
    return hasattr(sys.stderr, "isatty") and sys.stderr.isatty()


class Lines:
    """Progress as whole lines on stderr: for logs and pipes."""

    def __init__(self, total: int, desc: str, enabled: bool):
        self.total = total
        self.desc = desc
        self.enabled = enabled
        self.n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_description(self, desc: str) -> None:
        """A new stage: one line in a log (a suite's next configuration), so a long run is seen to move."""
        if desc != self.desc and self.enabled:
            print(desc, file=sys.stderr, flush=True)
        self.desc = desc

    def set_postfix(self, values: dict[str, Any] | None = None, **kw) -> None:
        pass

    def note(self, line: str) -> None:
        """A line worth keeping in a log (an epoch's figures, a stage done)."""
        if self.enabled:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Bar(Lines):
    """A tqdm bar, for a terminal."""

    def __init__(self, total: int, desc: str):
        super().__init__(total, desc, True)
        from tqdm import tqdm

        self._bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)

    def update(self, n: int = 1) -> None:
        super().update(n)
        self._bar.update(n)

    def set_description(self, desc: str) -> None:
        self._bar.set_description(desc[:48])

    def set_postfix(self, values: dict[str, Any] | None = None, **kw) -> None:
        self._bar.set_postfix(values or {}, **kw)

    def note(self, line: str) -> None:
        self._bar.write(line, file=sys.stderr)

    def close(self) -> None:
        self._bar.close()


def progress(total: int, desc: str = "", quiet: bool = False) -> Lines:
    """A bar on a terminal, lines elsewhere, silence when quiet or TQDM_DISABLE is set."""
    if not enabled(quiet):
        return Lines(total, desc, False)
    if on_terminal():
        return Bar(total, desc)
    return Lines(total, desc, True)
