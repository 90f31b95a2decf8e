"""`captioning serve` over real HTTP: a server subprocess with the tiny checkpoint, good requests and every bad one."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from captioning.cli import main as cli_main
from captioning.serve.server import STATIC
from tests.conftest import ROOT
from tests.helpers import broken_images, odd_images

UPLOAD_MB = 1  # a small limit keeps the oversized upload cheap


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_server(checkpoint: Path, log: Path, *extra: str, timeout: float = 180) -> Iterator[tuple[str, int]]:
    """Starts `captioning serve` in a subprocess, waits for /health, yields (host, port); always stops it."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "captioning", "serve", "--checkpoint", str(checkpoint), "--port", str(port)]
    command += ["--device", "cpu", "--log-level", "warning", *extra]
    with open(log, "wb") as output:
        # A session of its own: if the server does not stop, its whole process group is killed.
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if request("127.0.0.1", port, "GET", "/health", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server was not ready after {timeout} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.25)
        yield "127.0.0.1", port
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def request(host: str, port: int, method: str, path: str, body=None, headers=None, timeout: float = 60, **kwargs):
    """One HTTP request on a fresh connection -> (status, body text)."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {}, **kwargs)
        response = connection.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        connection.close()


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body and its content type."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data) in files.items():
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
        parts.append(head.encode() + b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post_image(server, data: bytes, filename: str = "image.png", **fields: str) -> tuple[int, dict]:
    body, content_type = multipart(fields, {"image": (filename, data)})
    status, text = request(*server, "POST", "/caption", body, {"Content-Type": content_type})
    return status, json.loads(text)


@pytest.fixture(scope="module")
def images(tiny_checkpoint) -> list[Path]:
    return sorted((tiny_checkpoint.parent / "shapes" / "test").glob("*.png"))[:8]


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with running_server(tiny_checkpoint, log, "--max-batch-size", "8", "--max-upload-mb", str(UPLOAD_MB)) as address:
        yield address


@pytest.mark.slow
def test_concurrent_requests_get_the_captions_of_the_python_api(server, images, tiny_checkpoint, one_thread):
    from captioning.inference import Captioner

    expected = Captioner.from_checkpoint(tiny_checkpoint, device="cpu").caption(images, beam_size=3)
    with ThreadPoolExecutor(len(images)) as pool:  # together, so that the server batches them
        answers = list(pool.map(lambda path: post_image(server, path.read_bytes(), path.name), images))
    assert [status for status, _ in answers] == [200] * len(images)
    for (_, answer), caption in zip(answers, expected, strict=True):
        assert answer["caption"] == caption.text
        assert answer["tokens"] == caption.tokens
        assert answer["words"] == caption.words
        assert answer["score"] == pytest.approx(caption.score, abs=1e-3)
        assert answer["ended"] is caption.ended is True
        assert "attention" not in answer


def test_attention_has_one_grid_map_per_word(server, images, captioner):
    status, answer = post_image(server, images[0].read_bytes(), attention="true", beam_size="1")
    assert status == 200, answer
    rows, cols = answer["attention"]["grid"]
    maps = answer["attention"]["maps"]
    assert len(maps) == len(answer["words"]) > 0
    assert all(len(m) == rows and all(len(row) == cols for row in m) for m in maps)
    # Each word's map is where the query that wrote it looked: the Python API's map of that word, in order ...
    expected = captioner.caption(images[0], beam_size=1, return_attention=True)[0]
    assert answer["words"] == expected.words
    served = torch.tensor(maps, dtype=torch.float64)  # (T, H, W), rounded to 5 decimals
    torch.testing.assert_close(served, expected.attention_map.double(), rtol=0, atol=1e-5)
    # ... and a distribution over the grid: a CNN's memory has no tokens off the grid to take a share.
    assert all(abs(sum(map(sum, m)) - 1) < rows * cols * 1e-5 for m in maps)


def test_the_stream_sends_each_word_with_its_map_and_ends_with_the_batched_answer(server, images):
    """Greedy here, so each streamed state is a prefix of the caption, and its map is that word's final map."""
    status, answer = post_image(server, images[2].read_bytes(), attention="true", beam_size="1")
    assert status == 200, answer
    image = {"image": ("x.png", images[2].read_bytes())}
    body, content_type = multipart({"attention": "true", "beam_size": "1"}, image)
    status, text = request(*server, "POST", "/caption/stream", body, {"Content-Type": content_type})
    assert status == 200, text
    *steps, last = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert last == {**answer, "done": True}
    assert [step["words"] for step in steps] == [answer["words"][:n] for n in range(1, len(answer["words"]) + 1)]
    for n, step in enumerate(steps):
        assert step["done"] is False and step["attention"]["grid"] == answer["attention"]["grid"]
        served, final = torch.tensor(step["attention"]["map"]), torch.tensor(answer["attention"]["maps"][n])
        torch.testing.assert_close(served, final, rtol=0, atol=2e-5)
    body, content_type = multipart({"top_p": "2"}, image)
    status, text = request(*server, "POST", "/caption/stream", body, {"Content-Type": content_type})
    assert status == 400 and json.loads(text)["error"].startswith("field 'top_p'")


def test_images_of_every_mode_and_size_are_captioned(server, tmp_path):
    for name, path in odd_images(tmp_path).items():  # grayscale, 16-bit, CMYK, palette, EXIF-rotated, 6000 x 4000...
        status, answer = post_image(server, path.read_bytes(), name)
        assert status == 200 and answer["caption"], (name, answer)


def test_seeded_sampling_is_reproducible_and_options_are_checked(server, images):
    data = images[1].read_bytes()
    first = post_image(server, data, sample="true", seed="7", top_p="0.9")
    assert first[0] == 200 and first == post_image(server, data, sample="true", seed="7", top_p="0.9")
    for fields, named in [
        ({"beam_size": "0"}, "beam_size"),
        ({"top_p": "1.5"}, "top_p"),
        ({"sample": "maybe"}, "sample"),
        ({"sample": "true", "beam_size": "3"}, "beam_size"),
        ({"beam": "2"}, "beam"),
    ]:
        status, answer = post_image(server, data, **fields)
        assert status == 400 and named in answer["error"], (fields, answer)


def bad_requests(folder: Path, good: bytes) -> dict[str, tuple[int, bytes, dict[str, str], dict]]:
    """name: (expected status, body, headers, extra http.client arguments)."""
    broken = {name: path.read_bytes() for name, path in broken_images(folder).items()}
    oversized = os.urandom(int(UPLOAD_MB * 2**20) + 100_000)
    cases = {}
    for name, status, data in [
        ("not-an-image", 422, broken["not-an-image.jpg"]),
        ("truncated-jpeg", 422, broken["truncated.jpg"]),
        ("decompression-bomb", 422, broken["bomb.png"]),
        ("empty-file", 400, b""),
        ("oversized", 413, oversized),
    ]:
        body, content_type = multipart({}, {"image": (f"{name}.jpg", data)})
        cases[name] = (status, body, {"Content-Type": content_type}, {})
    cases["empty-body"] = (400, b"", {"Content-Type": "multipart/form-data; boundary=x"}, {})
    cases["no-body-at-all"] = (415, b"", {}, {})
    cases["wrong-content-type"] = (415, good, {"Content-Type": "image/png"}, {})
    body, content_type = multipart({"image": "http://127.0.0.1/a.jpg"}, {})
    cases["url-instead-of-file"] = (400, body, {"Content-Type": content_type}, {})
    body, content_type = multipart({}, {"image": ("oversized.jpg", oversized)})
    chunks = (body[i : i + 65536] for i in range(0, len(body), 65536))  # no Content-Length: counted as it comes
    cases["oversized-chunked"] = (413, chunks, {"Content-Type": content_type}, {"encode_chunked": True})
    return cases


BAD = ["not-an-image", "truncated-jpeg", "decompression-bomb", "empty-file", "oversized", "empty-body"]
BAD += ["no-body-at-all", "wrong-content-type", "url-instead-of-file", "oversized-chunked"]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_gets_a_4xx_with_a_one_line_json_error_and_the_server_goes_on(server, images, tmp_path, case):
    good = images[0].read_bytes()
    status, body, headers, extra = bad_requests(tmp_path, good)[case]
    got, text = request(*server, "POST", "/caption", body, headers, **extra)
    assert got == status, text
    assert text.count("\n") == 0 and json.loads(text)["error"].strip(), text
    assert post_image(server, good)[0] == 200


def test_the_server_listens_on_localhost_only(server):
    table = Path("/proc/net/tcp")
    if not table.exists():
        pytest.skip("no /proc/net/tcp on this system")
    port = f"{server[1]:04X}"
    listening = [line.split()[1] for line in table.read_text().splitlines()[1:] if line.split()[3] == "0A"]
    assert f"0100007F:{port}" in listening  # 127.0.0.1, little-endian
    assert f"00000000:{port}" not in listening


def test_the_demo_page_and_its_files_are_served_without_internet_assets(server):
    status, page = request(*server, "GET", "/")
    assert status == 200 and "/static/app.js" in page and "/static/style.css" in page
    for name in ("app.js", "style.css"):
        assert request(*server, "GET", f"/static/{name}")[0] == 200
    for path in STATIC.iterdir():
        assert "http://" not in path.read_text() and "https://" not in path.read_text(), path
    assert request(*server, "GET", "/health") == (200, "ok")
    status, info = request(*server, "GET", "/info")
    assert status == 200 and json.loads(info)["model"]["trained_on"] == {"dataset": "shapes", "images": 512}


def test_serve_help_and_a_missing_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        cli_main(["serve", "--help"])
    assert exit.value.code == 0 and "--max-batch-size" in capsys.readouterr().out
    assert cli_main(["serve", "--checkpoint", str(tmp_path / "missing.ckpt")]) == 1
    assert "missing.ckpt" in capsys.readouterr().err
