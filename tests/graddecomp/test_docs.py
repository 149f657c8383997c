"""The README's example and the examples/ script run as written."""

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "packages" / "graddecomp"


def test_readme_example_runs():
    readme = (PKG / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})


def test_example_script_runs(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["gradient_rank.py", "--quick"])
    runpy.run_path(str(PKG / "examples" / "gradient_rank.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "layers.0.linear1" in out and "rank is at most" in out
