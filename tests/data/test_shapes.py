import json
import random
from collections import Counter

from captioning.data.shapes import annotation_path, caption_matches_scene, describe, ensure_shapes, random_scene


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
