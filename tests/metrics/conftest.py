"""Fixtures for the metrics tests: the shared real data, and pycocoevalcap and Java where present.

Tests that compare with pycocoevalcap run it in the same test; they skip, with the reason, where
pycocoevalcap, Java or ../shared/data is missing. Nothing here downloads anything.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = ROOT.parent / "shared" / "data"
FIXTURES = SHARED_DATA / "metric-fixtures"
COCO_VAL = SHARED_DATA / "coco-val2017-mini" / "annotations" / "captions_val2017.json"


def need_path(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared data folder ../shared/data)")
    return path


@pytest.fixture(scope="session")
def pycocoevalcap():
    """The pycocoevalcap package (the official coco-caption toolkit), or a skip."""
    if importlib.util.find_spec("pycocoevalcap") is None:
        pytest.skip('pycocoevalcap is not installed (pip install -e ".[coco-eval]")')
    import pycocoevalcap

    return pycocoevalcap


@pytest.fixture(scope="session")
def java() -> str:
    path = shutil.which("java")
    if path is None:
        pytest.skip("Java is not installed")
    return path


@pytest.fixture(scope="session")
def java_ptb(pycocoevalcap, java):
    """pycocoevalcap's PTBTokenizer (Stanford CoreNLP 3.4.1 in Java) on ``{key: [caption, ...]}``."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    def tokenize(captions: dict) -> dict:
        return PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})

    return tokenize


@pytest.fixture(scope="session")
def coco_annotations() -> list[dict]:
    """The 25,014 caption annotations of COCO val2017, in file order."""
    return json.loads(need_path(COCO_VAL).read_text())["annotations"]


@pytest.fixture(scope="session")
def coco_captions(coco_annotations) -> dict[int, list[str]]:
    """``{image_id: [caption, ...]}`` of COCO val2017 (5,000 images)."""
    captions: dict[int, list[str]] = defaultdict(list)
    for ann in coco_annotations:
        captions[ann["image_id"]].append(ann["caption"])
    return dict(captions)


@pytest.fixture(scope="session")
def metric_fixture():
    """Loads a JSON file of ../shared/data/metric-fixtures (official pycocoevalcap 1.2 scores), or skips."""

    def load(name: str, file: str):
        return json.loads(need_path(FIXTURES / name / file).read_text())

    return load
