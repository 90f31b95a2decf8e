"""`captioning export`: safetensors folders that `Captioner.from_pretrained` loads, and ONNX graphs whose
onnxruntime greedy loop writes the torch model's captions token for token (shapes and real photos)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch
import torch.nn.functional as F

from captioning import Captioner
from captioning.caption import main as caption_main
from captioning.data.coco import load_coco_captions
from captioning.data.transforms import build_transform, load_image
from captioning.errors import UserError
from captioning.export import TOLERANCE, export_onnx, main
from captioning.model import CaptioningModel, ModelConfig
from captioning.onnx_captioner import OnnxCaptioner
from captioning.text.tokenizer import CaptionTokenizer
from tests.conftest import COCO_MINI, TINY_MODEL, require, run_cli


@pytest.fixture(scope="module")
def shapes_images(tiny_checkpoint) -> list[Path]:
    """The 32 shapes test images beside the tiny checkpoint (see tests.helpers)."""
    return sorted((tiny_checkpoint.parent / "shapes" / "test").glob("*.png"))


@pytest.fixture(scope="module")
def onnx_folder(tiny_checkpoint, tmp_path_factory) -> Path:
    """The tiny checkpoint exported to ONNX by the command a user runs."""
    out = tmp_path_factory.mktemp("onnx-export")
    result = run_cli("export", "--checkpoint", str(tiny_checkpoint), "--format", "onnx", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    written = {Path(line).name for line in result.stdout.splitlines()}
    assert written == {"encoder.onnx", "decoder_step.onnx", "config.json", "tokenizer.json"}
    assert "max |log-prob difference|" in result.stderr  # within the default --tolerance: exit status 0
    return out


def test_onnx_export_fails_when_onnxruntime_and_torch_differ_beyond_the_tolerance(
    tiny_checkpoint, onnx_folder, tmp_path
):
    """The default tolerance passes (`onnx_folder`); a tolerance of 0 fails, naming the difference it measured."""
    out = tmp_path / "strict"
    args = ["--checkpoint", str(tiny_checkpoint), "--format", "onnx", "--out", str(out), "--tolerance", "0"]
    result = run_cli("export", *args)
    assert result.returncode == 1 and result.stdout == "", result.stderr[-3000:]
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    expected = rf"error: {re.escape(str(out))}: onnxruntime and torch log-probabilities differ by up to (\S+), more "
    match = re.match(expected + "than --tolerance 0: ", error)
    assert match and 0 < float(match[1]) < TOLERANCE, error
    assert "Traceback" not in result.stderr


# Decoding specs that ONNX must follow token for token: greedy with each rule, beam search, and seeded sampling.
SPECS = {
    "greedy": dict(beam_size=1),
    "greedy rules": dict(beam_size=1, min_length=8, no_repeat_ngram_size=1),
    "greedy cut": dict(beam_size=1, max_length=5),
    "beam 3": dict(beam_size=3),
    "sample": dict(sample=True, seed=11, top_p=0.95, temperature=1.2),
}


def assert_same_captions(onnx_captions: list, torch_captions: list) -> None:
    assert [c.tokens for c in onnx_captions] == [c.tokens for c in torch_captions]
    assert [c.text for c in onnx_captions] == [c.text for c in torch_captions]
    assert [c.ended for c in onnx_captions] == [c.ended for c in torch_captions]
    assert np.allclose([c.score for c in onnx_captions], [c.score for c in torch_captions], atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("options", SPECS.values(), ids=SPECS.keys())
def test_onnx_captions_equal_torch_captions_on_shapes(one_thread, onnx_folder, tiny_checkpoint, shapes_images, options):
    torch_captions = Captioner.from_checkpoint(tiny_checkpoint, device="cpu").caption(shapes_images, **options)
    onnx_captions = OnnxCaptioner(onnx_folder, threads=1).caption(shapes_images, **options)
    assert_same_captions(onnx_captions, torch_captions)
    assert all(len(c.tokens) >= options.get("min_length", 1) for c in onnx_captions)  # the rules were applied
    if options.get("no_repeat_ngram_size") == 1:
        assert all(len(set(c.tokens)) == len(c.tokens) for c in onnx_captions)


def test_the_export_carries_the_checkpoint_s_decoding_spec(onnx_folder, tiny_checkpoint, shapes_images):
    """Without options both runtimes decode as the checkpoint says; a seed gives the same samples in each batch."""
    from captioning.checkpoint import checkpoint_spec

    onnx_captioner = OnnxCaptioner(onnx_folder, threads=1)
    assert onnx_captioner.spec == checkpoint_spec(tiny_checkpoint)
    captioner = Captioner.from_checkpoint(tiny_checkpoint, device="cpu")
    assert_same_captions(onnx_captioner.caption(shapes_images[:6]), captioner.caption(shapes_images[:6]))
    sample = dict(sample=True, seed=5, batch_size=4)
    images = shapes_images[:6]
    assert_same_captions(onnx_captioner.caption(images, **sample), captioner.caption(images, **sample))


NO_TORCH = """
import json, sys
class NoTorch:  # as on a machine where only `pip install captioning[onnx]` ran
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "timm", "lightning"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
sys.meta_path.insert(0, NoTorch())
"""
WITHOUT_TORCH = (
    NO_TORCH
    + """
from captioning.onnx_captioner import OnnxCaptioner
captions = OnnxCaptioner(sys.argv[1], threads=1).caption(sys.argv[2:], beam_size=3)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "timm") or m == "captioning.export")
print(json.dumps({"tokens": [c.tokens for c in captions], "loaded": loaded}))
"""
)


def test_onnx_captioner_runs_without_torch(onnx_folder, tiny_checkpoint, shapes_images):
    """In a process where importing torch fails, ONNX captions are the torch model's; the runtime side imports
    neither torch nor the exporter (no import cycle)."""
    images = [str(path) for path in shapes_images[:4]]
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCH, str(onnx_folder), *images], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = json.loads(result.stdout)
    assert output["loaded"] == []
    expected = Captioner.from_checkpoint(tiny_checkpoint, device="cpu").caption(images, beam_size=3)
    assert output["tokens"] == [c.tokens for c in expected]


def test_the_caption_command_captions_with_an_onnx_export_without_torch(onnx_folder, tiny_checkpoint, shapes_images):
    images = [str(path) for path in shapes_images[:4]]

    def run(*args: str) -> subprocess.CompletedProcess:
        command = NO_TORCH + "from captioning.cli import main\nsys.exit(main(sys.argv[1:]))"
        return subprocess.run([sys.executable, "-c", command, *args], capture_output=True, text=True, timeout=300)

    result = run("caption", "--checkpoint", str(onnx_folder), "--beam-size", "3", *images)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = Captioner.from_checkpoint(tiny_checkpoint, device="cpu").caption(images, beam_size=3)
    lines = [f"{path}\t{caption.text}" for path, caption in zip(images, expected, strict=True)]
    assert result.stdout.splitlines() == lines
    training = run("fit", "--config", "configs/shapes.yaml")
    assert training.returncode == 1 and 'pip install -e ".[train]"' in training.stderr


def test_the_onnx_install_brings_no_torch():
    """`pip install captioning[onnx]`: the base dependencies and the extra's, read from pyproject.toml."""
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["onnx"]
    names = {re.split(r"[<>=!~\[; ]", requirement)[0].lower() for requirement in wanted}
    assert "onnxruntime" in names and not names & {"torch", "torchvision", "timm", "lightning", "captioning"}


def test_onnx_preprocessing_equals_the_captioner_s(onnx_folder, tiny_checkpoint, shapes_images):
    """Paths, PIL images and arrays become the torch Captioner's input to the last bit, photos of any shape too."""
    from PIL import Image

    captioner = Captioner.from_checkpoint(tiny_checkpoint, device="cpu")
    onnx_captioner = OnnxCaptioner(onnx_folder, threads=1)
    photo = require(COCO_MINI / "val2017" / "000000000802.jpg")  # a tall photo
    pixels = np.asarray(Image.open(shapes_images[0]).convert("RGB"))  # (H, W, 3) uint8
    for image in [shapes_images[0], photo, Image.open(photo), pixels]:
        assert np.array_equal(onnx_captioner.preprocess(image), captioner.preprocess(image).numpy())


def test_safetensors_export_captions_as_the_checkpoint(one_thread, tiny_checkpoint, shapes_images, tmp_path, capsys):
    from safetensors import safe_open

    assert main(["--checkpoint", str(tiny_checkpoint), "--format", "safetensors", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    with safe_open(tmp_path / "model.safetensors", framework="pt") as weights:
        names = set(weights.keys())
    assert "decoder.token_embed.weight" in names and "decoder.head.weight" not in names  # tied: stored once
    loaded = Captioner.from_pretrained(tmp_path, device="cpu")
    assert loaded.model.decoder.head.weight is loaded.model.decoder.token_embed.weight
    expected = Captioner.from_checkpoint(tiny_checkpoint, device="cpu").caption(shapes_images[:8])
    assert loaded.caption(shapes_images[:8]) == expected
    capsys.readouterr()  # what the export printed
    outputs = []  # the caption command takes the folder as it takes the checkpoint
    for checkpoint in (tmp_path, tiny_checkpoint):
        assert caption_main(["--checkpoint", str(checkpoint), "--device", "cpu", *map(str, shapes_images[:8])]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and len(outputs[0].splitlines()) == 8


def test_bad_export_folder_gives_a_one_line_error_naming_the_file(tiny_checkpoint, onnx_folder, tmp_path):
    folder = tmp_path / "export"
    assert main(["--checkpoint", str(tiny_checkpoint), "--format", "safetensors", "--out", str(folder)]) == 0
    with pytest.raises(FileNotFoundError, match=r"encoder\.onnx: not found"):
        OnnxCaptioner(folder)  # a safetensors export
    cases = {}
    cases["missing folder"] = (tmp_path / "nowhere", FileNotFoundError, "nowhere")
    cases["an ONNX export"] = (onnx_folder, FileNotFoundError, "model.safetensors")
    (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:1000])  # truncated
    cases["truncated weights"] = (folder, UserError, "model.safetensors")
    for name, (path, error_type, named) in cases.items():
        with pytest.raises(error_type) as raised:
            Captioner.from_pretrained(path, device="cpu")
        message = str(raised.value)
        assert named in message and "\n" not in message, (name, message)
    (folder / "config.json").write_text('{"format": 1, "model_config": {"vocab_size": 10, "colour": "red"}}')
    with pytest.raises(UserError, match=r"config\.json: bad model_config.*colour"):
        Captioner.from_pretrained(folder, device="cpu")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(UserError, match=r"config\.json: not readable JSON"):
        Captioner.from_pretrained(folder, device="cpu")
    with pytest.raises(UserError, match=r"--out .*: is a file"):
        main(["--checkpoint", str(tiny_checkpoint), "--format", "onnx", "--out", str(folder / "tokenizer.json")])


def train_on_photos(folder: Path, steps: int = 100) -> tuple[CaptioningModel, CaptionTokenizer, list[Path]]:
    """The tiny model trained briefly (frozen random encoder, `steps` real decoder steps) on the 159 real photos."""
    annotations = require(COCO_MINI / "annotations" / "captions_val2017_subset159.json")
    records = load_coco_captions(annotations, COCO_MINI / "val2017")
    tokenizer = CaptionTokenizer.train([c for r in records for c in r.captions], min_frequency=2)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, freeze_encoder=True, dropout=0.0, **TINY_MODEL)
    torch.manual_seed(0)
    model = CaptioningModel(config)
    transform = build_transform(config.encoder, config.image_size)
    with torch.no_grad():
        images = torch.stack([transform(load_image(r.path)) for r in records])  # (159, 3, 64, 64)
        features = model.encoder.eval()(images)  # (159, M, C_enc): frozen, computed once
    K = 5
    tokens = tokenizer.encode([c for r in records for c in r.captions[:K]], config.max_length)  # (159*K, T)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        index = torch.randint(len(records), (16,), generator=generator)  # (B,)
        batch = tokens[(index[:, None] * K + torch.arange(K)).flatten()]  # (B*K, T)
        logits = model.decoder(batch[:, :-1], model.project(features[index]))  # (B*K, T-1, V)
        loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), ignore_index=tokenizer.pad_id)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), tokenizer, [r.path for r in records]


@pytest.fixture(scope="module")
def photo_export(tmp_path_factory) -> tuple[Captioner, Path, list[Path]]:
    """The tiny model trained on the real photos, as a torch Captioner and as an ONNX export folder."""
    folder = tmp_path_factory.mktemp("photos")
    model, tokenizer, photos = train_on_photos(folder)
    export_onnx(model, tokenizer, folder / "onnx")
    return Captioner(model, tokenizer, "cpu"), folder / "onnx", photos


@pytest.mark.slow
def test_onnx_greedy_captions_equal_torch_greedy_on_real_photos(one_thread, photo_export):
    captioner, folder, photos = photo_export
    torch_captions = captioner.caption(photos, beam_size=1)
    onnx_captions = OnnxCaptioner(folder, threads=1).caption(photos, beam_size=1)
    assert len(onnx_captions) == len(photos) == 159
    assert [c.tokens for c in onnx_captions] == [c.tokens for c in torch_captions]
    assert len({c.text for c in torch_captions}) > 1  # the photos are told apart, not one caption for all


@pytest.mark.slow
@pytest.mark.parametrize("options", [SPECS["beam 3"], SPECS["sample"]], ids=["beam 3", "sample"])
def test_onnx_beam_search_and_seeded_sampling_equal_torch_on_real_photos(one_thread, photo_export, options):
    captioner, folder, photos = photo_export
    photos = photos[::8][:20]  # 20 photos spread over the set
    torch_captions = captioner.caption(photos, **options)
    assert_same_captions(OnnxCaptioner(folder, threads=1).caption(photos, **options), torch_captions)
    assert len({c.text for c in torch_captions}) > 1
