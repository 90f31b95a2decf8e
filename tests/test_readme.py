"""The README's Python snippet runs as written, from a project folder holding what the main job writes."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import ROOT


def test_the_python_snippet_runs_on_the_files_the_main_job_writes(tmp_path, trained_run, shapes_root):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    (snippet,) = [block for block in blocks if "Captioner.from_checkpoint" in block]
    (tmp_path / "runs" / "shapes").mkdir(parents=True)
    (tmp_path / "runs" / "shapes" / "version_0").symlink_to(trained_run)  # as `captioning fit` leaves them
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "shapes").symlink_to(shapes_root)
    result = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 4 and all(re.search(r" -?\d+\.\d+ \(\d+, \d+, \d+\)$", line) for line in lines[:2])
    assert re.fullmatch(r"-\d+\.\d+ -\d+\.\d+ 8", lines[2])  # two log-probabilities; 7 words and the end token
    assert "'CIDEr'" in lines[3] and "'Bleu_4'" in lines[3]
