"""The model card (``README.md``) of an ssa checkpoint: YAML front matter for the Hub, then what the
checkpoint is, how to load it and, for converted weights, the authors' checkpoint it came from."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from ssa.config import SSAConfig
from ssa.version import __version__

__all__ = ["render_model_card", "clip_base_model", "PAPER_TITLE", "PROJECT_URL", "CARD_TAGS"]

PAPER_TITLE = "Semantic and Sequential Alignment for Referring Video Object Segmentation"
PROJECT_URL = "https://github.com/tavarich/SSA"
CARD_TAGS = ["referring-video-object-segmentation", "video-segmentation", "ssa", "pytorch"]
WEIGHTS_FILE = "model.safetensors"  # ssa.hub.WEIGHTS_NAME


def clip_base_model(config: SSAConfig) -> str | None:
    """The Hub repo of open_clip's CLIP weights named by the config (``base_model``), or None."""
    if not config.clip_pretrained or config.clip_config is not None or not config.clip_model:
        return None
    import open_clip

    try:
        cfg = open_clip.get_pretrained_cfg(config.clip_model, config.clip_pretrained)
    except Exception:  # unknown model/tag: the card simply has no base_model
        return None
    hf_hub = (cfg or {}).get("hf_hub") or ""
    return hf_hub.rstrip("/") or None


def render_model_card(
    config: SSAConfig,
    *,
    weights: Literal["trainable", "full"],
    repo_id: str,
    num_parameters: int | None = None,
    num_trainable: int | None = None,
    num_saved: int | None = None,
    source: Mapping[str, Any] | None = None,
) -> str:
    """The text of a checkpoint's ``README.md``: YAML front matter for the Hub, then a short body.

    ``source``, for weights converted from the authors' release (``ssa convert``), adds a section naming
    it: ``checkpoint`` (file name), ``sha256``, and optionally ``dataset`` (e.g. "MeViS"), ``benchmark``,
    ``jf`` (the paper's J&F) and ``note`` (a sentence).
    """
    from huggingface_hub import ModelCardData

    base_model = clip_base_model(config)
    data = ModelCardData(
        library_name="ssa", tags=list(CARD_TAGS), base_model=base_model, license="apache-2.0",
        pipeline_tag="mask-generation",
    )
    if config.clip_config is not None:
        clip = "a small open_clip CLIP built from an explicit config (tests / demo)"
    else:
        clip = f"open_clip `{config.clip_model}`"
    clip += f", weights `{config.clip_pretrained}`" if config.clip_pretrained else ", random weights"
    if weights == "trainable":
        stored = (
            "trainable weights only: the frozen CLIP is loaded from "
            f"{f'`{base_model}`' if base_model else 'open_clip'} at load time"
        )
    else:
        stored = "all weights, the CLIP included"

    def count(n: int | None) -> str:
        return "n/a" if n is None else f"{n:,} ({n / 1e6:.1f}M)"

    body = f"""
# SSA: {config.preset or "custom configuration"}

Referring video object segmentation with **Semantic and Sequential Alignment** (SSA): given a video and
a sentence, the model segments the object(s) the sentence refers to in every frame.

* Paper: *{PAPER_TITLE}* (CVPR 2025)
* Code: {PROJECT_URL}
* Library: `ssa`, a PyTorch SDK for referring video object segmentation

## This checkpoint

| | |
|---|---|
| preset | `{config.preset or "custom"}` |
| CLIP | {clip} |
| parameters | {count(num_parameters)} |
| trainable parameters | {count(num_trainable)} |
| stored in `{WEIGHTS_FILE}` | {count(num_saved)}, {stored} |
| ssa version | {__version__} |

## Usage

```python
from ssa import SSAPipeline

pipe = SSAPipeline.from_pretrained("{repo_id}")
```

or the bare network:

```python
from ssa import SSAModel

model = SSAModel.from_pretrained("{repo_id}")
out = model(frames, "the cat jumping away")   # frames: (T, 3, H, W), CLIP-normalised
```
"""
    if source is not None:
        body += _source_section(source)
    return f"---\n{data.to_yaml()}\n---\n{body}"


def _source_section(source: Mapping[str, Any]) -> str:
    """The model card's section on the authors' checkpoint the weights were converted from."""
    rows = [("source checkpoint", f"`{source.get('checkpoint', 'unknown')}`")]
    if source.get("sha256"):
        rows.append(("sha256", f"`{source['sha256']}`"))
    if source.get("dataset"):
        rows.append(("dataset", str(source["dataset"])))
    if source.get("jf") is not None:
        where = f" on {source['benchmark']}" if source.get("benchmark") else ""
        rows.append(("J&F reported in the paper", f"{source['jf']}{where}"))
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    note = f"\n{source['note']}\n" if source.get("note") else ""
    return f"""
## Converted from the authors' checkpoint

These are the weights the authors released ({PROJECT_URL}), converted with `ssa convert`
(`ssa.convert_official`): the same network and tensors under ssa's names.

| | |
|---|---|
{table}
{note}"""
