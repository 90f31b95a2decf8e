"""The notebooks, as committed (without outputs), run top to bottom with the README's command (`jupyter nbconvert
--execute`, from the project folder) against runs trained in the test session, each pointed at them through its
environment variables with paths relative to the project folder, as a user points it at their own runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import ROOT

NOTEBOOKS = {"explore_results.ipynb": "CAPTIONING_RUN", "cross_attention.ipynb": "CAPTIONING_CHECKPOINT"}


def read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(ROOT / "notebooks" / name, as_version=4)


def outputs(notebook: nbformat.NotebookNode) -> tuple[list[str], str]:
    """The MIME types of all rich outputs, and all printed text."""
    kinds, text = [], []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                text.append(output.text)
            elif output.output_type in ("display_data", "execute_result"):
                kinds += list(output.data)
                text.append(output.data.get("text/markdown", ""))
    return kinds, "".join(text)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebooks_are_committed_without_outputs_and_take_their_run_from_a_parameter_cell(name):
    notebook = read(name)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code)
    parameters = [cell for cell in code if "parameters" in cell.metadata.get("tags", [])]
    assert len(parameters) == 1 and NOTEBOOKS[name] in parameters[0].source  # papermill's convention, and the env


@pytest.mark.slow
def test_both_notebooks_run_top_to_bottom_with_the_readme_command_on_trained_runs(viz_runs, tmp_path_factory):
    first, second = viz_runs
    scenes = json.loads((first.parents[2] / "shapes" / "annotations" / "captions_test.json").read_text())["images"]
    image = next(i for i in scenes if len(i["scene"]) >= 2)  # a scene of two or three shapes

    def relative(path) -> str:  # as the README writes them: runs/shapes/version_0, from the project folder
        return os.path.relpath(path, ROOT)

    environment = {
        **os.environ,
        "CAPTIONING_RUN": relative(first),
        "CAPTIONING_OTHER_RUN": relative(second),
        "CAPTIONING_CHECKPOINT": relative(second),
        "CAPTIONING_IMAGE": relative(first.parents[2] / "shapes" / "test" / image["file_name"]),
        "OMP_NUM_THREADS": "1",
    }
    out = tmp_path_factory.mktemp("executed")
    executed = {}
    for name in NOTEBOOKS:
        command = [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                   f"notebooks/{name}", "--output-dir", str(out), "--ExecutePreprocessor.timeout=150"]  # fmt: skip
        result = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-4000:]  # the failing cell and its traceback
        executed[name] = nbformat.read(out / name, as_version=4)

    kinds, text = outputs(executed["explore_results.ipynb"])
    assert kinds.count("image/png") >= 8  # curves, best, worst, lengths and vocabulary, and the comparison
    assert "| CIDEr |" in text and "shapes/version_0: 100 test captions" in text
    assert re.search(r"shapes/version_1 scores higher on \d+ images, lower on \d+", text)

    kinds, text = outputs(executed["cross_attention.ipynb"])
    assert "image/gif" in kinds and kinds.count("image/png") >= 5
    assert "rows of the softmax sum to 1: True" in text
    differences = re.findall(r"max \|ours - [^|]+\| = (\S+)", text)
    assert len(differences) == 2 and all(float(d) < 1e-5 for d in differences), differences
    assert "M = 1 prefix token(s) + a 6 x 6 grid" in text  # a ViT: its class token is off the grid


def test_a_notebook_pointed_at_a_missing_run_says_what_to_set(tmp_path, monkeypatch):
    """The first cells alone, against an empty folder: one clear error naming the variable to set."""
    notebook = read("explore_results.ipynb")
    loading = next(i for i, cell in enumerate(notebook.cells) if "Run(project_path(RUN))" in cell.source)
    notebook.cells = notebook.cells[: loading + 1]  # up to the cell that reads the run
    monkeypatch.setenv("CAPTIONING_RUN", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    client = NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    with pytest.raises(Exception, match="set CAPTIONING_RUN"):
        client.execute()
