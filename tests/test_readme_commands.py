"""README.md's shell blocks, run as pasted from a checkout, in a scratch folder.

A block runs as one bash script (`set -e`), so a later line may use what an earlier one
wrote. The HTML comment above a block says how: `<!-- commands: not run by the tests (why) -->`
(the install lines, which `.ci/run` and a fresh clone try), `slow` (run when
VERTEXFLOW_SLOW=1, as `.ci/run` does after the suite), `needs MODULE ...` (skipped without
them). A command with a word in angle brackets (`<your_model.py>`) is a template for the
reader to fill in, not a command, and is left out.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PLACEHOLDER = re.compile(r"<[A-Za-z_][\w.]*>")


def blocks() -> list[tuple[int, str, str]]:
    """(line, the marker's words, the block's text) for every ```bash block."""
    lines = README.read_text().splitlines()
    out = []
    for i, line in enumerate(lines):
        if line.strip() != "```bash":
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        above = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = re.fullmatch(r"<!-- commands: (.*) -->", above.strip())
        out.append((i + 1, marker.group(1) if marker else "", "\n".join(lines[i + 1:end])))
    return out


def runnable(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip() and not PLACEHOLDER.search(line.split("#")[0])]


def test_every_shell_block_says_how_it_is_run_and_templates_are_marked():
    found = blocks()
    assert len(found) >= 6
    for line, marker, text in found:
        assert marker == "" or marker.startswith(("not run by the tests (", "slow", "needs ")), (line, marker)
        for command in text.splitlines():
            words = command.split("#")[0]
            assert "<" not in words or PLACEHOLDER.search(words), (line, command)  # no stray redirections


@pytest.mark.timeout(1800)  # the slow blocks run a benchmark suite (minutes); the subprocess has its own limit
@pytest.mark.parametrize("line, marker, text", [b for b in blocks() if not b[1].startswith("not run")],
                         ids=lambda v: f"line{v}" if isinstance(v, int) else "")
def test_a_readme_shell_block_runs_as_pasted(tmp_path, line, marker, text):
    options = [part.strip() for part in marker.split(";") if part.strip()]
    if "slow" in options and os.environ.get("VERTEXFLOW_SLOW") != "1":
        pytest.skip("slow: .ci/run runs it (VERTEXFLOW_SLOW=1)")
    for option in options:
        if option.startswith("needs "):
            missing = [m for m in option.split()[1:] if importlib.util.find_spec(m) is None]
            if missing:
                pytest.skip(f"needs {', '.join(missing)}")
    commands = runnable(text)
    assert commands, f"README.md:{line}: a block with nothing to run"
    (tmp_path / "examples").symlink_to(ROOT / "examples")  # the paths are a checkout's
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
               PYTHONUNBUFFERED="1")
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(commands)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, f"README.md:{line}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
