"""`benchmarks/step_audit.py` for the tests: its op counter and its audits, imported from the file."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "step_audit.py"
_spec = importlib.util.spec_from_file_location("step_audit", _PATH)
step_audit = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(step_audit)

OpCounter = step_audit.OpCounter
