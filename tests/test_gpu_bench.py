"""The parts of `benchmarks/gpu_bench.py` that a CPU can check: peaks by exact device name, the step's host counts,
generated photos through the loader, and eager figures that still print when compiling fails."""

from __future__ import annotations

import importlib.util

import pytest

from captioning.model import CaptioningModel
from tests.conftest import ROOT

_spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "benchmarks" / "gpu_bench.py")
gpu_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_bench)


def test_peaks_are_looked_up_by_the_exact_device_name():
    assert gpu_bench.peak_for("NVIDIA H100 80GB HBM3") == pytest.approx(989.4)  # SXM
    assert gpu_bench.peak_for("NVIDIA H100 PCIe") == pytest.approx(756.0)  # not the SXM's peak
    assert gpu_bench.peak_for("NVIDIA H100 NVL") == pytest.approx(835.5)
    assert gpu_bench.peak_for("NVIDIA H200") == pytest.approx(989.4)
    assert gpu_bench.peak_for("NVIDIA A100-SXM4-80GB") == gpu_bench.peak_for("NVIDIA A100 80GB PCIe") == 312.0
    assert gpu_bench.peak_for("NVIDIA H100 SomethingNew") is None  # unknown: --peak-tflops, never a guess


def test_a_compile_failure_is_reported_and_the_eager_figures_still_print(monkeypatch, capsys, one_thread):
    def refuse(self, **options):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(CaptioningModel, "compile_parts", refuse)
    args = ["--device", "cpu", "--steps", "1", "--warmup", "0", "--batch-size", "1", "--captions", "2"]
    args += ["--encoder", "test_vit", "--vocab-size", "100", "--workers", "0", "--loader-batches", "2"]
    gpu_bench.main(args)
    out = capsys.readouterr().out
    assert "eager " in out and "0 host syncs, 0 mask indexings" in out
    assert "compiled  failed: RuntimeError: no compiler here" in out
    assert "data loader:" in out and "torch.uint8 pixels" in out  # generated photos, 8-bit pixels
