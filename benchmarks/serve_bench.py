"""Requests per second and latency of `captioning serve` under a bounded load, with dynamic batching and without.

Starts the server twice on 127.0.0.1 (--max-batch-size N, then 1), sends it the same load each time: C concurrent
clients, each on a keep-alive connection, posting shapes images for about D seconds (and at most R requests in all),
and prints requests/s, p50/p95/p99 latency, failed requests and the server's memory before and after the load (RSS
and PSS, summed over the server and all of its processes), then the throughput ratio batching / batch size 1.

    HF_HUB_OFFLINE=1 python benchmarks/serve_bench.py [--checkpoint CKPT] [--clients 32] [--duration 30]

Without --checkpoint, the tiny shapes captioner of the tests is trained first (about half a minute).
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: train the tests' tiny captioner")
    parser.add_argument("--images", type=Path, default=None, help="folder of images to send (default: shapes test)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load per server")
    parser.add_argument("--max-requests", type=int, default=20_000, help="a bound on the requests sent per server")
    parser.add_argument("--max-batch-size", type=int, default=16, help="the batching server's --max-batch-size")
    parser.add_argument("--batch-timeout", type=float, default=0.01, help="the batching server's --batch-timeout")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the model worker")
    return parser.parse_args()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(checkpoint: Path, port: int, log: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "captioning", "serve", "--checkpoint", str(checkpoint), "--port", str(port)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [*command, "--log-level", "warning", *extra], env=env, stdout=output, stderr=output, start_new_session=True
        )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited:\n{log.read_text()[-2000:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return process
        except OSError:
            pass
        time.sleep(0.25)
    stop_server(process)
    raise RuntimeError("the server was not ready after 300 s")


def stop_server(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def tree_memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, PSS) of a process and all of its descendants, in MiB (Linux /proc).

    RSS counts the pages that forked processes share once per process; PSS shares them out, so it adds up.
    """
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    totals, todo = {"Rss:": 0, "Pss:": 0}, [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        try:
            rollup = Path(f"/proc/{current}/smaps_rollup").read_text().splitlines()
        except OSError:
            continue
        for line in rollup:
            if line.split()[0] in totals:
                totals[line.split()[0]] += int(line.split()[1])
    return totals["Rss:"] / 1024, totals["Pss:"] / 1024


def multipart(filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n\r\n'.encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def load(port: int, bodies: list[tuple[bytes, str]], clients: int, duration: float, max_requests: int) -> dict:
    """Runs the load and returns the latencies (s) of successful requests, failures and the elapsed time."""
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    sent = [0]
    start = time.perf_counter()
    stop_at = start + duration

    def client(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        number = index
        while time.perf_counter() < stop_at:
            with lock:
                if sent[0] >= max_requests:
                    return
                sent[0] += 1
            body, content_type = bodies[number % len(bodies)]
            number += clients
            began = time.perf_counter()
            try:
                connection.request("POST", "/caption", body=body, headers={"Content-Type": content_type})
                response = connection.getresponse()
                text = response.read()
                ok = response.status == 200
            except OSError as error:
                ok, text = False, str(error).encode()
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            with lock:
                (latencies.append(time.perf_counter() - began) if ok else failures.append(text[:200].decode()))
        connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"latencies": latencies, "failures": failures, "elapsed": time.perf_counter() - start}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))] if ordered else float("nan")


def main() -> None:
    options = parse_args()
    sys.path.insert(0, str(ROOT))
    checkpoint = options.checkpoint
    if checkpoint is None:
        from tests.helpers import train_tiny_checkpoint

        print("training the tiny shapes captioner of the tests...", flush=True)
        checkpoint = train_tiny_checkpoint(Path(tempfile.mkdtemp(prefix="serve-bench-")))
    folder = options.images or checkpoint.parent / "shapes" / "test"
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg"})[:64]
    if not paths:
        raise SystemExit(f"error: no .png or .jpg images in {folder}")
    bodies = [multipart(path.name, path.read_bytes()) for path in paths]
    load_text = (
        f"{options.clients} clients, {options.duration:g} s per server (at most {options.max_requests} requests)"
    )
    print(f"checkpoint {checkpoint}; {len(paths)} images from {folder}; {load_text}; {os.cpu_count()} cores")
    common = ["--device", options.device, "--threads", str(options.threads)]
    settings = [
        (f"batching (max {options.max_batch_size}, {options.batch_timeout:g} s)", options.max_batch_size),
        ("batch size 1", 1),
    ]
    rates = []
    with tempfile.TemporaryDirectory() as logs:
        for name, batch_size in settings:
            port = free_port()
            extra = [*common, "--max-batch-size", str(batch_size), "--batch-timeout", str(options.batch_timeout)]
            began = time.perf_counter()
            server = start_server(checkpoint, port, Path(logs) / f"{batch_size}.log", *extra)
            ready = time.perf_counter() - began
            try:
                load(port, bodies, options.clients, 2.0, 10 * options.clients)  # warm-up, not counted
                before = tree_memory_mb(server.pid)
                result = load(port, bodies, options.clients, options.duration, options.max_requests)
                after = tree_memory_mb(server.pid)
            finally:
                stop_server(server)
            done, failed = result["latencies"], result["failures"]
            rate = len(done) / result["elapsed"]
            rates.append(rate)
            ms = [1000 * percentile(done, q) for q in (50, 95, 99)]
            print(
                f"{name:<30} {rate:7.1f} requests/s   p50 {ms[0]:6.0f} ms   p95 {ms[1]:6.0f} ms   p99 {ms[2]:6.0f} ms"
                f"   {len(done)} ok, {len(failed)} failed"
                f"   RSS {before[0]:.0f} -> {after[0]:.0f} MiB, PSS {before[1]:.0f} -> {after[1]:.0f} MiB"
                f"   (ready in {ready:.1f} s)",
                flush=True,
            )
            for failure in failed[:3]:
                print(f"  failure: {failure}")
    print(f"throughput ratio, batching / batch size 1: {rates[0] / rates[1]:.2f}x")


if __name__ == "__main__":
    main()
