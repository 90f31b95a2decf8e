"""The built-in shapes data: the basic setting, the hard one, and the datamodule's check of captions against scenes."""

import hashlib
import itertools
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from captioning.data import shapes_hard
from captioning.data.datamodule import CaptionDataModule
from captioning.data.shapes import annotation_path, caption_matches_scene, describe, ensure_shapes, random_scene
from captioning.metrics.tokenize import ptb_tokenize
from tests.conftest import COCO_MINI, require


def test_every_caption_names_every_shape_of_its_scene():
    rng = random.Random(1)
    for _ in range(300):
        scene = random_scene(rng, 128)
        captions = describe(scene, rng, 128)
        assert len(set(captions)) == 5
        assert all(caption_matches_scene(caption, scene) for caption in captions)


def test_a_caption_of_another_scene_rarely_matches():
    """Captions cannot be guessed without looking: colours and kinds are drawn independently per image."""
    rng = random.Random(2)
    scenes = [random_scene(rng, 128) for _ in range(400)]
    captions = [describe(scene, rng, 128)[0] for scene in scenes]
    matches = sum(caption_matches_scene(captions[i], scenes[i - 1]) for i in range(len(scenes)))
    assert matches / len(scenes) < 0.05


def test_scenes_vary_in_count_colour_kind_and_size_and_carry_boxes(shapes_root):
    data = json.loads(annotation_path(shapes_root, "train").read_text())
    shapes = [shape for image in data["images"] for shape in image["scene"]]
    assert Counter(len(image["scene"]) for image in data["images"]).keys() == {1, 2, 3}
    assert len({s["colour"] for s in shapes}) == 5 and len({s["kind"] for s in shapes}) == 4
    assert {s["size"] for s in shapes} == {"small", "large"}
    assert all(0 <= s["bbox"][0] and s["bbox"][0] + s["bbox"][2] <= 64 for s in shapes)
    assert Counter(a["image_id"] for a in data["annotations"]).most_common()[-1][1] == 5
    assert any(" above " in a["caption"] or " left of " in a["caption"] for a in data["annotations"])


def test_generation_is_seeded_and_skipped_when_already_there(tmp_path, shapes_root):
    sizes = {"train": 96, "val": 16, "test": 16}
    ensure_shapes(tmp_path, image_size=64, split_sizes=sizes)
    assert annotation_path(tmp_path, "val").read_text() == annotation_path(shapes_root, "val").read_text()
    assert (tmp_path / "val" / "000001.png").read_bytes() == (shapes_root / "val" / "000001.png").read_bytes()
    before = annotation_path(tmp_path, "val").stat().st_mtime_ns
    ensure_shapes(tmp_path, image_size=64, split_sizes=sizes)
    assert annotation_path(tmp_path, "val").stat().st_mtime_ns == before


# ---------------------------------------------------------------------------------------------------- basic, kept
def test_basic_setting_writes_the_files_of_its_generator_version(shapes_root):
    """The files are pinned by the generator's version (2: most captions place their shapes): a change to the
    captions or pictures must come with a new version, so that existing data is rewritten, not scored differently."""
    data = annotation_path(shapes_root, "val").read_bytes()
    assert json.loads(data)["info"]["generator"] == {"version": 2, "image_size": 64, "count": 16, "seed": 1}
    assert hashlib.sha256(data).hexdigest() == "a5dab8eecb8d8f12296f707d4bcbb5fe812cb19dbb0c109f770406a497214075"


# ------------------------------------------------------------------------------------------------------- hard
HARD_SPLITS = {"train": 24, "val": 8, "test": 8}


@pytest.fixture(scope="module")
def hard_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes_hard")
    shapes_hard.ensure_shapes(root, image_size=64, split_sizes=HARD_SPLITS)
    return root


def hard_examples(count: int, seed: int = 0) -> list[tuple[list[dict], list[str]]]:
    rng = random.Random(seed)
    examples = []
    for _ in range(count):
        scene, background = shapes_hard.random_scene(rng, 128), shapes_hard.random_background(rng)
        examples.append((scene, shapes_hard.describe(scene, background, rng, 128)))
    return examples


def test_hard_generation_is_seeded_and_skipped_when_already_there(tmp_path, hard_root):
    shapes_hard.ensure_shapes(tmp_path, image_size=64, split_sizes=HARD_SPLITS)
    assert annotation_path(tmp_path, "test").read_text() == annotation_path(hard_root, "test").read_text()
    assert (tmp_path / "test" / "000003.png").read_bytes() == (hard_root / "test" / "000003.png").read_bytes()
    before = annotation_path(tmp_path, "test").stat().st_mtime_ns
    shapes_hard.ensure_shapes(tmp_path, image_size=64, split_sizes=HARD_SPLITS)
    assert annotation_path(tmp_path, "test").stat().st_mtime_ns == before
    assert json.loads(annotation_path(tmp_path, "test").read_text())["info"]["generator"]["level"] == "hard"


def test_hard_scenes_hold_two_to_six_shapes_in_counted_groups_on_textured_backgrounds(hard_root):
    images = json.loads(annotation_path(hard_root, "train").read_text())["images"]
    images += [{"scene": scene} for scene, _ in hard_examples(300)]
    assert {len(image["scene"]) for image in images} == {2, 3, 4, 5, 6}
    counts = [Counter((s["colour"], s["kind"]) for s in image["scene"]) for image in images]
    assert {len(count) for count in counts} == {1, 2, 3} and max(max(count.values()) for count in counts) == 6
    assert {image["background"]["kind"] for image in images if "background" in image} == {
        "gradient",
        "stripes",
        "noise",
    }
    for image in images:
        for a, b in itertools.combinations(image["scene"], 2):  # no two shapes overlap
            assert abs(a["x"] - b["x"]) > a["half"] + b["half"] or abs(a["y"] - b["y"]) > a["half"] + b["half"]


def test_every_hard_caption_names_exactly_the_shapes_of_its_scene_with_their_counts():
    for scene, captions in hard_examples(500):
        assert len(set(captions)) == 5
        assert all(shapes_hard.caption_matches_scene(caption, scene) for caption in captions), captions


def test_hard_captions_are_written_as_people_write_them():
    captions = [caption for _, captions in hard_examples(300) for caption in captions]
    assert all(caption[0].isupper() and caption.endswith(".") for caption in captions)
    share = {
        word: sum(word in caption for caption in captions) / len(captions)
        for word in ("two ", "three ", "There's", "We're", "-", ", ", ":")
    }
    assert all(value > 0.02 for value in share.values()), share
    assert 0.1 < sum(caption.startswith("There") for caption in captions) / len(captions) < 0.3  # varied openings


def test_most_hard_captions_name_the_most_numerous_group_first_but_not_all():
    firsts = []  # per caption of a scene whose groups differ in count: is its first group the most numerous one?
    for scene, captions in hard_examples(300):
        counts = sorted((group["count"] for group in shapes_hard.groups_of(scene)), reverse=True)
        if len(counts) > 1 and counts[0] > counts[1]:
            firsts += [next(iter(shapes_hard.named_shapes(c).values())) == counts[0] for c in captions]
    assert len(firsts) > 300 and 0.6 < sum(firsts) / len(firsts) < 0.9  # version 1, in uniformly random order: 0.36


def test_hard_captions_tokenize_to_the_expected_ptb_words():
    assert ptb_tokenize("There's a large red circle.") == "there 's a large red circle"
    assert ptb_tokenize("Two green triangles and a blue square, side-by-side.") == (
        "two green triangles and a blue square side-by-side"
    )
    assert ptb_tokenize("A purple diamond in the top-left corner, with two blue squares.") == (
        "a purple diamond in the top-left corner with two blue squares"
    )
    words = Counter(word for _, captions in hard_examples(300) for c in captions for word in ptb_tokenize(c).split())
    assert {"'s", "we", "'re", "top-left", "bottom-right", "left-hand", "side-by-side"} <= set(words)
    assert not set(words) & {".", ",", ":", "there's", "we're", "left", "hand", "by"}  # split and kept as PTB does
    assert len(words) < 80  # a small vocabulary: the difficulty is in the images, not the words


def test_hard_grounded_accuracy_understands_counts_and_plurals():
    scene = [{"colour": "green", "kind": "triangle"}] * 2 + [{"colour": "blue", "kind": "square"}]
    right = [
        "Two green triangles and a blue square, side-by-side.",
        "there 's a small blue square and two large green triangles",  # tokenized, as a model writes it
        "Three shapes: one blue square, and two green triangles.",
        "A green triangle, a blue square and a green triangle.",
    ]
    wrong = [
        "Three green triangles and a blue square.",  # a wrong count
        "A green triangle and a blue square.",
        "Two triangles and a blue square.",  # no colour
        "Two green triangles, a blue square and a red circle.",  # a shape too many
        "Two green triangles and two blue squares.",
    ]
    assert all(shapes_hard.caption_matches_scene(caption, scene) for caption in right)
    assert not any(shapes_hard.caption_matches_scene(caption, scene) for caption in wrong)
    captions = dict(enumerate(right + wrong))
    assert shapes_hard.grounded_accuracy(captions, dict.fromkeys(captions, scene)) == len(right) / len(captions)


# --------------------------------------------------------------------------------------- the datamodule's check
def captions_of(root: Path, split: str) -> dict:
    data = json.loads(annotation_path(root, split).read_text())
    return {a["image_id"]: a["caption"] for a in data["annotations"]}  # one reference caption per image


@pytest.mark.parametrize("level", ["basic", "hard"])
def test_check_captions_scores_shapes_captions_against_their_scenes(level, shapes_root, hard_root):
    root = {"basic": shapes_root, "hard": hard_root}[level]
    data = CaptionDataModule(dataset="shapes", root=str(root), shapes_level=level, shapes_image_size=64)
    captions = captions_of(root, "test")
    scores = data.check_captions("test", captions)
    assert scores["grounded_accuracy"] == 1.0
    if level == "basic":  # its captions place shapes, and the references place them right
        assert scores["position_accuracy"] == 1.0 and scores["position_claims"] > 0
    half_wrong = {
        image_id: "An empty picture." if n % 2 else caption for n, (image_id, caption) in enumerate(captions.items())
    }
    assert data.check_captions("test", half_wrong)["grounded_accuracy"] == 0.5


def test_check_captions_is_empty_for_a_dataset_without_ground_truth():
    annotations = require(COCO_MINI / "annotations" / "captions_val2017_subset159.json")
    data = CaptionDataModule(
        dataset="coco", annotations={"test": str(annotations)}, images={"test": str(COCO_MINI / "val2017")}
    )
    data.setup("test")
    captions = {record.image_id: "a red circle" for record in data.datasets["test"].records}
    assert data.check_captions("test", captions) == {}


def test_hard_level_is_written_under_its_own_folder_beside_the_basic_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sizes = {"train": 4, "val": 2, "test": 2}
    for level in ("basic", "hard"):
        CaptionDataModule(
            dataset="shapes", shapes_level=level, shapes_image_size=32, shapes_split_sizes=sizes
        ).prepare_data()
    generators = {
        path.parts[1]: json.loads(path.read_text())["info"]["generator"]
        for path in Path("data").glob("*/annotations/captions_val.json")
    }
    assert generators["shapes"]["version"] == 2 and "level" not in generators["shapes"]
    assert generators["shapes_hard"]["level"] == "hard"
