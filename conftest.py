"""pytest at the repository root: README.md's Python blocks (pytest-markdown-docs) run in a scratch folder."""

import os

import pytest


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
