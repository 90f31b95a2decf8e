"""The LitServe APIs: `POST /caption`, a Captioner in an inference worker fed batches of checked requests, and
`POST /caption/stream`, one request at a time whose caption comes word by word.

LitServe's dynamic batching collects up to `max_batch_size` requests within `batch_timeout` seconds; `predict`
captions them together, in groups that share their decoding options. Requests are read and checked in the HTTP
process first (captioning.serve.upload), so a bad upload gets its 4xx there and never fails a batch. The stream is
newline-delimited JSON: after each step the words so far with the map of the newest word, then the whole result.
"""

# No `from __future__ import annotations` here: LitServe reads decode_request's annotation as an object, and FastAPI
# then resolves the `Depends` in it to build the endpoint.
import queue
import threading
from collections.abc import Iterator
from typing import Annotated, Any

import litserve as ls
import torch
from fastapi import Depends

from captioning.serve.upload import CaptionRequest, DecodingOptions, UploadReader

DIGITS = 5  # attention weights in JSON: a 14 x 14 grid averages 0.005 a cell, so 5 decimals keep 2-3 figures


class CaptionAPI(ls.LitAPI):
    """Captions uploaded images with a checkpoint; one instance is pickled into each inference worker."""

    def __init__(
        self,
        checkpoint: str,
        reader: UploadReader,
        max_batch_size: int = 16,
        batch_timeout: float = 0.01,
        threads: int | None = None,
        api_path: str = "/caption",
        stream: bool = False,
    ):
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path=api_path, stream=stream)
        self.checkpoint = checkpoint
        self.threads = threads
        reader_dependency = Depends(reader)

        # The endpoint's request type: FastAPI runs `reader` on the HTTP request and LitServe queues its result.
        def decode_request(request: Annotated[CaptionRequest, reader_dependency]) -> CaptionRequest:
            return request

        self.decode_request = decode_request

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("decode_request", None)  # a closure for the HTTP side only: the worker's queue brings CaptionRequests
        return state

    def setup(self, device: str) -> None:
        from captioning.inference import Captioner

        if self.threads:
            torch.set_num_threads(self.threads)
        self.captioner = Captioner.from_checkpoint(self.checkpoint, device=device)

    def decode_request(self, request: CaptionRequest) -> CaptionRequest:  # replaced per instance in __init__
        return request

    def batch(self, inputs: list[CaptionRequest]) -> list[CaptionRequest]:
        return inputs

    def predict(self, requests: list[CaptionRequest] | CaptionRequest) -> list[dict[str, Any]] | dict[str, Any]:
        """Captions a batch, one `Captioner.caption` call per group of requests with the same options.

        With max_batch_size 1, LitServe passes one request and expects one result.
        """
        if isinstance(requests, CaptionRequest):
            return self.predict([requests])[0]
        groups: dict[Any, list[int]] = {}
        for index, request in enumerate(requests):
            options = request.options
            # A seeded sample is reproducible only captioned alone (its random draws depend on the batch).
            key = (options, index) if options.sample and options.seed is not None else options
            groups.setdefault(key, []).append(index)
        results: list[dict[str, Any]] = [{} for _ in requests]
        for indices in groups.values():
            options: DecodingOptions = requests[indices[0]].options
            images = [requests[i].image for i in indices]
            captions = self.captioner.caption(images, batch_size=len(images), **options.caption_kwargs())
            for i, caption in zip(indices, captions, strict=True):
                results[i] = _caption_json(caption, options.attention)
        return results

    def unbatch(self, output: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return output

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        return output


class CaptionStreamAPI(CaptionAPI):
    """`POST /caption/stream`: the fields of `POST /caption`; each request alone, its caption streamed as it is
    decoded. The last line is what `POST /caption` answers, with "done": true."""

    batch, unbatch = ls.LitAPI.batch, ls.LitAPI.unbatch  # one request at a time

    def __init__(self, checkpoint: str, reader: UploadReader, threads: int | None = None):
        super().__init__(checkpoint, reader, max_batch_size=1, threads=threads, api_path="/caption/stream", stream=True)

    def predict(self, request: CaptionRequest) -> Iterator[dict[str, Any]]:
        steps: queue.Queue = queue.Queue()  # decoding runs in a thread: its per-step callback cannot yield here

        def run() -> None:
            try:
                options = {**request.options.caption_kwargs(), "batch_size": 1}
                done = self.captioner.caption([request.image], on_step=lambda so_far: steps.put(so_far[0]), **options)
                steps.put({"done": done[0]})
            except Exception as error:  # noqa: BLE001 -- raised again below, in LitServe's own worker thread
                steps.put(error)

        threading.Thread(target=run, daemon=True).start()
        words = None
        while True:
            item = steps.get()
            if isinstance(item, Exception):
                raise item
            if isinstance(item, dict):
                yield {**_caption_json(item["done"], request.options.attention), "done": True}
                return
            if item.words != words:  # the step that writes the end token adds no word
                words = item.words
                yield _step_json(item, request.options.attention)

    def encode_response(self, outputs: Iterator[dict[str, Any]]):  # no return type: FastAPI would read it as a model
        yield from outputs


def _step_json(caption, attention: bool) -> dict[str, Any]:
    """The caption so far: its words and, on request, the map (H, W) of the word written last."""
    result = {"caption": caption.text, "words": caption.words, "done": False}
    if attention and caption.words:
        maps = caption.attention_map  # (T, H, W)
        result["attention"] = {"grid": list(maps.shape[1:]), "map": maps[-1].double().round(decimals=DIGITS).tolist()}
    return result


def _caption_json(caption, attention: bool) -> dict[str, Any]:
    """A Caption as JSON: text, score, tokens, words, whether it ended and, on request, each word's attention on the
    grid (T, H, W)."""
    result = {
        "caption": caption.text,
        "score": round(caption.score, 4),
        "tokens": caption.tokens,
        "words": caption.words,
        "ended": caption.ended,  # False: cut at the length limit, often a sign of an image unlike the training data
    }
    if attention:
        maps = caption.attention_map  # (T, H, W), raw softmax weights on the encoder's grid
        result["attention"] = {"grid": list(maps.shape[1:]), "maps": maps.double().round(decimals=DIGITS).tolist()}
    return result
