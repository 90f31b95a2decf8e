"""METEOR 1.5 (Banerjee & Lavie, 2005, "METEOR: An automatic metric for MT evaluation with improved
correlation with human judgments"; Denkowski & Lavie, 2014, version 1.5) through the jar that pycocoevalcap
ships, fed exactly as pycocoevalcap's ``Meteor`` class feeds it, in one JVM per call.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Sequence

from captioning.metrics.java import Unavailable, find_java, locate

METEOR_ENV = "CAPTIONING_METEOR_JAR"


def find_meteor(jar: str | os.PathLike | None = None) -> tuple[str, str]:
    """Java and the METEOR jar (with its paraphrase table).

    Raises:
        Unavailable: Java, the jar or its data is missing.
    """
    path = locate(jar, METEOR_ENV, "meteor/meteor-1.5.jar", "METEOR jar (meteor-1.5.jar)")
    if not (path.parent / "data" / "paraphrase-en.gz").is_file():
        raise Unavailable(f"METEOR's paraphrase table data/paraphrase-en.gz is missing next to {path}")
    return find_java(), str(path)


def meteor_scores(
    candidates: Sequence[str], references: Sequence[Sequence[str]], jar: str | os.PathLike | None = None
) -> tuple[float, list[float]]:
    """METEOR of tokenized candidates against tokenized references.

    Args:
        candidates: one tokenized caption per image.
        references: the tokenized references of each image.
        jar: path of meteor-1.5.jar (default: ``$CAPTIONING_METEOR_JAR``, then pycocoevalcap's copy).

    Returns:
        ``(corpus score, per-image scores)``; the corpus score is the jar's aggregate, as in coco-caption.

    Raises:
        Unavailable: Java or the jar is missing, or the JVM failed.
    """
    return meteor_score_sets([(candidates, references)], jar)[0]


def meteor_score_sets(
    sets: Sequence[tuple[Sequence[str], Sequence[Sequence[str]]]], jar: str | os.PathLike | None = None
) -> list[tuple[float, list[float]]]:
    """:func:`meteor_scores` of several independent sets of candidates, in one JVM (it loads for seconds).

    Each set gets its own aggregate, exactly as if it were scored alone.
    """
    java, jar_path = find_meteor(jar)
    cmd = [java, "-jar", "-Xmx2G", os.path.basename(jar_path), "-", "-", "-stdio", "-l", "en", "-norm"]
    proc = subprocess.Popen(
        cmd, cwd=os.path.dirname(jar_path), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    lines = []
    for candidates, references in sets:
        for hypothesis, refs in zip(candidates, references, strict=True):
            # SCORE ||| reference 1 words ||| reference n words ||| hypothesis words  (as pycocoevalcap writes it)
            hypothesis = hypothesis.replace("|||", "").replace("  ", " ")
            lines.append(" ||| ".join(("SCORE", " ||| ".join(refs), hypothesis)) + "\n")

    def write_scores() -> None:
        try:
            proc.stdin.write("".join(lines).encode())
            proc.stdin.flush()
        except BrokenPipeError:
            pass

    writer = threading.Thread(target=write_scores, daemon=True)  # the jar answers while we still write
    writer.start()
    results = []
    try:
        stats = [_readline(proc) for _ in lines]
        writer.join()
        start = 0
        for candidates, _ in sets:
            part = stats[start : start + len(candidates)]
            start += len(candidates)
            proc.stdin.write(("EVAL" + "".join(f" ||| {stat}" for stat in part) + "\n").encode())
            proc.stdin.flush()
            per_image = [float(_readline(proc)) for _ in part]
            results.append((float(_readline(proc)), per_image))
    except (OSError, ValueError) as err:
        raise Unavailable(f"the METEOR jar failed: {err}") from None
    finally:
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            try:
                stream.close()
            except OSError:
                pass
        proc.kill()
        proc.wait()
    return results


def _readline(proc: subprocess.Popen) -> str:
    line = proc.stdout.readline()
    if not line:
        err = proc.stderr.read().decode(errors="replace").strip().splitlines()
        raise OSError(err[-1] if err else "no output")
    return line.decode().strip()
