"""Fingerprints: content digests that tell whether two runs used the same model, data and options.

:func:`fingerprint` is the one digest of ssa (SHA-256 over a canonical encoding); :func:`model_fingerprint`
applies it to a model's config and weights. An interrupted evaluation records them with its partial
results, and a resumed one refuses results of another model, data or options
(:func:`ssa.eval.evaluate`).
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ssa.modeling.model import SSAModel

__all__ = ["fingerprint", "model_fingerprint"]

_BLOCK = 1 << 20


def fingerprint(*parts: Any) -> str:
    """The SHA-256 hex digest of ``parts``, each one of: ``None``, a bool, int, float or str; a list or
    tuple of parts; a mapping (keys as strings, in sorted order) of parts; a torch tensor (its dtype,
    shape and bytes, wherever it lives); a :class:`pathlib.Path` of a file (its bytes, read in blocks).
    Equal parts give equal digests; a different type, order or value gives another."""
    digest = hashlib.sha256()
    for part in parts:
        _feed(digest, part)
    return digest.hexdigest()


def model_fingerprint(model: SSAModel) -> str:
    """The fingerprint of a model's network and weights: its config (less the informational ``preset``)
    and every state-dict tensor, the frozen CLIP included. About a second per GB of weights."""
    config = {k: v for k, v in model.config.to_dict().items() if k != "preset"}
    return fingerprint(config, model.state_dict())


def _feed(digest: Any, value: Any) -> None:
    torch = sys.modules.get("torch")
    if value is None or isinstance(value, bool):
        digest.update(f"<{value!r}>".encode())
    elif isinstance(value, int):
        digest.update(f"<i{value}>".encode())
    elif isinstance(value, float):
        digest.update(f"<f{value.hex() if math.isfinite(value) else value!r}>".encode())
    elif isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
        digest.update(f"<s{len(data)}>".encode())
        digest.update(data)
    elif isinstance(value, (list, tuple)):
        digest.update(f"<l{len(value)}>".encode())
        for item in value:
            _feed(digest, item)
    elif isinstance(value, Mapping):
        items = sorted((str(k), v) for k, v in value.items())
        digest.update(f"<m{len(items)}>".encode())
        for key, item in items:
            _feed(digest, key)
            _feed(digest, item)
    elif torch is not None and isinstance(value, torch.Tensor):
        tensor = value.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"<t{tensor.dtype}{tuple(value.shape)}>".encode())
        digest.update(tensor.view(torch.uint8).numpy().data)
    elif isinstance(value, Path):
        digest.update(f"<p{os.path.getsize(value)}>".encode())
        with open(value, "rb") as f:
            for block in iter(lambda: f.read(_BLOCK), b""):
                digest.update(block)
    else:
        raise TypeError(f"cannot fingerprint a {type(value).__name__}")
