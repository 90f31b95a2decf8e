"""What a cross-entropy step asks of the host, counted by `benchmarks/step_audit.py` over real Lightning steps of the
tiny model: no host sync and no boolean-mask indexing between logging steps, and a non-finite guard of a few aten
calls whatever the number of gradients."""

from __future__ import annotations

import pytest

from tests.conftest import TINY_MODEL, TINY_SPLITS
from tests.training.audit import step_audit


def tiny_config(shapes_root) -> dict:
    data = dict(root=str(shapes_root), shapes_split_sizes=TINY_SPLITS, shapes_image_size=64, min_word_frequency=1,
                batch_size=16, num_workers=0)  # fmt: skip
    trainer = {"log_every_n_steps": 50, "gradient_clip_val": 1.0}
    return {"model": {**TINY_MODEL, "warmup_steps": 1}, "data": data, "trainer": trainer}


@pytest.mark.parametrize("progress", ["tqdm", "line"])
def test_a_training_step_reads_nothing_back_from_the_device_between_logging_steps(shapes_root, progress, one_thread):
    args = step_audit.parse_args(["--warmup", "2", "--steps", "3", "--progress", progress, "--explain"])
    counts = step_audit.audit_steps(tiny_config(shapes_root), args)
    assert counts["steps_counted"] == 3
    assert counts["syncs"] == 0, counts["sync_sources"]
    assert counts["mask_indexings"] == 0
    assert 0 < counts["guard_aten_calls"] <= 10


def test_the_guard_costs_the_same_few_calls_with_three_times_the_gradients(one_thread):
    small = step_audit.guard_cost("test_convnext", 32, 1, 64)
    large = step_audit.guard_cost("test_vit", 64, 16, 64)
    assert large["gradients"] > 3 * small["gradients"]
    assert large["guard_aten_calls"] == small["guard_aten_calls"] <= 10
    assert large["guard_syncs"] == small["guard_syncs"] == 0
