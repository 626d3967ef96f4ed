"""`SSAModel`: the official SSA network (github.com/Tavarich/SSA), in data-flow order.

    expressions ──► frozen CLIP text: F_w (first 40 tokens), F_s (Eq. 2)          encode_text()
    frames ──► CLIP stem + stage 0 (the only expression-independent part)         encode_video()
    per (frame, expression):                                                        decode_frames()
        adapter 0 → stage 1 → adapter 1 → stage 2 → adapter 2 → stage 3 → adapter 3   (Eq. 3-4)
        → pixel decoder: 6 x [text fusion (Eq. 5) → deformable layer], FPN → F̂_s^t, F_mask
        → frame decoder (queries = F̂_s^t x N; masked cross → self → text cross → FFN)
    per (clip, expression):                                                         decode_sequence()
        projection → Hungarian trajectories → temporal enhancement (Eq. 6) → ensemble (Eq. 7)
        → video decoder (text cross → trajectory cross → self → FFN) → S_cls, Q_emb
    masks = Q_emb · F_mask^video                                                    decode_video()

``model(frames, expressions)`` runs all of it; the split methods let one stem pass serve several
expressions and let callers chunk the per-frame stages over time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ssa.config import SSAConfig
from ssa.experimental.motion import PixelMotionEncoder
from ssa.hub import PretrainedMixin
from ssa.modeling.adapter import SemanticAlignmentAdapter
from ssa.modeling.backbone import FrozenCLIP, TextFeatures
from ssa.modeling.frame_decoder import FrameDecoderOutput, FrameQueryDecoder
from ssa.modeling.fusion import TextResizer
from ssa.modeling.outputs import FrameOutput, SequenceOutput, SSAOutput, VideoPredictions, VisualFeatures
from ssa.modeling.pixel_decoder import PixelDecoder, PixelDecoderOutput
from ssa.modeling.selection import mask_product
from ssa.modeling.sequential_alignment import (
    TemporalEnhancement,
    TrajectoryEnsemble,
    apply_order,
    hungarian_trajectories,
)
from ssa.modeling.video_decoder import VideoQueryDecoder

__all__ = ["SSAModel"]

Expressions = str | Sequence[str] | Sequence[str | Sequence[str]]

_SIZE_DIVISOR = 32


class SSAModel(PretrainedMixin, nn.Module):
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
            nn.ModuleList(SemanticAlignmentAdapter(ch, text_dim, c.adapter_dim, c.adapter_heads,
                                                   c.adapter_dropout) for ch in channels)
            if c.use_adapter else None
        )
        self.text_resizer = TextResizer(text_dim, c.hidden_dim, c.text_dropout)
        self.pixel_decoder = PixelDecoder(
            channels, hidden_dim=c.hidden_dim, mask_dim=c.mask_dim, num_layers=c.pixel_decoder_layers,
            num_heads=c.pixel_decoder_heads, num_points=c.pixel_decoder_points,
            ffn_dim=c.pixel_decoder_ffn_dim, dropout=c.dropout, fusion_dim=c.fusion_dim,
            fusion_heads=c.fusion_heads, fusion_dropout=c.fusion_dropout, bidirectional=c.bidirectional,
        )
        self.frame_decoder = FrameQueryDecoder(
            hidden_dim=c.hidden_dim, num_queries=c.num_queries, num_heads=c.num_heads,
            num_layers=c.frame_decoder_layers, ffn_dim=c.frame_decoder_ffn_dim, mask_dim=c.mask_dim,
            num_levels=3, dropout=c.dropout,
        )
        self.sequence_proj = nn.Linear(c.hidden_dim, c.hidden_dim)  # frame queries before matching
        self.temporal_enhancement = (
            TemporalEnhancement(c.hidden_dim, c.num_heads, c.dropout) if c.trajectory else None
        )
        self.ensemble = TrajectoryEnsemble(c.hidden_dim) if c.ensemble else None
        self.video_decoder = VideoQueryDecoder(
            c.hidden_dim, c.num_queries, c.num_heads, c.video_decoder_layers, c.video_decoder_ffn_dim,
            c.mask_dim, c.dropout,
        )
        # not in the official network (SSAConfig.experimental_motion_features, ssa.experimental.motion)
        self.experimental_motion = (
            PixelMotionEncoder(c.hidden_dim, c.mask_dim) if c.experimental_motion_features else None
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

    # -- 1. the expression-independent visual pass ----------------------------------------------------
    def encode_video(self, frames: Tensor, previous: Tensor | None = None, *,
                     frame_chunk: int | None = None) -> VisualFeatures:
        """CLIP stem + stage 0 of CLIP-normalised frames (T, 3, H, W) or clips (B, T, 3, H, W).

        Frames are zero-padded (bottom/right) to a multiple of 32. The result does not depend on any
        expression and is reused for all of them. ``previous`` is the frame before each clip, (3, H, W)
        or (B, 3, H, W); only the experimental motion features read it (a caller that runs a video in
        chunks passes the last frame of the chunk before, so chunks give what the whole video gives).
        ``frame_chunk``: run the stem and stage 0 that many frames at a time (the same result; on a
        CPU one frame at a time keeps the stage's wide activations in cache, ~25% faster at 448 px
        than 16 at once, and lowers the peak memory).
        """
        frames = _check_frames(frames)
        b, t, _, h, w = frames.shape
        ph, pw = -h % _SIZE_DIVISOR, -w % _SIZE_DIVISOR
        images = frames.reshape(b * t, 3, h, w).to(self.device)
        if ph or pw:
            images = F.pad(images, (0, pw, 0, ph))
        motion = None
        if self.experimental_motion is not None:
            before = None
            if previous is not None:
                before = previous[None] if previous.dim() == 3 else previous
                if tuple(before.shape) != (b, 3, h, w):
                    raise ValueError(f"previous frames must be (3, H, W) or (B, 3, H, W) matching the frames "
                                     f"{(b, 3, h, w)}, got {tuple(previous.shape)}")
                before = F.pad(before.to(images), (0, pw, 0, ph))
            motion = self.experimental_motion.encode(images.reshape(b, t, *images.shape[1:]), before)
        if frame_chunk is not None and frame_chunk < 1:
            raise ValueError(f"frame_chunk must be >= 1, got {frame_chunk}")
        step = frame_chunk or images.shape[0]
        stem = torch.cat([self.backbone.encode_stem(images[i:i + step])
                          for i in range(0, images.shape[0], step)])  # (B·T, C_1, H/4, W/4)
        return VisualFeatures(stem, b, t, (h, w), (h + ph, w + pw), motion)

    # -- 2. frozen text pass ----------------------------------------------------------------------------
    def encode_text(self, expressions: str | Sequence[str]) -> TextFeatures:
        """F_w and F_s of one or more expressions (Eq. 2)."""
        return self.backbone.encode_text(expressions)

    # -- 3. per-(frame, expression) stages ----------------------------------------------------------------
    def decode_frames(self, visual: VisualFeatures, text: TextFeatures, clip_index: Tensor | None = None,
                      *, frame_chunk: int | None = None, row_chunk: int | None = None,
                      frame_masks: bool = True) -> FrameOutput:
        """CLIP stages 1-3 with the adapters → pixel decoder → frame decoder for P pairs.

        Pair p is expression p of ``text`` about clip ``clip_index[p]`` (default: clip 0 for all).
        ``frame_chunk`` bounds how many frames per pair go through at once (memory), and ``row_chunk``
        how many (pair, frame) rows of such a run go through at once. Neither changes the result.
        ``frame_masks=False`` skips the frame decoder's full-resolution mask logits (training's
        frame-level supervision; the video masks do not read them): ``mask_logits`` is then None.
        """
        clip_index = self._check_pairs(visual, text, clip_index)
        parts = [self._decode_frame_chunk(part, text, clip_index, row_chunk, frame_masks)
                 for part in _frame_chunks(visual, frame_chunk)]
        if len(parts) == 1:
            return parts[0]

        def cat(name: str) -> Tensor:
            return torch.cat([getattr(p, name) for p in parts], dim=1)

        def cat_list(name: str) -> list[Tensor]:
            return [torch.cat(xs, dim=1) for xs in zip(*(getattr(p, name) for p in parts), strict=True)]

        return FrameOutput(
            queries=cat("queries"), sentences=cat("sentences"), mask_features=cat("mask_features"),
            class_logits=cat("class_logits"), mask_logits=cat("mask_logits") if frame_masks else None,
            aux_class_logits=cat_list("aux_class_logits"), aux_mask_logits=cat_list("aux_mask_logits"),
            aux_queries=cat_list("aux_queries"),
            adapter_weights=cat("adapter_weights") if parts[0].adapter_weights is not None else None,
        )

    def _pair_rows(self, visual: VisualFeatures, text: TextFeatures, clip_index: Tensor
                   ) -> tuple[Tensor | None, Tensor]:
        """Rows of the per-frame stages: row r = pair r // T, frame r % T, reading frame
        (clip_index[pair], frame) of the visual pass. Returns that frame index (P·T,) — None when row r
        reads frame r — and the pair of each row (P·T,)."""
        p, t = clip_index.shape[0], visual.num_frames
        device = visual.stem.device
        rows = (clip_index.to(device)[:, None] * t + torch.arange(t, device=device)[None]).flatten()
        if p == visual.num_clips and torch.equal(clip_index.cpu(), torch.arange(p)):
            rows = None  # pair p is clip p: the rows are the frames, in order
        return rows, torch.arange(p, device=device).repeat_interleave(t)

    def encode_stages(self, stem: Tensor, words: Tensor, word_mask: Tensor, sentence: Tensor
                      ) -> tuple[list[Tensor], Tensor | None]:
        """The interleaved visual pass of R rows from their stage-0 output ``stem`` (R, C_1, H/4, W/4)
        and their text (words (R, L, D), word_mask (R, L), sentence (R, D)): the four adapted stage
        maps res2..res5 and the adapters' stream weights (R, 4, 3) (None without adapters)."""
        x, features, weights = stem, [], []
        recompute = self.checkpoint_trunk and torch.is_grad_enabled()
        for i in range(4):
            if recompute:  # keep only the segment's input; its activations are recomputed in backward
                x, w = checkpoint(self._stage_and_adapter, i, x, words, word_mask, sentence,
                                  use_reentrant=False)
            else:
                x, w = self._stage_and_adapter(i, x, words, word_mask, sentence)
            if w is not None:
                weights.append(w)
            features.append(x)
        return features, torch.stack(weights, dim=1) if weights else None

    def _stage_and_adapter(self, i: int, x: Tensor, words: Tensor, word_mask: Tensor, sentence: Tensor
                           ) -> tuple[Tensor, Tensor | None]:
        """CLIP stage i (i >= 1) and adapter i: one segment of :meth:`encode_stages`."""
        if i > 0:
            x = self.backbone.run_stage(i, x)
        if self.adapters is None:
            return x, None
        return self.adapters[i](x, words, word_mask, sentence)  # Eq. 3-4

    @property
    def checkpoint_trunk(self) -> bool:
        """Whether the visual pass recomputes in backward (:meth:`set_activation_checkpointing`)."""
        return getattr(self, "_checkpoint_trunk", False)

    def set_activation_checkpointing(self, trunk: bool = False, decoders: bool = False) -> SSAModel:
        """Trade compute for memory in training: with ``trunk``, each CLIP stage 1-3 and the adapter
        after it (and adapter 0) keep only their input while gradients are recorded, and run again in
        the backward pass; with ``decoders``, so do the pixel decoder's fusion + deformable layers and
        the frame decoder's layers. Results and gradients are unchanged (dropout and drop-path masks are
        replayed); inference without gradients is unaffected. Not part of the config or checkpoints."""
        self._checkpoint_trunk = bool(trunk)
        self.pixel_decoder.checkpoint_layers = bool(decoders)
        self.frame_decoder.checkpoint_layers = bool(decoders)
        return self

    def decode_pixels(self, features: list[Tensor], sentence: Tensor) -> PixelDecoderOutput:
        """The pixel decoder with its text fusion, in fp32 with autocast off (as the official network
        runs it), on R rows of adapted stage maps and their resized sentence (R, 1, C)."""
        with torch.autocast(features[0].device.type, enabled=False):
            return self.pixel_decoder([f.float() for f in features], sentence.float())

    def _rows(self, visual: VisualFeatures, text: TextFeatures, clip_index: Tensor,
              row_chunk: int | None) -> Iterator[tuple[PixelDecoderOutput, Tensor | None]]:
        """Stages 1-3 with adapters and the pixel decoder, per slice of rows, one slice at a time: the
        caller is done with a slice's multi-scale maps before the next slice is computed."""
        rows, pair_of_row = self._pair_rows(visual, text, clip_index)
        device = visual.stem.device
        words, word_mask = text.words.to(device), text.word_mask.to(device)
        sentence = text.sentence.to(device)
        resized = self.text_resizer(sentence)[:, None]  # (P, 1, C), once per pair
        for r in _row_slices(pair_of_row.shape[0], row_chunk):
            pair = pair_of_row[r]
            stem = visual.stem[r] if rows is None else visual.stem[rows[r]]
            features, weights = self.encode_stages(stem, words[pair], word_mask[pair], sentence[pair])
            pixels = self.decode_pixels(features, resized[pair])
            del features
            if visual.motion is not None:  # experimental: not in the official network
                motion = visual.motion[r] if rows is None else visual.motion[rows[r]]
                pixels = self._add_motion(pixels, motion)
            yield pixels, weights

    def _add_motion(self, pixels: PixelDecoderOutput, motion: Tensor) -> PixelDecoderOutput:
        """The experimental motion features added to one slice of rows' pixel-decoder output."""
        to_mask, to_video, to_stride8 = self.experimental_motion.project(motion.to(pixels.mask_features))
        return dataclasses.replace(
            pixels, mask_features=pixels.mask_features + to_mask,
            video_mask_features=pixels.video_mask_features + to_video,
            multi_scale=[*pixels.multi_scale[:-1], pixels.multi_scale[-1] + to_stride8],
        )

    def encode_mask_features(self, visual: VisualFeatures, text: TextFeatures,
                             clip_index: Tensor | None = None, *, frame_chunk: int | None = None,
                             row_chunk: int | None = None) -> Tensor:
        """The video-level mask features only (P, T, mask_dim, H_pad/4, W_pad/4): what a caller that
        dropped them needs to recompute them. ``frame_chunk`` and ``row_chunk`` as in
        :meth:`decode_frames`."""
        clip_index = self._check_pairs(visual, text, clip_index)
        parts = []
        for part in _frame_chunks(visual, frame_chunk):
            features = torch.cat([pd.video_mask_features for pd, _ in self._rows(part, text, clip_index,
                                                                                 row_chunk)])
            parts.append(features.reshape(clip_index.shape[0], part.num_frames, *features.shape[1:]))
        return torch.cat(parts, dim=1)

    def _decode_frame_chunk(self, visual: VisualFeatures, text: TextFeatures, clip_index: Tensor,
                            row_chunk: int | None = None, frame_masks: bool = True) -> FrameOutput:
        p, t = clip_index.shape[0], visual.num_frames
        parts = []
        for pd, weights in self._rows(visual, text, clip_index, row_chunk):
            dec = self.frame_decoder(pd.text, pd.multi_scale, pd.mask_features, masks=frame_masks)
            parts.append((pd.video_mask_features, pd.text[:, 0], dec, weights))
            del pd  # the slice's multi-scale maps and frame mask features go before the next slice
        mask_features = torch.cat([m for m, _, _, _ in parts])  # (P·T, Cm, H/4, W/4)
        sentences = torch.cat([s for _, s, _, _ in parts])  # (P·T, C)
        dec = _cat_rows([d for _, _, d, _ in parts])
        adapter_weights = None if parts[0][3] is None else torch.cat([w for _, _, _, w in parts])

        def per_pair(x: Tensor) -> Tensor:
            return x.reshape(p, t, *x.shape[1:])

        return FrameOutput(
            queries=per_pair(dec.queries),
            sentences=per_pair(sentences),
            mask_features=per_pair(mask_features),
            class_logits=per_pair(dec.class_logits),
            mask_logits=None if dec.mask_logits is None else per_pair(dec.mask_logits),
            aux_class_logits=[per_pair(x) for x in dec.aux_class_logits],
            aux_mask_logits=[per_pair(x) for x in dec.aux_mask_logits],
            aux_queries=[per_pair(x) for x in dec.aux_queries],
            adapter_weights=None if adapter_weights is None else per_pair(adapter_weights),
        )

    # -- 4. per-clip sequential alignment and video decoding ------------------------------------------
    def decode_sequence(self, queries: Tensor, sentences: Tensor) -> SequenceOutput:
        """Projection → trajectories → temporal enhancement (Eq. 6) → ensemble (Eq. 7) → video decoder,
        for P pairs of frame queries (P, T, N, C) and per-frame sentence features (P, T, C)."""
        if queries.dim() != 4 or sentences.shape != queries.shape[:2] + queries.shape[3:]:
            raise ValueError(f"frame queries (P, T, N, C) and sentences (P, T, C) do not match: "
                             f"{tuple(queries.shape)} and {tuple(sentences.shape)}")
        p, t, n, _ = queries.shape
        queries = self.sequence_proj(queries)
        if self.temporal_enhancement is not None:
            order = hungarian_trajectories(queries)  # (P, T, N), on detached queries
            trajectories = self.temporal_enhancement(apply_order(queries, order))  # Eq. 6, Q̃_TE
        else:  # Tab. 7: no trajectories, the frame queries in decoder order
            order = torch.arange(n, device=queries.device).expand(p, t, n)
            trajectories = queries
        if self.ensemble is not None:
            video_queries, weights = self.ensemble(trajectories)  # Eq. 7
        else:  # Tab. 7: uniform temporal weights
            weights = queries.new_full((p, t, n), 1.0 / t)
            video_queries = trajectories.mean(dim=1)
        dec = self.video_decoder(video_queries, trajectories, sentences)
        return SequenceOutput(
            class_logits=dec.class_logits, mask_embed=dec.mask_embed, video_queries=dec.queries,
            trajectories=trajectories, trajectory_order=order, ensemble_weights=weights,
            aux_class_logits=dec.aux_class_logits, aux_mask_embed=dec.aux_mask_embed,
        )

    def decode_video(self, frames: FrameOutput, text: TextFeatures, clip_index: Tensor | None = None,
                     *, with_frames: bool | None = None) -> SSAOutput:
        """Sequence stages (:meth:`decode_sequence`) and masks = Q_emb · F_mask^video, for P pairs.

        ``with_frames`` keeps what training needs in the output (default: when training): the per-frame
        predictions, the video decoder's earlier layers (deep supervision), the similarity embeddings,
        and the video stage run again on the frame queries of the frame decoder's earlier predictions
        (``SSAConfig.train_frame_layers``, the official ``LAST_LAYER_NUM``).
        """
        p = frames.queries.shape[0]
        if len(text) != p:
            raise ValueError(f"{len(text)} expressions for {p} frame-stage pairs")
        if clip_index is None:
            clip_index = torch.zeros(p, dtype=torch.long)
        keep = self.training if with_frames is None else with_frames
        if keep and frames.mask_logits is None:
            raise ValueError("with_frames needs the frame-level mask logits: decode the frames with "
                             "frame_masks=True")
        seq = self.decode_sequence(frames.queries, frames.sentences)
        masks, aux_masks = self._video_masks(seq, frames.mask_features, keep)
        earlier = []
        if keep:
            for queries in frames.aux_queries[::-1][: self.config.train_frame_layers - 1]:
                layer = self.decode_sequence(queries, frames.sentences)
                layer_masks, layer_aux = self._video_masks(layer, frames.mask_features, True)
                earlier.append(VideoPredictions(
                    class_logits=layer.class_logits, mask_logits=layer_masks,
                    frame_embed=self._frame_embed(queries),
                    video_embed=self.video_decoder.sim_clip(layer.video_queries),
                    aux_class_logits=list(layer.aux_class_logits), aux_mask_logits=layer_aux,
                ))
        return SSAOutput(
            class_logits=seq.class_logits,
            mask_logits=masks,
            frame_queries=frames.queries,
            trajectory_order=seq.trajectory_order,
            ensemble_weights=seq.ensemble_weights,
            video_queries=seq.video_queries,
            trajectories=seq.trajectories,
            clip_index=clip_index.to(frames.queries.device),
            expressions=list(text.expressions),
            frames=frames if keep else None,
            aux_class_logits=list(seq.aux_class_logits) if keep else [],
            aux_mask_logits=aux_masks,
            frame_embed=self._frame_embed(frames.queries) if keep else None,
            video_embed=self.video_decoder.sim_clip(seq.video_queries) if keep else None,
            earlier_layers=earlier,
        )

    @staticmethod
    def _video_masks(seq: SequenceOutput, features: Tensor, with_aux: bool) -> tuple[Tensor, list[Tensor]]:
        """Mask logits (P, N, T, H/4, W/4) of the video queries on the video mask features (P, T, Cm, H/4,
        W/4), and those of the video decoder's earlier layers when ``with_aux``."""
        masks = mask_product(seq.mask_embed, features)
        aux = [mask_product(e, features) for e in seq.aux_mask_embed] if with_aux else []
        return masks, aux

    def _frame_embed(self, queries: Tensor) -> Tensor:
        """Similarity embeddings of frame queries (P, T, N, C), in decoder order, where the frame-level
        matches index them (the official code embeds the re-ordered queries but indexes them by the
        frame matches of the decoder order)."""
        return self.video_decoder.sim_frame(self.sequence_proj(queries))

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
        keep = self.training if with_frames is None else with_frames
        frame_out = self.decode_frames(visual, text, clip_index, frame_chunk=frame_chunk, frame_masks=keep)
        return self.decode_video(frame_out, text, clip_index, with_frames=keep)

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
        mask_logits=None if outputs[0].mask_logits is None else cat(o.mask_logits for o in outputs),
        mask_embed=cat(o.mask_embed for o in outputs),
        aux_class_logits=[cat(x) for x in zip(*(o.aux_class_logits for o in outputs), strict=True)],
        aux_mask_logits=[cat(x) for x in zip(*(o.aux_mask_logits for o in outputs), strict=True)],
        aux_queries=[cat(x) for x in zip(*(o.aux_queries for o in outputs), strict=True)],
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
