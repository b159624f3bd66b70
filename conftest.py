"""pytest at the repository root: README.md's Python blocks (pytest-markdown-docs) run in a scratch folder,
with what they print captured (shown only if the block fails), as pytest does for every other test."""

import contextlib
import io
import os
import sys

import pytest
from pytest_markdown_docs._runners import DefaultRunner, register_runner


@register_runner(default=True)
class CapturedRunner(DefaultRunner):
    """pytest-markdown-docs' runner with the block's stdout and stderr kept, not written among pytest's dots."""

    def runtest(self, test, args, *, asyncio_runner=None):
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                super().runtest(test, args, asyncio_runner=asyncio_runner)
        except BaseException:
            sys.stderr.write(f"--- what {test.source_path}:{test.start_line} printed ---\n{out.getvalue()}")
            raise


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    if not str(item.path).endswith(".md"):
        yield
        return
    scratch = item.config._tmp_path_factory.mktemp("readme")  # the blocks write trace.html and the like
    before = os.getcwd()
    os.chdir(scratch)
    try:
        yield
    finally:
        os.chdir(before)
