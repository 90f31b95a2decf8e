"""Streaming from object storage: the packed splits are uploaded to a local S3 server (moto, speaking the S3 API on
localhost), and `captioning fit` streams them from s3:// URLs through LitData, caching the chunks where
`data.stream_options` says."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from captioning.data.streaming import load_packed_records
from tests.conftest import ROOT, cli_env
from tests.data.conftest import fit_args
from tests.data.seen_images import read_batches

moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")

BUCKET = "captions"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
# The test server speaks plain http, which the object-store client behind LitData's chunk downloads (obstore) refuses
# unless told; S3 itself and any store behind TLS need no such line.
ALLOW_HTTP = (
    "import litdata.streaming.downloader as d; d._OBSTORE_CLIENT_OPTIONS = {**d._OBSTORE_CLIENT_OPTIONS, "
    "'allow_http': 'true'}; from captioning.cli import main; raise SystemExit(main())"
)


@pytest.fixture(scope="module")
def s3_endpoint(packed, monkeypatch_module) -> str:
    """A local S3 server holding the packed splits under s3://captions/shapes/{train,val,test}/."""
    from litdata.streaming import downloader

    for name, value in CREDENTIALS.items():
        monkeypatch_module.setenv(name, value)
    http = {**downloader._OBSTORE_CLIENT_OPTIONS, "allow_http": "true"}  # as ALLOW_HTTP does in the subprocess
    monkeypatch_module.setattr(downloader, "_OBSTORE_CLIENT_OPTIONS", http)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket=BUCKET)
    for file in sorted(packed.glob("*/*")):
        client.upload_file(str(file), BUCKET, f"shapes/{file.parent.name}/{file.name}")
    yield endpoint
    server.stop()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_captions_of_a_packed_split_are_read_from_object_storage(s3_endpoint, packed):
    remote = load_packed_records(f"s3://{BUCKET}/shapes/val", {"endpoint_url": s3_endpoint})
    assert [(r.image_id, r.captions) for r in remote] == [
        (r.image_id, r.captions) for r in load_packed_records(str(packed / "val"))
    ]
    with pytest.raises(FileNotFoundError, match=f"s3://{BUCKET}/shapes/missing/captions.json"):
        load_packed_records(f"s3://{BUCKET}/shapes/missing", {"endpoint_url": s3_endpoint})


@pytest.mark.slow
def test_fit_streams_every_split_from_s3(tmp_path, s3_endpoint, packed):
    options = {"cache_dir": str(tmp_path / "chunks"), "storage_options": {"endpoint_url": s3_endpoint}}
    args = fit_args(
        f"s3://{BUCKET}/shapes", tmp_path / "runs", tmp_path / "seen", f"--data.stream_options={json.dumps(options)}",
        "--data.num_workers=1",  # chunks fetched in a loader process, as on a GPU machine
        "--trainer.max_epochs=1", "--test_after_fit=true",
    )  # fmt: skip
    command = [sys.executable, "-c", ALLOW_HTTP, *args]
    result = subprocess.run(command, cwd=ROOT, env={**cli_env(), **CREDENTIALS}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]

    all_ids = sorted(r.image_id for r in load_packed_records(str(packed / "train")))
    assert sorted(i for b in read_batches(tmp_path / "seen") for i in b["ids"]) == all_ids  # each image once
    for split in ("train", "val", "test"):  # each split's chunks came from the bucket into its own cache folder
        assert list((tmp_path / "chunks" / split).rglob("chunk-*.bin")), split
    (version,) = (tmp_path / "runs" / "shapes").iterdir()
    metrics = json.loads((version / "metrics.json").read_text())  # the test split, streamed and scored
    assert metrics["images_scored"] == metrics["images_in_split"] == 16
