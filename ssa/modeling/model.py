"""`SSAModel`: the whole network, in data-flow order.

    frames ──► frozen CLIP visual pass (Eq. 2) ──────────────┐   text-independent: encode_video()
    expressions ──► frozen CLIP text (F_w, F_s) ─────────────┤   encode_text()
                                                             ▼
    per frame:  adapters (Eq. 3-4) → pixel decoder → query generation (Eq. 5) → frame decoder
                                                                            decode_frames()
    per clip:   Hungarian trajectories → temporal enhancement (Eq. 6) → ensemble (Eq. 7)
                → video query decoder → masks = Q_emb^t · F_mask^t      decode_video()

``model(frames, expressions)`` runs all of it; the split methods let one visual pass serve several
expressions and let callers chunk the per-frame stages over time.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssa.config import SSAConfig
from ssa.modeling.adapter import SemanticAlignmentAdapter
from ssa.modeling.backbone import FrozenCLIP, TextFeatures
from ssa.modeling.frame_decoder import FrameDecoderOutput, FrameQueryDecoder
from ssa.modeling.motion import PixelMotionEncoder
from ssa.modeling.outputs import FrameOutput, SequenceOutput, SSAOutput, VisualFeatures
from ssa.modeling.pixel_decoder import PixelDecoder
from ssa.modeling.query_generation import InstanceQueryGenerator
from ssa.modeling.sequential_alignment import (
    MaskPositionEncoding,
    TemporalEnhancement,
    TrajectoryEnsemble,
    apply_order,
    hungarian_trajectories,
)
from ssa.modeling.video_decoder import VideoQueryDecoder

__all__ = ["SSAModel"]

Expressions = str | Sequence[str] | Sequence[str | Sequence[str]]

_SIZE_DIVISOR = 32


class SSAModel(nn.Module):
    """Semantic and Sequential Alignment network for referring video object segmentation."""

    def __init__(self, config: SSAConfig) -> None:
        super().__init__()
        if not isinstance(config, SSAConfig):
            raise TypeError(f"SSAModel expects an SSAConfig, got {type(config).__name__}")
        self.config = config
        c = config
        self.backbone = FrozenCLIP(c)
        channels, text_dim = self.backbone.stage_channels, self.backbone.text_dim
        self.adapters = (
            nn.ModuleList(SemanticAlignmentAdapter(ch, text_dim, c.adapter_dim) for ch in channels)
            if c.use_adapter else None
        )
        self.pixel_decoder = PixelDecoder(
            channels, hidden_dim=c.hidden_dim, mask_dim=c.mask_dim, num_layers=c.pixel_decoder_layers,
            num_heads=c.pixel_decoder_heads, num_points=c.pixel_decoder_points,
            ffn_dim=c.pixel_decoder_ffn_dim, dropout=c.dropout,
        )
        self.motion_encoder = PixelMotionEncoder(c.hidden_dim, c.mask_dim) if c.motion_features else None
        self.query_generator = InstanceQueryGenerator(
            channels[-1], text_dim, c.hidden_dim, c.num_queries, c.num_heads,
            bidirectional=c.bidirectional, dropout=c.dropout,
        )
        self.frame_decoder = FrameQueryDecoder(
            hidden_dim=c.hidden_dim, num_queries=c.num_queries, num_heads=c.num_heads,
            num_layers=c.frame_decoder_layers, ffn_dim=c.frame_decoder_ffn_dim, mask_dim=c.mask_dim,
            num_levels=3, dropout=c.dropout,
        )
        self.mask_position = MaskPositionEncoding(c.hidden_dim) if c.query_positions else None
        self.temporal_enhancement = (
            TemporalEnhancement(c.hidden_dim, c.num_heads, c.temporal_layers, c.temporal_kernel,
                                c.temporal_ffn_dim, c.dropout)
            if c.trajectory else None
        )
        self.ensemble = TrajectoryEnsemble(c.hidden_dim) if c.trajectory and c.ensemble else None
        self.video_decoder = VideoQueryDecoder(
            c.hidden_dim, text_dim, c.num_queries, c.num_heads, c.video_decoder_layers,
            c.video_decoder_ffn_dim, c.mask_dim, c.dropout, trajectory_masks=c.trajectory_masks,
        )

    # ------------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.backbone.clip.token_embedding.weight.device

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def parameter_breakdown(self) -> dict[str, dict[str, int]]:
        """Parameters per top-level module: ``{name: {"total": n, "trainable": m}}``."""
        rows = {}
        for name, module in self.named_children():
            params = list(module.parameters())
            rows[name] = {
                "total": sum(p.numel() for p in params),
                "trainable": sum(p.numel() for p in params if p.requires_grad),
            }
        return rows

    # -- checkpoints (ssa.hub) ------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike[str], *,
                        weights: Literal["auto", "trainable", "full"] = "auto", overwrite: bool = False,
                        model_card: bool = True) -> Path:
        """Write config.json, model.safetensors and README.md; see :func:`ssa.hub.save_pretrained`."""
        from ssa import hub

        return hub.save_pretrained(self, save_directory, weights=weights, overwrite=overwrite,
                                   model_card=model_card)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike[str] = "ssa-tiny-synthetic", *,
                        revision: str | None = None,
                        cache_dir: str | os.PathLike[str] | None = None, local_files_only: bool = False,
                        token: str | bool | None = None, device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None, strict: bool = True) -> SSAModel:
        """Load a bundled model, checkpoint directory or Hub repo (eval mode); see
        :func:`ssa.hub.load_pretrained`. The default is the bundled demo model ``ssa-tiny-synthetic``."""
        from ssa import hub

        return hub.load_pretrained(name_or_path, revision=revision, cache_dir=cache_dir,
                                   local_files_only=local_files_only, token=token, device=device,
                                   dtype=dtype, strict=strict)

    def push_to_hub(self, repo_id: str, *, private: bool = False, token: str | None = None,
                    commit_message: str = "Upload SSA model", revision: str | None = None,
                    weights: Literal["auto", "trainable", "full"] = "auto") -> str:
        """Upload this model to the Hub repo ``repo_id``; returns the commit URL. See
        :func:`ssa.hub.push_to_hub`."""
        from ssa import hub

        return hub.push_to_hub(self, repo_id, private=private, token=token, commit_message=commit_message,
                               revision=revision, weights=weights)

    # -- 1. frozen visual pass ------------------------------------------------------------------------
    def encode_video(self, frames: Tensor, previous: Tensor | None = None) -> VisualFeatures:
        """Frozen CLIP stage features of CLIP-normalised frames (T, 3, H, W) or clips (B, T, 3, H, W).

        Frames are zero-padded (bottom/right) to a multiple of 32. The result does not depend on any
        expression and can be reused for all of them. With ``motion_features`` the pixel motion features
        are computed here too; ``previous`` (3, H, W) or (B, 3, H, W), the frame before each clip (e.g.
        the last one of the previous chunk of a long video), gives the first frame its true temporal
        difference (ignored without ``motion_features``).
        """
        frames = _check_frames(frames)
        b, t, _, h, w = frames.shape
        ph, pw = -h % _SIZE_DIVISOR, -w % _SIZE_DIVISOR
        images = frames.reshape(b * t, 3, h, w).to(self.device)
        if ph or pw:
            images = F.pad(images, (0, pw, 0, ph))
        stages = self.backbone.encode_image(images)
        motion = None
        if self.motion_encoder is not None:
            if previous is not None:
                previous = previous[None] if previous.dim() == 3 else previous
                if previous.shape != (b, 3, h, w):
                    raise ValueError(f"previous frames must be (B, 3, H, W) = {(b, 3, h, w)} like the clips, "
                                     f"got {tuple(previous.shape)}")
                previous = F.pad(previous.to(images), (0, pw, 0, ph))
            motion = self.motion_encoder(images.reshape(b, t, 3, h + ph, w + pw), previous)
        return VisualFeatures(stages, b, t, (h, w), (h + ph, w + pw), motion)

    # -- 2. frozen text pass ----------------------------------------------------------------------------
    def encode_text(self, expressions: str | Sequence[str]) -> TextFeatures:
        """F_w and F_s of one or more expressions (Eq. 2)."""
        return self.backbone.encode_text(expressions)

    # -- 3. per-frame, text-dependent stages --------------------------------------------------------------
    def decode_frames(self, visual: VisualFeatures, text: TextFeatures, clip_index: Tensor | None = None,
                      *, frame_chunk: int | None = None, row_chunk: int | None = None) -> FrameOutput:
        """Adapters → pixel decoder → query generation → frame decoder for P pairs.

        Pair p is expression p of ``text`` about clip ``clip_index[p]`` (default: clip 0 for all).
        ``frame_chunk`` bounds how many frames per pair go through at once (memory), and ``row_chunk``
        how many (pair, frame) rows of such a run go through the pixel decoder, the query generation and
        the frame decoder at once (the adapters' text-independent work still runs once per frame of the
        run). Neither changes the result.
        """
        clip_index = self._check_pairs(visual, text, clip_index)
        parts = [self._decode_frame_chunk(part, text, clip_index, row_chunk)
                 for part in _frame_chunks(visual, frame_chunk)]
        if len(parts) == 1:
            return parts[0]

        def cat(name: str) -> Tensor:
            return torch.cat([getattr(p, name) for p in parts], dim=1)

        def cat_list(name: str) -> list[Tensor]:
            return [torch.cat(xs, dim=1) for xs in zip(*(getattr(p, name) for p in parts), strict=True)]

        return FrameOutput(
            queries=cat("queries"), sentences=cat("sentences"), mask_features=cat("mask_features"),
            class_logits=cat("class_logits"), mask_logits=cat("mask_logits"), mask_embed=cat("mask_embed"),
            aux_class_logits=cat_list("aux_class_logits"), aux_mask_logits=cat_list("aux_mask_logits"),
            adapter_weights=cat("adapter_weights") if parts[0].adapter_weights is not None else None,
        )

    def _pair_rows(self, visual: VisualFeatures, text: TextFeatures, clip_index: Tensor
                   ) -> tuple[Tensor | None, Tensor, Tensor, Tensor]:
        """Rows of the per-frame stages: row r = pair r // T, frame r % T, reading frame
        (clip_index[pair], frame) of the visual pass. Returns that frame index (P·T,) — None when row r
        reads frame r — and each pair's text repeated per frame: words (P·T, L, D_t), word_mask
        (P·T, L), sentence (P·T, D_t)."""
        p, t = clip_index.shape[0], visual.num_frames
        device = visual.stages[0].device
        rows = (clip_index.to(device)[:, None] * t + torch.arange(t, device=device)[None]).flatten()
        if p == visual.num_clips and torch.equal(clip_index.cpu(), torch.arange(p)):
            rows = None  # pair p is clip p: the rows are the frames, in order
        pair_of_row = torch.arange(p, device=device).repeat_interleave(t)
        words = text.words.to(device)[pair_of_row]
        word_mask = text.word_mask.to(device)[pair_of_row]
        sentence = text.sentence.to(device)[pair_of_row]
        return rows, words, word_mask, sentence

    def _adapt(self, stages: list[Tensor], rows: Tensor | None, words: Tensor, word_mask: Tensor,
               sentence: Tensor) -> tuple[list[Tensor], Tensor | None]:
        """Semantic alignment (Eq. 3-4) of every stage, per row; the adapters' text-independent work
        runs once per frame of ``stages``. Identity (the rows' frames) when the adapter is off."""
        if self.adapters is None:
            return [f if rows is None else f[rows] for f in stages], None
        refined = [a(f, words, word_mask, sentence, rows) for a, f in zip(self.adapters, stages, strict=True)]
        return [f for f, _ in refined], torch.stack([w for _, w in refined], dim=1)  # (P·T, 4, 3)

    def encode_mask_features(self, visual: VisualFeatures, text: TextFeatures,
                             clip_index: Tensor | None = None, *, frame_chunk: int | None = None,
                             row_chunk: int | None = None) -> Tensor:
        """F_mask only (adapters → pixel decoder), (P, T, mask_dim, H/4, W/4): what a caller that
        dropped the mask features needs to recompute them. ``frame_chunk`` and ``row_chunk`` as in
        :meth:`decode_frames`."""
        clip_index = self._check_pairs(visual, text, clip_index)
        mh, mw = visual.mask_size
        parts = []
        for part in _frame_chunks(visual, frame_chunk):
            rows, words, word_mask, sentence = self._pair_rows(part, text, clip_index)
            stages, _ = self._adapt(part.stages, rows, words, word_mask, sentence)
            mask_features = torch.cat([self.pixel_decoder([f[r] for f in stages])[0]
                                       for r in _row_slices(stages[0].shape[0], row_chunk)])
            if part.motion is not None:
                mask_features = mask_features + _take(part.motion[0], rows)
            parts.append(mask_features[..., :mh, :mw].reshape(clip_index.shape[0], part.num_frames,
                                                              *mask_features.shape[1:2], mh, mw))
        return torch.cat(parts, dim=1)

    def _decode_frame_chunk(self, visual: VisualFeatures, text: TextFeatures, clip_index: Tensor,
                            row_chunk: int | None = None) -> FrameOutput:
        p, t = clip_index.shape[0], visual.num_frames
        rows, words, word_mask, sentence = self._pair_rows(visual, text, clip_index)
        stages, adapter_weights = self._adapt(visual.stages, rows, words, word_mask, sentence)  # Eq. 3-4
        motion = None if visual.motion is None else [_take(m, rows) for m in visual.motion]
        parts = [self._decode_rows([f[r] for f in stages], words[r], word_mask[r], sentence[r],
                                   None if motion is None else [m[r] for m in motion])
                 for r in _row_slices(words.shape[0], row_chunk)]
        mask_features = torch.cat([m for m, _, _ in parts])  # (P·T, Cm, H/4, W/4)
        sentences = torch.cat([s for _, s, _ in parts])  # (P·T, C)
        dec = _cat_rows([d for _, _, d in parts])

        mh, mw = visual.mask_size

        def per_pair(x: Tensor) -> Tensor:
            return x.reshape(p, t, *x.shape[1:])

        def crop(x: Tensor) -> Tensor:  # drop the padding's share of the H/4 x W/4 grid
            return x[..., :mh, :mw]

        return FrameOutput(
            queries=per_pair(dec.queries),
            sentences=per_pair(sentences),
            mask_features=per_pair(crop(mask_features)),
            class_logits=per_pair(dec.class_logits),
            mask_logits=per_pair(crop(dec.mask_logits)),
            mask_embed=per_pair(dec.mask_embed),
            aux_class_logits=[per_pair(x) for x in dec.aux_class_logits],
            aux_mask_logits=[per_pair(crop(x)) for x in dec.aux_mask_logits],
            adapter_weights=None if adapter_weights is None else per_pair(adapter_weights),
        )

    def _decode_rows(self, stages: list[Tensor], words: Tensor, word_mask: Tensor, sentence: Tensor,
                     motion: list[Tensor] | None = None) -> tuple[Tensor, Tensor, FrameDecoderOutput]:
        """Pixel decoder (+ the rows' motion features) → query generation (Eq. 5) → frame decoder on R
        rows of adapted features: F_mask (R, Cm, H/4, W/4), F̂_s (R, C) and the decoder's output."""
        mask_features, multi_scale = self.pixel_decoder(stages)  # (R, Cm, H/4, W/4), strides 32/16/8
        if motion is not None:
            mask_features = mask_features + motion[0]
            multi_scale = [*multi_scale[:-1], multi_scale[-1] + motion[1]]
        queries, sentences = self.query_generator(stages[-1], words, word_mask, sentence)  # Eq. 5
        return mask_features, sentences, self.frame_decoder(queries, multi_scale, mask_features)

    # -- 4. per-clip sequential alignment and video decoding ------------------------------------------
    def sequence_queries(self, frames: FrameOutput) -> Tensor:
        """The frame queries the sequence stages read, (P, T, N, C): Q̂^t, plus where each query's mask
        lies with ``query_positions``."""
        if self.mask_position is None:
            return frames.queries
        return self.mask_position(frames.queries, frames.mask_logits)

    def decode_sequence(self, queries: Tensor, sentences: Tensor, text: TextFeatures,
                        frame_mask_embed: Tensor | None = None) -> SequenceOutput:
        """Trajectories → temporal enhancement (Eq. 6) → ensemble (Eq. 7) → video decoder, for P pairs
        of frame queries (P, T, N, C) and per-frame sentence features (P, T, C). With
        ``trajectory_masks`` the frame decoder's mask embeddings (P, T, N, mask_dim) are needed too:
        video query i's mask at frame t is its trajectory's."""
        p, t, n, _ = queries.shape
        if len(text) != p:
            raise ValueError(f"{len(text)} expressions for {p} frame-stage pairs")
        if self.config.trajectory_masks and (frame_mask_embed is None
                                             or frame_mask_embed.shape[:3] != queries.shape[:3]):
            got = None if frame_mask_embed is None else tuple(frame_mask_embed.shape)
            raise ValueError(f"trajectory_masks needs the frame mask embeddings (P, T, N, mask_dim) of the "
                             f"{tuple(queries.shape)} frame queries, got {got}")
        if self.temporal_enhancement is not None:
            order = hungarian_trajectories(queries)  # (P, T, N), on detached queries
            trajectories = self.temporal_enhancement(apply_order(queries, order))  # Eq. 6, Q̃_TE
            if self.ensemble is not None:
                video_queries, weights = self.ensemble(trajectories)  # Eq. 7
            else:  # Tab. 7 row 3: uniform temporal weights
                weights = queries.new_full((p, t, n), 1.0 / t)
                video_queries = trajectories.mean(dim=1)
        else:  # Tab. 7 row 4: no trajectories, plain mean of the unaligned frame queries
            order = torch.arange(n, device=queries.device).expand(p, t, n)
            trajectories = queries
            weights = queries.new_full((p, t, n), 1.0 / t)
            video_queries = queries.mean(dim=1)
        words, word_mask = text.words.to(queries.device), text.word_mask.to(queries.device)
        trajectory_masks = None
        if self.config.trajectory_masks:  # (P, N, T, mask_dim): trajectory i's mask embedding per frame,
            # detached: the frame-level loss trains the masks, the video-level loss only the scores
            trajectory_masks = apply_order(frame_mask_embed.detach(), order).transpose(1, 2)
        dec = self.video_decoder(video_queries, trajectories, words, word_mask, sentences, trajectory_masks)
        return SequenceOutput(
            class_logits=dec.class_logits, mask_embed=dec.mask_embed, video_queries=dec.queries,
            trajectory_order=order, ensemble_weights=weights,
            aux_class_logits=dec.aux_class_logits, aux_mask_embed=dec.aux_mask_embed,
        )

    def decode_video(self, frames: FrameOutput, text: TextFeatures, clip_index: Tensor | None = None,
                     *, with_frames: bool | None = None) -> SSAOutput:
        """Sequence stages (:meth:`decode_sequence`) and masks = Q_emb^t · F_mask^t, for P pairs.

        ``with_frames`` keeps the per-frame predictions and the video decoder's earlier layers (deep
        supervision) in the output; default: when training.
        """
        seq = self.decode_sequence(self.sequence_queries(frames), frames.sentences, text, frames.mask_embed)
        p = frames.queries.shape[0]
        if clip_index is None:
            clip_index = torch.zeros(p, dtype=torch.long)
        # with trajectory_masks the video masks are the trajectories' frame masks, trained by L_f only
        features = frames.mask_features.detach() if self.config.trajectory_masks else frames.mask_features
        masks = torch.einsum("pntc,ptchw->pnthw", seq.mask_embed, features)  # (P, N, T, H/4, W/4)
        keep = self.training if with_frames is None else with_frames
        if not keep:
            aux_masks = []
        elif self.config.trajectory_masks:  # every decoder layer has the trajectories' masks: reuse them
            aux_masks = [masks] * len(seq.aux_mask_embed)
        else:
            aux_masks = [torch.einsum("pntc,ptchw->pnthw", e, features) for e in seq.aux_mask_embed]
        return SSAOutput(
            class_logits=seq.class_logits,
            mask_logits=masks,
            frame_queries=frames.queries,
            trajectory_order=seq.trajectory_order,
            ensemble_weights=seq.ensemble_weights,
            video_queries=seq.video_queries,
            clip_index=clip_index.to(frames.queries.device),
            expressions=list(text.expressions),
            frames=frames if keep else None,
            aux_class_logits=list(seq.aux_class_logits) if keep else [],
            aux_mask_logits=aux_masks,
        )

    # -- all of it ------------------------------------------------------------------------------------
    def forward(self, frames: Tensor, expressions: Expressions, *, frame_chunk: int | None = None,
                with_frames: bool | None = None) -> SSAOutput:
        """Segment the objects that ``expressions`` refer to.

        frames: CLIP-normalised float frames (T, 3, H, W) of one clip, or (B, T, 3, H, W) of B clips.
        expressions: for one clip, a string or a list of strings (each is one output pair); for B
        clips, a list of B entries, each a string or a list of strings about that clip.
        Returns an :class:`SSAOutput` over the (clip, expression) pairs in order.
        """
        frames = _check_frames(frames)
        texts, clip_index = _pair_expressions(expressions, num_clips=frames.shape[0])
        visual = self.encode_video(frames)
        text = self.encode_text(texts)
        frame_out = self.decode_frames(visual, text, clip_index, frame_chunk=frame_chunk)
        return self.decode_video(frame_out, text, clip_index, with_frames=with_frames)

    def _check_pairs(self, visual: VisualFeatures, text: TextFeatures, clip_index: Tensor | None) -> Tensor:
        if clip_index is None:
            clip_index = torch.zeros(len(text), dtype=torch.long)
        clip_index = torch.as_tensor(clip_index, dtype=torch.long).flatten()
        if clip_index.shape[0] != len(text):
            raise ValueError(f"clip_index has {clip_index.shape[0]} entries for {len(text)} expressions")
        if clip_index.numel() and (clip_index.min() < 0 or clip_index.max() >= visual.num_clips):
            raise ValueError(
                f"clip_index must be in [0, {visual.num_clips}), got {clip_index.tolist()}"
            )
        return clip_index


def _take(x: Tensor, rows: Tensor | None) -> Tensor:
    """Rows ``rows`` of a per-frame tensor (all of them, in order, when None)."""
    return x if rows is None else x[rows]


def _frame_chunks(visual: VisualFeatures, frame_chunk: int | None) -> list[VisualFeatures]:
    """``visual`` split into runs of ``frame_chunk`` frames (all of them when None)."""
    t = visual.num_frames
    chunk = t if frame_chunk is None else frame_chunk
    if chunk <= 0:
        raise ValueError(f"frame_chunk must be positive, got {frame_chunk}")
    return [visual.frames(s, min(s + chunk, t)) for s in range(0, t, chunk)]


def _cat_rows(outputs: list[FrameDecoderOutput]) -> FrameDecoderOutput:
    """Frame-decoder outputs of consecutive row slices as one."""
    if len(outputs) == 1:
        return outputs[0]

    def cat(xs: Sequence[Tensor]) -> Tensor:
        return torch.cat(list(xs))

    return FrameDecoderOutput(
        queries=cat(o.queries for o in outputs), class_logits=cat(o.class_logits for o in outputs),
        mask_logits=cat(o.mask_logits for o in outputs), mask_embed=cat(o.mask_embed for o in outputs),
        aux_class_logits=[cat(x) for x in zip(*(o.aux_class_logits for o in outputs), strict=True)],
        aux_mask_logits=[cat(x) for x in zip(*(o.aux_mask_logits for o in outputs), strict=True)],
    )


def _row_slices(num_rows: int, row_chunk: int | None) -> list[slice]:
    """``range(num_rows)`` as slices of at most ``row_chunk`` rows (one slice when None)."""
    chunk = num_rows if row_chunk is None else row_chunk
    if chunk <= 0:
        raise ValueError(f"row_chunk must be positive, got {row_chunk}")
    return [slice(s, min(s + chunk, num_rows)) for s in range(0, num_rows, chunk)]


def _check_frames(frames: Tensor) -> Tensor:
    """Validate frames and return them as (B, T, 3, H, W)."""
    if not isinstance(frames, Tensor):
        raise TypeError(
            f"frames must be a torch.Tensor (T, 3, H, W) or (B, T, 3, H, W), got {type(frames).__name__}; "
            "use SSAPipeline for videos, images and arrays"
        )
    if not frames.is_floating_point():
        raise TypeError(
            f"frames must be CLIP-normalised floating point, got dtype {frames.dtype}; "
            "normalise uint8 frames first (or use SSAPipeline)"
        )
    if frames.dim() == 4:
        frames = frames[None]
    if frames.dim() != 5:
        raise ValueError(
            f"frames must have rank 4 (T, 3, H, W) or 5 (B, T, 3, H, W), got rank {frames.dim()} "
            f"with shape {tuple(frames.shape)}"
        )
    b, t, c, h, w = frames.shape
    if c != 3:
        raise ValueError(
            f"frames must have 3 (RGB) channels in dim -3, got {c} (shape {tuple(frames.shape)})"
        )
    if b == 0:
        raise ValueError("frames hold no clip (B = 0)")
    if t == 0:
        raise ValueError("frames hold no frame (T = 0)")
    if h == 0 or w == 0:
        raise ValueError(f"frames have an empty spatial size {h}x{w}")
    return frames


def _pair_expressions(expressions: Expressions, num_clips: int) -> tuple[list[str], Tensor]:
    """Flatten the expressions argument to (texts, clip_index) pairs."""
    if isinstance(expressions, str):
        per_clip: list[Sequence[str] | str] = [expressions] * num_clips
    elif (num_clips == 1 and isinstance(expressions, Sequence)
          and not any(isinstance(e, Sequence) and not isinstance(e, str) for e in expressions)):
        per_clip = [list(expressions)]  # one clip: a flat list holds its expressions
    else:
        if not isinstance(expressions, Sequence):
            raise TypeError(
                f"expressions must be a string or a sequence, got {type(expressions).__name__}"
            )
        if len(expressions) != num_clips:
            raise ValueError(
                f"{num_clips} clips need {num_clips} expression entries (one string or list per clip), "
                f"got {len(expressions)}"
            )
        per_clip = list(expressions)
    texts: list[str] = []
    index: list[int] = []
    for clip, entry in enumerate(per_clip):
        entry_list = [entry] if isinstance(entry, str) else entry
        if not isinstance(entry_list, Sequence):
            raise TypeError(f"expressions for clip {clip} must be a string or a list of strings, "
                            f"got {type(entry).__name__}")
        if len(entry_list) == 0:
            raise ValueError(f"no expression given for clip {clip}")
        texts.extend(entry_list)
        index.extend([clip] * len(entry_list))
    return texts, torch.tensor(index, dtype=torch.long)
