"""Finding Java and the jars that pycocoevalcap ships (METEOR 1.5, SPICE 1.0, Stanford CoreNLP), without
importing pycocoevalcap and without ever downloading anything.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path


class Unavailable(RuntimeError):
    """A metric cannot run here; the message says what is missing and how to add it."""


def find_java() -> str:
    """Path of the ``java`` executable (``$JAVA_HOME/bin/java`` first, then ``PATH``).

    Raises:
        Unavailable: no Java runtime.
    """
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return str(Path(home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise Unavailable("Java was not found (install a Java runtime, 8 or newer, or set JAVA_HOME)")
    return java


def pycocoevalcap_dir() -> Path | None:
    """Folder of the installed pycocoevalcap package, located without importing it."""
    try:
        spec = importlib.util.find_spec("pycocoevalcap")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def locate(explicit: str | os.PathLike | None, env: str, relative: str, what: str) -> Path:
    """A jar given explicitly, by environment variable, or inside pycocoevalcap's package folder.

    Args:
        explicit: a path the caller passed, or None.
        env: environment variable that may hold the path.
        relative: path inside pycocoevalcap's folder.
        what: name of the thing, for the error message.

    Raises:
        Unavailable: the jar is not there.
    """
    hint = f'pip install -e ".[coco-eval]" (pycocoevalcap) or set {env}'
    if explicit is None:
        explicit = os.environ.get(env) or None
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise Unavailable(f"{what} not found at {path} ({hint})")
        return path
    root = pycocoevalcap_dir()
    if root is None:
        raise Unavailable(f"{what} not found: pycocoevalcap is not installed ({hint})")
    path = root / relative
    if not path.is_file():
        raise Unavailable(f"{what} not found at {path} ({hint})")
    return path
