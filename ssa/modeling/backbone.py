"""Frozen CLIP encoders, Eq. (2): (F_v, F_s, F_w) = Φ_clip(I, E).

The visual tower is open_clip's timm ConvNeXt trunk (strides 4, 8, 16, 32). The model runs its stem
and stage 0 once per frame (:meth:`FrozenCLIP.encode_stem`, independent of the expression) and the
later stages one by one (:meth:`FrozenCLIP.run_stage`) with an adapter between two stages. The text
tower gives per-token features F_w (projected into the joint CLIP space) for the first ``max_words``
token positions, masked where the token is padding (id 0), and the sentence feature F_s (the projected
end-of-text token of the full context, i.e. exactly ``CLIP.encode_text``).

CLIP is frozen: its parameters never require grad. As in the official training, the frozen visual
trunk follows ``.train()``, so its stochastic depth (open_clip's ``timm_drop_path``: 0.1 for the paper
preset, none for ``ssa-tiny``) is active in training; ConvNeXt has no batch norm, so nothing else
changes. The frozen text tower stays in eval mode. The text pass and the stem run under ``torch.no_grad``;
stages 1-3 record the graph when gradients are enabled, so that the adapters before them train.
Fine-tuning can unfreeze it, or its visual tower only (:meth:`FrozenCLIP.unfreeze`, used for the tiny
demo model, whose CLIP has no pretrained weights).

CPU inference runs the stages whose MLP activation is large (stages 0 and 1 at 448 px) through the same
weights in chunks of tokens (:func:`_convnext_blocks_in_token_chunks`): the same sums up to rounding,
without the fresh 30-70 MB allocations per block whose page faults cost more than the arithmetic.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import open_clip
import timm
import torch
import torch.nn.functional as F
from timm.layers.activations import GELU as TimmGELU
from timm.models import is_model, register_model
from timm.models.convnext import ConvNeXt
from torch import Tensor, nn

from ssa.config import SSAConfig
from ssa.expressions import expression_problem, validate_expressions

__all__ = ["FrozenCLIP", "TextFeatures", "validate_expressions", "expression_problem"]

logger = logging.getLogger(__name__)


@dataclass
class TextFeatures:
    """CLIP text features of E expressions: F_w of the first L = ``max_words`` token positions."""

    words: Tensor  # (E, L, D) F_w, projected per-token features
    word_mask: Tensor  # (E, L) bool, True where the token is not padding (start .. end-of-text)
    sentence: Tensor  # (E, D) F_s, equals CLIP.encode_text
    expressions: list[str]

    def __len__(self) -> int:
        return self.sentence.shape[0]

    def select(self, index: Tensor) -> TextFeatures:
        """The features of expressions ``index`` (a 1-D long tensor), in that order."""
        return TextFeatures(
            self.words[index], self.word_mask[index], self.sentence[index],
            [self.expressions[i] for i in index.tolist()],
        )


class FrozenCLIP(nn.Module):
    """open_clip CLIP (ConvNeXt visual trunk + text transformer), frozen.

    ``stage_channels`` are C_1..C_4 of the trunk, ``text_dim`` is the width of F_w and F_s.
    """

    strides = (4, 8, 16, 32)

    def __init__(self, config: SSAConfig) -> None:
        super().__init__()
        if config.clip_config is not None:
            clip_cfg = dict(config.clip_config)
            if config.clip_trunk is not None:
                vision = dict(clip_cfg["vision_cfg"])
                vision["timm_model_name"] = convnext_trunk(**config.clip_trunk)
                clip_cfg["vision_cfg"] = vision
            self.model_name = None
        else:
            clip_cfg = open_clip.get_model_config(config.clip_model)
            if clip_cfg is None:
                raise ValueError(
                    f"unknown open_clip model {config.clip_model!r} (see open_clip.list_models())"
                )
            self.model_name = config.clip_model
        vision_cfg = clip_cfg.get("vision_cfg", {})
        if "convnext" not in vision_cfg.get("timm_model_name", ""):
            raise ValueError(
                "SSA needs a ConvNeXt CLIP (multi-scale features); "
                f"got vision tower {vision_cfg.get('timm_model_name') or 'ViT'}"
            )
        self.clip = open_clip.CLIP(**clip_cfg)
        self.tokenizer = open_clip.SimpleTokenizer(context_length=self.clip.context_length)
        trunk = self.clip.visual.trunk
        self.stage_channels: tuple[int, ...] = tuple(info["num_chs"] for info in trunk.feature_info)
        if len(self.stage_channels) != 4:
            raise ValueError(f"expected a 4-stage ConvNeXt trunk, got {len(self.stage_channels)} stages")
        self.text_dim: int = int(self.clip.text_projection.shape[1])
        self.max_words = config.max_words
        if self.max_words > self.clip.context_length:
            raise ValueError(f"max_words ({self.max_words}) exceeds CLIP's context "
                             f"({self.clip.context_length})")
        self.visual_frozen = True
        self.text_frozen = True
        for p in self.clip.parameters():
            p.requires_grad_(False)
        self.clip.eval()
        if config.clip_pretrained:
            self.load_pretrained(config.clip_pretrained)

    # -- frozen behaviour --------------------------------------------------------------------------
    @property
    def frozen(self) -> bool:
        """True while neither tower is trainable."""
        return self.visual_frozen and self.text_frozen

    def _text_modules(self) -> list[nn.Module]:
        return [self.clip.token_embedding, self.clip.transformer, self.clip.ln_final]

    def _text_parameters(self) -> list[nn.Parameter]:
        params = [p for m in self._text_modules() for p in m.parameters()]
        return params + [self.clip.positional_embedding, self.clip.text_projection]

    def train(self, mode: bool = True) -> FrozenCLIP:
        """The visual tower follows ``mode`` (the official training keeps the frozen trunk's drop-path
        active); a frozen text tower stays in eval mode."""
        super().train(mode)
        if self.text_frozen:
            for m in self._text_modules():
                m.eval()
        return self

    def unfreeze(self, text: bool = True) -> FrozenCLIP:
        """Make CLIP trainable (with ``text=False`` its visual tower only): its parameters require grad,
        it follows ``.train()`` and its passes record gradients. Irreversible for this instance (the
        optimiser may hold its parameters)."""
        self.visual_frozen = False
        self.text_frozen = self.text_frozen and not text
        for p in (self.clip if text else self.clip.visual).parameters():
            p.requires_grad_(True)
        self.train(self.training)
        return self

    def _grad(self, frozen: bool) -> torch.set_grad_enabled:
        return torch.set_grad_enabled(torch.is_grad_enabled() and not frozen)

    def load_pretrained(self, tag: str, cache_dir: str | None = None) -> None:
        """Load open_clip's pretrained weights ``tag`` for this CLIP model (fetched from the Hub)."""
        if self.model_name is None:
            raise ValueError("pretrained CLIP weights need a named clip_model, not an explicit clip_config")
        pretrained_cfg = open_clip.get_pretrained_cfg(self.model_name, tag)
        if not pretrained_cfg:
            raise ValueError(
                f"open_clip has no pretrained tag {tag!r} for {self.model_name!r}; "
                f"known tags: {open_clip.list_pretrained_tags_by_model(self.model_name)}"
            )
        try:
            path = open_clip.download_pretrained(pretrained_cfg, cache_dir=cache_dir)
        except Exception as err:  # network, offline mode, missing cache
            raise RuntimeError(
                f"could not fetch CLIP weights {self.model_name}/{tag} from the Hugging Face Hub "
                f"({pretrained_cfg.get('hf_hub')}): {err}. Connect to the internet once to fill the "
                "cache, or build the model with clip_pretrained=None and load a full SSA checkpoint."
            ) from err
        open_clip.load_checkpoint(self.clip, path)
        logger.info("loaded CLIP weights %s/%s", self.model_name, tag)

    # -- text --------------------------------------------------------------------------------------
    def tokenize(self, expressions: str | Sequence[str]) -> tuple[Tensor, list[str]]:
        """BPE tokens (E, L) trimmed to the longest expression (at least ``max_words``), and the cleaned
        expressions.

        Expressions longer than the context (77 tokens) are truncated with a warning.
        """
        texts = validate_expressions(expressions)
        context = self.clip.context_length
        for text in texts:
            n_tokens = len(self.tokenizer.encode(text)) + 2  # + start and end-of-text
            if n_tokens > context:
                warnings.warn(
                    f"expression has {n_tokens} tokens, more than CLIP's context of {context}; "
                    f"it is truncated: {text[:60]!r}...",
                    stacklevel=3,
                )
        tokens = self.tokenizer(texts)  # (E, 77), end-of-text has the largest id
        length = max(int(tokens.argmax(dim=-1).max()) + 1, self.max_words)
        # Causal attention: positions after the longest sentence never influence earlier ones, so
        # trimming the context gives identical features at lower cost.
        return tokens[:, :length], texts

    def encode_text(self, expressions: str | Sequence[str]) -> TextFeatures:
        """F_w (per-token) and F_s (sentence) features, Eq. (2)."""
        with self._grad(self.text_frozen):
            return self._encode_text(expressions)

    def _encode_text(self, expressions: str | Sequence[str]) -> TextFeatures:
        return self._encode_tokens(*self.tokenize(expressions))

    def _encode_tokens(self, tokens: Tensor, texts: list[str]) -> TextFeatures:
        """F_w and F_s of BPE ``tokens`` (E, L) from :meth:`tokenize` (end-of-text has the largest id)."""
        device = self.clip.token_embedding.weight.device
        tokens = tokens.to(device)
        length = tokens.shape[1]
        x = self.clip.token_embedding(tokens) + self.clip.positional_embedding[:length]
        mask = self.clip.attn_mask[:length, :length] if self.clip.attn_mask is not None else None
        x = self.clip.transformer(x, attn_mask=mask)
        x = self.clip.ln_final(x)  # (E, L, width)
        eot = tokens.argmax(dim=-1)  # (E,)
        sentence = x[torch.arange(x.shape[0], device=device), eot] @ self.clip.text_projection  # (E, D)
        words = x[:, :self.max_words] @ self.clip.text_projection  # (E, max_words, D)
        word_mask = tokens[:, :self.max_words] != 0  # (E, max_words)
        return TextFeatures(words=words, word_mask=word_mask, sentence=sentence, expressions=texts)

    # -- vision ------------------------------------------------------------------------------------
    def encode_stem(self, images: Tensor) -> Tensor:
        """Stem and stage 0 of CLIP-normalised images (B, 3, H, W) whose sides are multiples of 32:
        (B, C_1, H/4, W/4), the only part of the visual pass that does not depend on the expression."""
        trunk = self.clip.visual.trunk
        with self._grad(self.visual_frozen):
            return _run_convnext_stage(trunk.stages[0], trunk.stem(images))

    def run_stage(self, index: int, x: Tensor) -> Tensor:
        """CLIP stage ``index`` (1..3) on the (adapted) output of the stage before it. Records the graph
        when gradients are enabled (frozen weights, but the adapters before it train)."""
        if not 1 <= index <= 3:
            raise ValueError(f"stage index must be 1, 2 or 3, got {index}")
        return _run_convnext_stage(self.clip.visual.trunk.stages[index], x)

    def encode_image(self, images: Tensor) -> list[Tensor]:
        """The four plain stage features F_v^1..F_v^4 (no adapters), each (B, C_i, H/s_i, W/s_i)."""
        with self._grad(self.visual_frozen):
            return self._encode_image(images)

    def _encode_image(self, images: Tensor) -> list[Tensor]:
        """:meth:`encode_image` recording gradients as the caller's mode says, frozen or not."""
        trunk = self.clip.visual.trunk
        x = trunk.stem(images)
        features = []
        for stage in trunk.stages:
            x = _run_convnext_stage(stage, x)
            features.append(x)
        return features


#: Above this many bytes, a block's MLP activation (tokens x 4C) runs in token chunks on the CPU. glibc
#: maps every block above 32 MiB afresh from the system, and faulting those pages in (~0.3 ms per MB
#: here) cost more than the block's arithmetic at stride 4 and 8; a chunk's buffers are reused instead.
_CHUNKED_MLP_BYTES = 32 << 20
_TOKEN_CHUNK = 1024


def _run_convnext_stage(stage: nn.Module, x: Tensor) -> Tensor:
    """A timm ConvNeXt stage on ``x`` (B, C, H, W): the stage itself, or, for CPU inference where its
    MLP activation is large, the same sums in token chunks (:func:`_convnext_blocks_in_token_chunks`)."""
    if (torch.is_grad_enabled() or stage.training or x.device.type != "cpu" or x.dtype != torch.float32
            or torch.is_autocast_enabled("cpu") or not all(_plain_block(b) for b in stage.blocks)):
        return stage(x)
    x = stage.downsample(x)
    b, _, h, w = x.shape
    hidden = stage.blocks[0].mlp.fc1.out_features if len(stage.blocks) else 0
    if b * h * w * hidden * x.element_size() <= _CHUNKED_MLP_BYTES:
        return stage.blocks(x)
    return _convnext_blocks_in_token_chunks(stage.blocks, x)


def _plain_block(block: nn.Module) -> bool:
    """Whether a ConvNeXt block is the paper preset's kind: depthwise conv → LayerNorm over channels
    (channels last) → Linear → exact GELU → Linear → layer scale γ → + input, nothing else."""
    mlp = getattr(block, "mlp", None)
    return (getattr(block, "use_conv_mlp", True) is False
            and isinstance(getattr(block, "conv_dw", None), nn.Conv2d)
            and isinstance(getattr(block, "norm", None), nn.LayerNorm)
            and isinstance(getattr(block, "shortcut", None), nn.Identity)
            and isinstance(getattr(mlp, "fc1", None), nn.Linear) and mlp.fc1.bias is not None
            and isinstance(getattr(mlp, "fc2", None), nn.Linear) and mlp.fc2.bias is not None
            and isinstance(getattr(mlp, "norm", None), nn.Identity)
            and (isinstance(getattr(mlp, "act", None), TimmGELU)  # F.gelu, exact
                 or isinstance(getattr(mlp, "act", None), nn.GELU) and mlp.act.approximate == "none"))


def _convnext_blocks_in_token_chunks(blocks: nn.Module, x: Tensor) -> Tensor:
    """ConvNeXt blocks (eval, no gradients) on ``x`` (B, C, H, W), the pointwise part in chunks of
    tokens: x ← x + γ·fc2(GELU(fc1(LN(dwconv(x))))), with γ folded into fc2 (γ∘(W₂h + b₂) =
    (γ∘W₂)h + γ∘b₂) and the residual added in place. The stage runs channels-last, so that a chunk of
    tokens is a contiguous (n, C) block. Returns (B, C, H, W) in channels-last memory, as timm's blocks
    do."""
    x = x.permute(0, 2, 3, 1).contiguous()  # (B, H, W, C), this function's own buffer
    c = x.shape[-1]
    tokens = x.view(-1, c)  # (B·H·W, C)
    for block in blocks:
        y = block.conv_dw(x.permute(0, 3, 1, 2))  # channels-last in and out
        y = y.permute(0, 2, 3, 1).reshape(-1, c)  # (B·H·W, C): a view when channels-last
        fc1, fc2, norm = block.mlp.fc1, block.mlp.fc2, block.norm
        w2, b2 = fc2.weight.t(), fc2.bias  # (4C, C), (C,)
        if block.gamma is not None:
            w2, b2 = w2 * block.gamma, b2 * block.gamma
        for s in range(0, tokens.shape[0], _TOKEN_CHUNK):
            hidden = F.layer_norm(y[s:s + _TOKEN_CHUNK], (c,), norm.weight, norm.bias, norm.eps)
            hidden = F.gelu(torch.addmm(fc1.bias, hidden, fc1.weight.t()))  # (n, 4C)
            tokens[s:s + _TOKEN_CHUNK].add_(b2).addmm_(hidden, w2)
    return x.permute(0, 3, 1, 2)



def convnext_trunk(depths: Sequence[int], dims: Sequence[int], ls_init_value: float = 1e-6) -> str:
    """The timm model name of a ConvNeXt trunk with these ``depths`` and ``dims`` (the block type of
    open_clip's ``convnext_large_d_320``), registered with timm on first use so that open_clip can build
    it from a ``vision_cfg``. No pretrained weights exist for it."""
    depths, dims = tuple(int(d) for d in depths), tuple(int(d) for d in dims)
    layer_scale = f"{ls_init_value:g}".replace(".", "p")  # timm reads a "." as a pretrained tag
    name = f"ssa_convnext_d{'-'.join(map(str, depths))}_w{'-'.join(map(str, dims))}_ls{layer_scale}"
    if is_model(name):
        return name

    def build(pretrained: bool = False, **kwargs: object) -> ConvNeXt:
        if pretrained:
            raise ValueError(f"no pretrained weights exist for the custom trunk {name}")
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(key, None)
        trunk = ConvNeXt(depths=depths, dims=dims, ls_init_value=ls_init_value, **kwargs)
        trunk.pretrained_cfg = trunk.default_cfg = {"pool_size": (7, 7)}
        return trunk

    build.__name__ = build.__qualname__ = name
    build.__module__ = __name__
    register_model(build)
    assert timm.is_model(name)
    return name
