"""`captioning serve`: a checkpoint behind an HTTP API (LitServe, dynamic batching) with a demo page.

    POST /caption   multipart form: file field `image`, optional decoding fields (beam_size, sample, top_p, ...,
                    attention=true; default: the checkpoint's decoding spec)
                    -> {"caption", "score", "tokens", "words", "ended", "attention": {"grid", "maps"}}
    POST /caption/stream  the same form -> newline-delimited JSON, one line per decoding step:
                    {"caption", "words", "done": false, "attention": {"grid", "map"}} (the newest word's map), then
                    the line of POST /caption with "done": true
    GET  /health    "ok" once the model is loaded
    GET  /          the demo page: drop an image, see its caption and each word's cross-attention

Binds to 127.0.0.1 unless told otherwise, accepts only uploaded bytes (it never fetches a URL) and answers every bad
request with a 4xx and a one-line JSON body {"error": "..."}.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from captioning.caption import bounded_number

STATIC = Path(__file__).parent / "static"
HOSTS = {"localhost": "127.0.0.1", "127.0.0.1": "127.0.0.1", "0.0.0.0": "0.0.0.0", "::": "::"}  # what LitServe binds
EXAMPLES = """examples:
  captioning serve --checkpoint last.ckpt                       # http://127.0.0.1:8000/
  captioning serve --checkpoint last.ckpt --device cuda --max-batch-size 32 --batch-timeout 0.02
  curl -F image=@photo.jpg -F beam_size=5 http://127.0.0.1:8000/caption
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="captioning serve",
        description=__doc__.splitlines()[0].split(": ", 1)[1],
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", metavar="CKPT", required=True, help="checkpoint written by `captioning fit`")
    parser.add_argument(
        "--host",
        choices=sorted(HOSTS),
        default="127.0.0.1",
        help="address to bind (default: 127.0.0.1, this machine only; 0.0.0.0 opens it to the network)",
    )
    parser.add_argument("--port", type=bounded_number(int, 1024, 65535), default=8000, help="TCP port (default: 8000)")
    parser.add_argument(
        "--max-batch-size",
        metavar="N",
        type=bounded_number(int, 1),
        default=16,
        help="requests captioned together at most (default: 16); 1 turns batching off",
    )
    parser.add_argument(
        "--batch-timeout",
        metavar="SECONDS",
        type=bounded_number(float, 0),
        default=0.01,
        help="how long a batch waits to fill up (default: 0.01)",
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda", "mps"),
        default="auto",
        help="where the model runs (default: auto, a GPU when there is one)",
    )
    parser.add_argument(
        "--max-upload-mb",
        metavar="MB",
        type=bounded_number(float, 0, low_open=True),
        default=10.0,
        help="largest image file accepted, in megabytes (default: 10); larger uploads get 413",
    )
    parser.add_argument(
        "--threads",
        metavar="N",
        type=bounded_number(int, 1),
        default=None,
        help="torch CPU threads of the model worker",
    )
    parser.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error"), default="info", help="server log level"
    )
    return parser


def build_server(options: argparse.Namespace):
    """A LitServer with the caption API, the demo page and one-line JSON errors (not started)."""
    import litserve as ls
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
    from starlette.exceptions import HTTPException

    from captioning.checkpoint import load_checkpoint, training_data
    from captioning.serve.api import CaptionAPI, CaptionStreamAPI
    from captioning.serve.upload import UploadReader

    # a bad checkpoint fails here, before any worker starts; mmap: only its config and training data are read here
    config, _, _ = load_checkpoint(options.checkpoint, mmap=True)
    reader = UploadReader(config.encoder, config.image_size, int(options.max_upload_mb * 2**20))
    api = CaptionAPI(
        str(Path(options.checkpoint).resolve()),
        reader,
        max_batch_size=options.max_batch_size,
        batch_timeout=options.batch_timeout,
        threads=options.threads,
    )
    metadata = {"checkpoint": Path(options.checkpoint).name, "encoder": config.encoder, "image_size": config.image_size}
    metadata["trained_on"] = training_data(options.checkpoint)  # the page says it: photos to a shapes model ...
    stream = CaptionStreamAPI(str(Path(options.checkpoint).resolve()), reader, threads=options.threads)
    server = ls.LitServer([api, stream], accelerator=options.device, devices=1, model_metadata=metadata)
    app = server.app

    async def error_json(request: Request, error: HTTPException) -> JSONResponse:
        return JSONResponse({"error": " ".join(str(error.detail).split())}, error.status_code, headers=error.headers)

    async def invalid_json(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        return JSONResponse({"error": problems}, 422)

    app.add_exception_handler(HTTPException, error_json)
    app.add_exception_handler(RequestValidationError, invalid_json)
    # LitServe answers "/" with a plain "litserve running"; the demo page takes its place.
    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) != "/"]

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return server


def main(argv: list[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    server = build_server(options)
    host = HOSTS[options.host]

    def stop(signum, frame):  # SIGTERM shuts down like Ctrl-C: LitServe then stops its workers too
        if os.getpid() != owner:  # a forked HTTP process that LitServe is stopping: uvicorn has already shut down
            raise SystemExit(0)
        raise KeyboardInterrupt

    owner = os.getpid()

    signal.signal(signal.SIGTERM, stop)
    shown = f"[{host}]" if ":" in host else host
    print(f"captioning serve: http://{shown}:{options.port}/ (loading the model...)", file=sys.stderr, flush=True)
    server.run(host=host, port=options.port, log_level=options.log_level, generate_client_file=False)
    return 0
