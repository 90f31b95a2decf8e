"""A resumed run's curves: rows logged after its checkpoint are dropped by rewriting metrics.csv atomically."""

from __future__ import annotations

import pytest

import captioning.files
from captioning.training.run_folder import _ContinuingWriter

CURVES = "epoch,step,train/loss\n0,1,2.0\n0,2,1.5\n0,3,1.2\n"


def test_drop_after_keeps_the_rows_before_the_step_and_leaves_no_temporary_file(tmp_path):
    (tmp_path / "metrics.csv").write_text(CURVES)
    _ContinuingWriter(str(tmp_path)).drop_after(2)
    assert (tmp_path / "metrics.csv").read_text().splitlines() == ["epoch,step,train/loss", "0,1,2.0"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]


def test_a_rewrite_killed_midway_leaves_the_old_curves_whole(tmp_path, monkeypatch):
    (tmp_path / "metrics.csv").write_text(CURVES)
    writer = _ContinuingWriter(str(tmp_path))

    def killed(handle):  # the bytes were written, the process dies before the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(captioning.files.os, "fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        writer.drop_after(2)
    assert (tmp_path / "metrics.csv").read_text() == CURVES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]
