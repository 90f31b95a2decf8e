"""SPICE (Anderson et al., 2016, "SPICE: Semantic Propositional Image Caption Evaluation") through the
spice-1.0.jar that pycocoevalcap ships, run as pycocoevalcap runs it. SPICE parses captions with Stanford
CoreNLP 3.6.0, whose jars pycocoevalcap downloads on first use; here nothing is downloaded: when the jars
are not in SPICE's lib/ folder, SPICE is reported unavailable with the command that fetches them.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import tempfile
from collections.abc import Hashable, Sequence
from pathlib import Path

from captioning.metrics.java import Unavailable, find_java, locate

SPICE_ENV = "CAPTIONING_SPICE_JAR"
SPICE_CACHE_ENV = "CAPTIONING_SPICE_CACHE"
CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


def find_spice(jar: str | os.PathLike | None = None) -> tuple[str, Path]:
    """Java and the SPICE jar, after checking that its Stanford CoreNLP jars are present.

    Raises:
        Unavailable: Java, the jar or the CoreNLP jars are missing.
    """
    path = locate(jar, SPICE_ENV, "spice/spice-1.0.jar", "SPICE jar (spice-1.0.jar)")
    lib = path.parent / "lib"
    missing = [name for name in CORENLP_JARS if not (lib / name).is_file()]
    if missing:
        raise Unavailable(
            f"SPICE needs {' and '.join(missing)} in {lib} (about 1 GB to download once: "
            "python -m pycocoevalcap.spice.get_stanford_models, or set CAPTIONING_SPICE_JAR to a complete SPICE)"
        )
    return find_java(), path


def spice_scores(
    image_ids: Sequence[Hashable],
    candidates: Sequence[str],
    references: Sequence[Sequence[str]],
    jar: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[float, list[float]]:
    """SPICE F-scores of tokenized candidates against tokenized references.

    Args:
        image_ids: image of each candidate (JSON-serialisable).
        candidates: one tokenized caption per image.
        references: the tokenized references of each image.
        jar: path of spice-1.0.jar (default: ``$CAPTIONING_SPICE_JAR``, then pycocoevalcap's copy).
        cache_dir: SPICE's parse cache (default: ``$CAPTIONING_SPICE_CACHE``, else no cache).

    Returns:
        ``(mean F-score, per-image F-scores)`` in the order given (NaN where SPICE gives none, as coco-caption).

    Raises:
        Unavailable: something is missing or the JVM failed.
    """
    java, path = find_spice(jar)
    order = sorted(range(len(image_ids)), key=lambda i: image_ids[i])  # pycocoevalcap sorts the images
    data = [{"image_id": image_ids[i], "test": candidates[i], "refs": list(references[i])} for i in order]
    cache_dir = cache_dir or os.environ.get(SPICE_CACHE_ENV)
    with tempfile.TemporaryDirectory() as tmp:
        in_file, out_file = Path(tmp) / "input.json", Path(tmp) / "output.json"
        in_file.write_text(json.dumps(data, indent=2))
        cmd = [java, "-jar", "-Xmx8G", path.name, str(in_file), "-out", str(out_file), "-subset", "-silent"]
        if cache_dir:
            os.makedirs(cache_dir, exist_ok=True)
            cmd[5:5] = ["-cache", str(cache_dir)]
        done = subprocess.run(cmd, cwd=path.parent, capture_output=True)
        if done.returncode != 0 or not out_file.is_file():
            lines = done.stderr.decode(errors="replace").strip().splitlines()
            raise Unavailable(f"the SPICE jar failed: {lines[-1] if lines else done.returncode}")
        results = json.loads(out_file.read_text())
    by_image = {json.dumps(item["image_id"]): _float(item["scores"]["All"]["f"]) for item in results}
    per_image = [by_image[json.dumps(i)] for i in image_ids]
    mean = sum(per_image) / len(per_image) if per_image else math.nan
    return mean, per_image


def _float(value: object) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
