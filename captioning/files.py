"""Files written atomically: into a temporary file beside the target, then renamed over it.

A reader (or a run killed mid-write) never sees half a results file, figure or animation. Standard library only.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Calls `write(file)` on a temporary binary file beside `path`, then renames it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(handle, 0o666 & ~_umask())  # mkstemp's file is private (0600); the result is as any file written
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def write_json(path: str | Path, data: Any) -> Path:
    """Writes `data` as indented JSON, atomically."""
    return write_atomic(
        path, lambda file: file.write((json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    )
