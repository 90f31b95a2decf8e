"""Every YAML file in configs/ parses into the CLI's full configuration."""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import ROOT, run_cli

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_there_are_configs_for_the_main_job_and_real_data():
    assert {"shapes.yaml", "shapes_hard.yaml", "coco.yaml", "flickr8k.yaml"} <= {path.name for path in CONFIGS}


@pytest.mark.parametrize("config", CONFIGS, ids=[path.name for path in CONFIGS])
def test_config_parses_and_links_model_values_into_the_data(config):
    from captioning.training.cli import CaptioningCLI

    with pytest.raises(SystemExit) as done:
        CaptioningCLI(args=["fit", "--config", str(config), "--print_config"])
    assert done.value.code in (0, None)
    written = yaml.safe_load(config.read_text())
    assert written["data"]["dataset"] in ("shapes", "coco", "karpathy", "folder")
    # an SCST config takes its architecture, encoder included, from the checkpoint given as model.init_from
    assert written["model"].get("encoder") or ("init_from" in written["model"] and written["model"]["scst"])


def test_print_config_shows_the_resolved_config_with_linked_values():
    result = run_cli("fit", "--config", str(ROOT / "configs" / "shapes.yaml"), "--print_config")
    assert result.returncode == 0, result.stderr[-2000:]
    printed = yaml.safe_load(result.stdout)
    assert printed["model"]["encoder"] == "test_resnet" and printed["trainer"]["max_epochs"] == 16
    assert printed["checkpoint"]["monitor"] == "val/CIDEr" and printed["last_checkpoint"]["filename"] == "last"
