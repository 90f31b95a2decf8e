"""`captioning caption` as a user runs it: a subprocess on folders of real photos, odd images and broken files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from captioning.caption import main
from tests.conftest import COCO_MINI, ROOT, require
from tests.helpers import broken_images, odd_images

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint) -> Path:
    return tiny_checkpoint


@pytest.fixture(scope="module")
def shapes_images(checkpoint) -> Path:
    return checkpoint.parent / "shapes" / "test"


def caption(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Runs `captioning caption ARGS` in a subprocess, as a user would."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "captioning", "caption", *args],
        cwd=cwd or ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_a_folder_of_real_photos_with_odd_and_broken_files(checkpoint, tmp_path):
    photos = require(COCO_MINI / "val2017")
    (tmp_path / "odd").mkdir()
    (tmp_path / "broken").mkdir()
    odd, broken = odd_images(tmp_path / "odd"), broken_images(tmp_path / "broken")
    (tmp_path / "odd" / "notes.txt").write_text("not an image, and not named like one: left out of a folder\n")
    result = caption("--checkpoint", str(checkpoint), str(photos), str(tmp_path / "odd"), *map(str, broken.values()))
    assert result.returncode == 1, result.stderr[-2000:]

    lines = result.stdout.splitlines()
    expected = sorted(photos.glob("*.jpg")) + sorted(odd.values())
    assert len(lines) == len(expected) == 159 + len(odd)
    assert [line.split("\t")[0] for line in lines] == [str(path) for path in expected]
    assert all(line.split("\t")[1].strip() for line in lines)

    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == len(broken)
    for path, error in zip(broken.values(), errors, strict=True):
        assert error.startswith(f"error: {path}: cannot read image (")
    assert "decompression bomb" in errors[list(broken).index("bomb.png")]
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_jsonl_beam_and_sampling_options(checkpoint, shapes_images):
    images = sorted(shapes_images.glob("*.png"))[:6]
    result = caption("--checkpoint", str(checkpoint), "--format", "jsonl", "--beam-size", "5", *map(str, images))
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["image"] for r in records] == [str(p) for p in images]
    assert all(r["caption"] and -20 < r["score"] <= 0 for r in records)

    pattern = str(shapes_images / "00000[1-6].png")  # a glob, as a shell would pass it when quoted
    options = ["--sample", "--temperature", "1.3", "--top-p", "0.9", "--seed", "7", "--batch-size", "4"]
    first = caption("--checkpoint", str(checkpoint), *options, pattern)
    second = caption("--checkpoint", str(checkpoint), *options, pattern)
    assert first.returncode == 0 and first.stdout == second.stdout
    assert len(first.stdout.splitlines()) == 6


def test_a_caption_cut_at_the_length_limit_gets_a_warning_naming_its_image(checkpoint, shapes_images, capsys):
    """Two tokens at most: no shapes caption ends in one word, and each image says so on stderr."""
    images = sorted(map(str, shapes_images.glob("*.png")))[:3]
    assert main(["--checkpoint", str(checkpoint), "--max-length", "2", *images]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 3
    warnings = err.splitlines()
    assert len(warnings) == 3 and all(w.startswith(f"warning: {i}: the caption reached the length limit") for w, i in
                                      zip(warnings, images, strict=True))  # fmt: skip
    assert main(["--checkpoint", str(checkpoint), "--format", "jsonl", *images]) == 0
    out, err = capsys.readouterr()
    assert err == "" and all(json.loads(line)["ended"] for line in out.splitlines())  # a trained model ends


def test_a_minimum_length_that_leaves_no_room_for_the_end_token_is_a_one_line_error(checkpoint, shapes_images, capsys):
    image = str(sorted(shapes_images.glob("*.png"))[0])
    assert main(["--checkpoint", str(checkpoint), "--max-length", "5", "--min-length", "5", image]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.strip() == (
        "error: decoding field 'min_length' is 5, but at most 4 words fit before the end token (max_length 5, the end "
        "token included)"
    )


def test_progress_bar_keeps_result_and_error_lines_whole(checkpoint, shapes_images, tmp_path, capsys):
    missing = tmp_path / "missing.png"
    code = main(["--checkpoint", str(checkpoint), "--progress", "--batch-size", "8", str(shapes_images), str(missing)])
    out, err = capsys.readouterr()
    assert code == 1
    assert len(out.splitlines()) == 32 and all("\t" in line for line in out.splitlines())
    assert f"error: {missing}: cannot read image" in err
    assert "32/33" in err and "image" in err  # the bar, on stderr
    assert "captioned 32 of 33 images; 1 error(s) above" in err


def test_the_cli_never_writes_the_unknown_word(checkpoint, shapes_images, capsys, monkeypatch):
    from captioning.inference import Captioner
    from tests.test_inference import fond_of_the_unknown_word

    fond = fond_of_the_unknown_word(Captioner.from_checkpoint(checkpoint, device="cpu"))
    monkeypatch.setattr(Captioner, "from_checkpoint", lambda *args, **kwargs: fond)
    images = [str(path) for path in sorted(shapes_images.glob("*.png"))[:3]]
    for options in ([], ["--beam-size", "1"], ["--sample", "--seed", "0"]):
        assert main(["--checkpoint", str(checkpoint), "--max-length", "6", *options, *images]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) == 3 and not any("<unk>" in line for line in lines)


def test_a_model_error_ends_the_run_once_with_its_traceback(checkpoint, shapes_images, capsys, monkeypatch):
    """Only an image that cannot be read is captioned alone: an error of the model or the device is the same for
    every image, so it is shown once, with its traceback, not as one error per image."""
    from captioning import cli, inference

    calls = []

    def device_assert(*args, **kwargs):
        calls.append(args)
        raise RuntimeError("CUDA error: device-side assert triggered")

    monkeypatch.setattr(inference, "decode", device_assert)
    monkeypatch.delenv("CAPTIONING_DEBUG", raising=False)
    images = [str(path) for path in sorted(shapes_images.glob("*.png"))[:3]]
    assert cli.main(["caption", "--checkpoint", str(checkpoint), *images]) == 1
    out, err = capsys.readouterr()
    assert out == "" and len(calls) == 1
    assert "Traceback (most recent call last):" in err
    assert [line for line in err.splitlines() if line.startswith("error: ")] == [
        "error: unexpected RuntimeError in `captioning caption`: CUDA error: device-side assert triggered"
    ]


def test_an_image_that_fails_to_decode_in_its_batch_is_reported_alone(
    checkpoint, shapes_images, tmp_path, capsys, monkeypatch
):
    """Images opened lazily decode inside the batch: a truncated one fails it, and the others are then captioned
    one by one."""
    from PIL import Image

    import captioning.images

    images = sorted(shapes_images.glob("*.png"))[:3]
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(images[1].read_bytes()[:200])
    monkeypatch.setattr(captioning.images, "load_image", lambda path: Image.open(path))  # decoded later
    paths = [str(images[0]), str(truncated), str(images[2])]
    assert main(["--checkpoint", str(checkpoint), *paths]) == 1
    out, err = capsys.readouterr()
    assert [line.split("\t")[0] for line in out.splitlines()] == [paths[0], paths[2]]
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {truncated}: cannot caption image (OSError: ")


def test_folders_and_patterns_without_images_are_errors(checkpoint, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["--checkpoint", str(checkpoint), str(tmp_path / "empty"), str(tmp_path / "*.jpg")]) == 1
    err = capsys.readouterr().err
    assert f"error: {tmp_path / 'empty'}: no image files in this folder" in err
    assert f"error: {tmp_path / '*.jpg'}: no file matches this pattern" in err
    (tmp_path / "empty" / "2024").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "empty" / "2024" / "a.png")  # a dataset with its images one level down
    assert main(["--checkpoint", str(checkpoint), str(tmp_path / "empty")]) == 1
    found, pattern = tmp_path / "empty" / "2024" / "a.png", tmp_path / "empty" / "**" / "*"
    assert f"its subfolders have some (e.g. {found}): pass '{pattern}' for them" in capsys.readouterr().err


def test_bad_checkpoints_and_options_get_one_line_errors(checkpoint, shapes_images, tmp_path, capsys):
    image = str(next(shapes_images.glob("*.png")))
    assert main(["--checkpoint", str(tmp_path / "nope.ckpt"), image]) == 2
    assert "error: checkpoint not found" in capsys.readouterr().err
    (tmp_path / "bad.ckpt").write_text("garbage")
    assert main(["--checkpoint", str(tmp_path / "bad.ckpt"), image]) == 2
    assert "not a checkpoint (it looks like a .ckpt text file)" in capsys.readouterr().err
    assert main(["--checkpoint", str(checkpoint), "--device", "gpu0", image]) == 2
    assert "unknown device 'gpu0'" in capsys.readouterr().err
    for bad, message in [
        (["--beam-size", "0"], "--beam-size: 0 is not in [1, inf]"),
        (["--top-p", "1.5"], "--top-p: 1.5 is not in (0, 1]"),
        (["--temperature", "hot"], "--temperature: expected a number, got 'hot'"),
        (["--sample", "--beam-size", "3"], "--sample draws one caption per image"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(["--checkpoint", str(checkpoint), *bad, image])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_help_lists_the_decoding_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--beam-size", "--max-length", "--sample", "--temperature", "--top-k", "--top-p", "--batch-size"):
        assert option in out
    assert "--device" in out and "text|jsonl" not in out and "{text,jsonl}" in out
