"""The README's Python example runs as written (with one training epoch to stay fast)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_starts_with_the_two_commands():
    head = README.read_text().splitlines()[:15]
    assert any("make demo" in line for line in head) and any("make test" in line for line in head)


def test_readme_python_example_runs(capsys):
    text = README.read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    code = re.sub(r"epochs=\d+", "epochs=1", code)
    exec(compile(code, "README.md", "exec"), {})
    acc, asr = map(float, capsys.readouterr().out.split())
    assert 0.5 < acc <= 1.0 and 0.0 <= asr <= 1.0
