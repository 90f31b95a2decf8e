"""The LitServe API of `POST /caption`: a Captioner in an inference worker, fed batches of checked requests.

LitServe's dynamic batching collects up to `max_batch_size` requests within `batch_timeout` seconds; `predict`
captions them together, in groups that share their decoding options. Requests are read and checked in the HTTP
process first (captioning.serve.upload), so a bad upload gets its 4xx there and never fails a batch.
"""

# No `from __future__ import annotations` here: LitServe reads decode_request's annotation as an object, and FastAPI
# then resolves the `Depends` in it to build the endpoint.
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
    ):
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path="/caption")
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
