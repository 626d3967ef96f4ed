"""Shared fixtures: a seeded tiny model, and the paper-scale model built once per session."""

from __future__ import annotations

import pytest
import torch

from ssa import SSAConfig
from ssa.modeling.model import SSAModel


def build(preset: str, seed: int = 0, **overrides) -> SSAModel:
    torch.manual_seed(seed)
    if preset != "ssa-tiny":
        overrides.setdefault("clip_pretrained", None)
    return SSAModel(SSAConfig.from_preset(preset, **overrides)).eval()


@pytest.fixture(scope="module")
def tiny_model() -> SSAModel:
    return build("ssa-tiny")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """``build("ssa-tiny")`` saved with ``save_pretrained``: a local directory for ``--model``."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    build("ssa-tiny").save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def large_model() -> SSAModel:
    """The paper's network with random CLIP weights (no download)."""
    return build("ssa-convnext-large")


def random_frames(t: int, h: int, w: int, b: int | None = None, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (t, 3, h, w) if b is None else (b, t, 3, h, w)
    return torch.randn(shape, generator=g)
