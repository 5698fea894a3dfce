"""The documentation: the site builds with warnings as errors, and the README's Python examples run."""

from __future__ import annotations

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_docs_site_builds_strictly(tmp_path):
    """mkdocs with mkdocstrings: a broken link, a missing page or a docstring the API reference cannot render is
    an error (``strict: true``)."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (tmp_path / "site" / "api" / "index.html").read_text().count("group_conv_roll") > 0


def test_the_readme_examples_run():
    """The README's Python blocks, in order, in one namespace (the second builds on the first)."""
    with open(os.path.join(ROOT, "README.md")) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    assert len(blocks) == 2
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)  # the README's own examples
    assert namespace["pooled"].shape == (32, 95, 95, 4)
