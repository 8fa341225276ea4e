"""Every configuration in examples/ loads (no misspelt field: OmegaConf refuses
unknown keys), names a registered model, and that model builds at the
configuration's input size with its channels."""
from __future__ import annotations

from pathlib import Path

import pytest

import models
from toolchain.core.config import load_config

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


def test_the_documented_settings_are_there():
    names = {p.name for p in EXAMPLES}
    assert {"ddd17-tiny.yaml", "ddd17-small.yaml", "ddd17-paper-64.yaml", "ddd17-deeplab-gpu.yaml",
            "ddd17-fcn-gpu.yaml", "ddd17-full.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_config_loads_and_its_model_builds(path):
    cfg = load_config(path)
    assert cfg.model.name in models.names()
    if cfg.data.dataset == "voc":
        channels, classes = 3, 21
    else:
        channels, classes = (6 if cfg.data.channels == "all" else 2), 6
    model = models.build(cfg.model.name, channels, classes, (cfg.data.height, cfg.data.width))
    assert sum(p.numel() for p in model.parameters()) > 0
