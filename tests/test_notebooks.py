"""The notebooks, as committed (without outputs), run top to bottom in a Jupyter kernel against runs trained in the
test session, each pointed at them through its environment variables, as a user points it at their own runs."""

from __future__ import annotations

import json
import os
import re
import time

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import ROOT
from tests.test_viz import train_viz_runs

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
def test_both_notebooks_run_top_to_bottom_on_trained_runs_in_under_three_minutes(tmp_path_factory, monkeypatch):
    first, second = train_viz_runs(tmp_path_factory.getbasetemp() / "viz-runs")
    scenes = json.loads((first.parents[2] / "shapes" / "annotations" / "captions_test.json").read_text())["images"]
    image = next(i for i in scenes if len(i["scene"]) >= 2)  # a scene of two or three shapes
    environment = {
        "CAPTIONING_RUN": str(first),
        "CAPTIONING_OTHER_RUN": str(second),
        "CAPTIONING_CHECKPOINT": str(second),
        "CAPTIONING_IMAGE": str(first.parents[2] / "shapes" / "test" / image["file_name"]),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",
    }
    for key, value in environment.items():
        monkeypatch.setenv(key, value)  # the kernel inherits this process's environment

    start, executed = time.perf_counter(), {}
    for name in NOTEBOOKS:
        notebook = read(name)
        client = NotebookClient(
            notebook, timeout=150, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}
        )
        client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails
        executed[name] = notebook
    seconds = time.perf_counter() - start
    assert seconds < 180, f"the notebooks took {seconds:.0f} s together"

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
    loading = next(i for i, cell in enumerate(notebook.cells) if "Run(RUN)" in cell.source)
    notebook.cells = notebook.cells[: loading + 1]  # up to the cell that reads the run
    monkeypatch.setenv("CAPTIONING_RUN", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    client = NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    with pytest.raises(Exception, match="set CAPTIONING_RUN"):
        client.execute()
