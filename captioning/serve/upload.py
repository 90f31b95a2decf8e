"""Reading a caption request: one uploaded image and the decoding options, checked before anything is queued.

Runs in the HTTP process, as a FastAPI dependency of `POST /caption`, so that a bad request is answered with its 4xx
at once and never reaches (or fails) a batch of good ones. Only uploaded bytes are accepted: a URL is never fetched.
The image is decoded by the training loader (`load_image`: every mode, EXIF rotation, the decompression-bomb guard)
and resized to the model's input here, so the inference worker receives a small, valid image.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import HTTPException, Request
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from torchvision import transforms as T

from captioning.caption import bounded_number
from captioning.data.transforms import data_config, load_image

FORM_OVERHEAD = 64 * 1024  # multipart boundaries and option fields, on top of the image's own bytes

# Decoding options: the names of `captioning caption`'s flags (dashes as underscores), with the same ranges.
OPTION_TYPES = {
    "beam_size": bounded_number(int, 1),
    "max_length": bounded_number(int, 1),
    "min_length": bounded_number(int, 0),
    "length_penalty": float,
    "no_repeat_ngram_size": bounded_number(int, 0),
    "temperature": bounded_number(float, 0, low_open=True),
    "top_k": bounded_number(int, 0),
    "top_p": bounded_number(float, 0, 1, low_open=True),
    "seed": int,
}
FLAGS = ("sample", "attention")
TRUE, FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class DecodingOptions:
    """How to decode one caption (the keyword arguments of `Captioner.caption`; None: the checkpoint's spec), plus
    whether to return attention."""

    beam_size: int | None = None
    max_length: int | None = None
    min_length: int | None = None
    length_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    sample: bool = False
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    attention: bool = False

    def caption_kwargs(self) -> dict:
        """Keyword arguments for `Captioner.caption` (all but `attention`, which becomes `return_attention`)."""
        kwargs = {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "attention"}
        return {**kwargs, "return_attention": self.attention, "suppress_unk": True}


@dataclass
class CaptionRequest:
    """A checked request: the image at the model's input size (RGB, S x S) and its decoding options."""

    image: Image.Image
    options: DecodingOptions


class UploadReader:
    """The `POST /caption` dependency: multipart form with a file field `image` and option fields -> CaptionRequest.

    Status codes: 415 if the body is not multipart/form-data, 413 past the upload limit (checked on Content-Length
    and on the bytes actually read), 400 for a malformed form, a missing or empty image or a bad option, 422 for
    bytes that are not a readable image. Errors are raised as HTTPException with a one-line detail.
    """

    def __init__(self, encoder: str, image_size: int | None, max_upload_bytes: int):
        config = data_config(encoder, image_size)
        interpolation = T.InterpolationMode(config.get("interpolation", "bicubic"))
        # The first step of the model's transform (build_transform): the rest runs in the worker, on S x S pixels.
        self.resize = T.Resize(config["input_size"][-2:], interpolation=interpolation, antialias=True)
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, request: Request) -> CaptionRequest:
        content_type = request.headers.get("content-type", "")
        if not content_type.lower().startswith("multipart/form-data"):
            shown = content_type.split(";")[0] or "none"
            raise HTTPException(415, f"content type '{shown}': upload the image as multipart/form-data, field 'image'")
        limit = self.max_upload_bytes + FORM_OVERHEAD
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise HTTPException(413, self._too_large(int(length)))
        try:
            form = await MultiPartParser(request.headers, self._limited(request.stream(), limit), max_files=1).parse()
        except MultiPartException as error:
            raise HTTPException(400, f"malformed multipart form ({error.message})") from None
        try:
            upload = form.get("image")
            if not isinstance(upload, UploadFile):
                given = "a text value (URLs are not fetched)" if upload is not None else "nothing"
                raise HTTPException(400, f"field 'image': expected an uploaded image file, got {given}")
            data = await upload.read()
            name = upload.filename or "image"
            options = parse_options({**request.query_params, **{k: v for k, v in form.items() if k != "image"}})
        finally:
            await form.close()
        if not data:
            raise HTTPException(400, f"field 'image' ({name}): the uploaded file is empty")
        if len(data) > self.max_upload_bytes:
            raise HTTPException(413, self._too_large(len(data), what=f"image {name}"))
        return CaptionRequest(await run_in_threadpool(self._decode, data, name), options)

    def _decode(self, data: bytes, name: str) -> Image.Image:
        try:
            image = load_image(_NamedBytes(data, name))
        except OSError as error:
            raise HTTPException(422, " ".join(str(error).split())) from None
        return self.resize(image)  # (S, S) RGB, as the first step of the model's transform does it

    async def _limited(self, stream: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
        """The request body, refused with 413 once more than `limit` bytes have come (whatever Content-Length said)."""
        size = 0
        async for chunk in stream:
            size += len(chunk)
            if size > limit:
                raise HTTPException(413, self._too_large(size, at_least=True))
            yield chunk

    def _too_large(self, size: int, what: str = "upload", at_least: bool = False) -> str:
        megabytes = self.max_upload_bytes / 2**20
        return f"{what} of {'over ' if at_least else ''}{size} bytes is over the {megabytes:g} MB limit"


def parse_options(fields: dict[str, str]) -> DecodingOptions:
    """Form or query fields -> DecodingOptions; raises HTTPException(400) naming the field and value."""
    values = {}
    for name, text in fields.items():
        if not isinstance(text, str):
            raise HTTPException(400, f"field '{name}': expected a value, got a file")
        if name in FLAGS:
            if text.strip().lower() not in TRUE | FALSE:
                raise HTTPException(400, f"field '{name}': expected true or false, got '{text}'")
            values[name] = text.strip().lower() in TRUE
        elif name in OPTION_TYPES:
            try:
                values[name] = OPTION_TYPES[name](text.strip())
            except (ValueError, argparse.ArgumentTypeError) as error:
                raise HTTPException(400, f"field '{name}': {error}".replace("\n", " ")) from None
        else:
            known = ", ".join(["image", *OPTION_TYPES, *FLAGS])
            raise HTTPException(400, f"unknown field '{name}' (known: {known})")
    if values.get("sample") and values.get("beam_size", 1) != 1:
        raise HTTPException(400, "field 'beam_size': sampling draws one caption per image; leave out beam_size")
    return DecodingOptions(**values)


class _NamedBytes(io.BytesIO):
    """Uploaded bytes that call themselves by the upload's file name in the loader's error messages."""

    def __init__(self, data: bytes, name: str):
        super().__init__(data)
        self.name = name

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return repr(self.name)
