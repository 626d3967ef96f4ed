"""Typed outputs of the SSA network, one dataclass per stage boundary."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

__all__ = ["VisualFeatures", "FrameOutput", "SequenceOutput", "VideoPredictions", "SSAOutput"]


@dataclass
class VisualFeatures:
    """The expression-independent part of the visual pass of B clips of T frames: CLIP's stem and
    stage 0, computed once and shared by every expression about these clips."""

    stem: Tensor  # (B·T, C_1, H_pad/4, W_pad/4) stage-0 output, before adapter 0
    num_clips: int  # B
    num_frames: int  # T
    image_size: tuple[int, int]  # (H, W) of the frames given
    padded_size: tuple[int, int]  # (H_pad, W_pad), multiples of 32
    motion: Tensor | None = None  # (B·T, W_m, H_pad/4, W_pad/4) experimental motion encoding, or None

    def frames(self, start: int, stop: int) -> VisualFeatures:
        """The features of frames [start, stop) of every clip."""

        def part(x: Tensor) -> Tensor:
            per_clip = x.reshape(self.num_clips, self.num_frames, *x.shape[1:])
            return per_clip[:, start:stop].reshape(-1, *x.shape[1:])

        motion = None if self.motion is None else part(self.motion)
        return VisualFeatures(part(self.stem), self.num_clips, stop - start, self.image_size,
                              self.padded_size, motion)


@dataclass
class FrameOutput:
    """Per-frame stages (CLIP stages 1-3 with adapters → pixel decoder with text fusion → frame
    decoder) for P (clip, expression) pairs."""

    queries: Tensor  # (P, T, N, C) frame queries Q̂^t, in each frame's own decoder order
    sentences: Tensor  # (P, T, C) per-frame sentence features F̂_s^t (Eq. 5)
    mask_features: Tensor  # (P, T, mask_dim, H_pad/4, W_pad/4) the video-level mask features
    class_logits: Tensor  # (P, T, N, 2) frame-level class logits of the last decoder layer
    mask_logits: Tensor | None  # (P, T, N, H_pad/4, W_pad/4) frame-level mask logits; None unless asked
    aux_class_logits: list[Tensor] = field(default_factory=list)  # per earlier layer (P, T, N, 2)
    aux_mask_logits: list[Tensor] = field(default_factory=list)  # per earlier layer (P, T, N, h, w)
    aux_queries: list[Tensor] = field(default_factory=list)  # per earlier layer (P, T, N, C), normed
    adapter_weights: Tensor | None = None  # (P, T, 4, 3) stream weights W_α per stage [s, w, r], or None


@dataclass
class SequenceOutput:
    """Per-clip stages (trajectories → temporal enhancement → ensemble → video decoder) for P pairs;
    everything but the masks, which need the mask features of every frame."""

    class_logits: Tensor  # (P, N, 2)
    mask_embed: Tensor  # (P, N, mask_dim) Q_emb, one for all frames
    video_queries: Tensor  # (P, N, C)
    trajectories: Tensor  # (P, T, N, C) Q̃_TE, the enhanced trajectories
    trajectory_order: Tensor  # (P, T, N)
    ensemble_weights: Tensor  # (P, T, N)
    aux_class_logits: list[Tensor] = field(default_factory=list)  # (P, N, 2) per earlier layer
    aux_mask_embed: list[Tensor] = field(default_factory=list)  # (P, N, mask_dim) per earlier layer


@dataclass
class VideoPredictions:
    """The video stage's predictions from the frame queries of one earlier frame-decoder layer (training
    only: L_v and L_sim are averaged over the last ``SSAConfig.train_frame_layers`` layers)."""

    class_logits: Tensor  # (P, N, 2)
    mask_logits: Tensor  # (P, N, T, H_pad/4, W_pad/4)
    frame_embed: Tensor  # (P, T, N, C) similarity embeddings of that layer's frame queries
    video_embed: Tensor  # (P, N, C)
    aux_class_logits: list[Tensor] = field(default_factory=list)  # video decoder, earlier layers
    aux_mask_logits: list[Tensor] = field(default_factory=list)


@dataclass
class SSAOutput:
    """Output of :class:`ssa.SSAModel` for P (clip, expression) pairs."""

    class_logits: Tensor  # (P, N, 2) S_cls, logits of [referred, not referred]
    mask_logits: Tensor  # (P, N, T, H_pad/4, W_pad/4) video-query mask logits (padded grid)
    frame_queries: Tensor  # (P, T, N, C) frame queries Q̂^t (decoder order)
    trajectory_order: Tensor  # (P, T, N) long: trajectory i at frame t is query order[p, t, i]
    ensemble_weights: Tensor  # (P, T, N) A of Eq. 7, sums to 1 over T
    video_queries: Tensor  # (P, N, C) decoded video queries (normed)
    trajectories: Tensor  # (P, T, N, C) Q̃_TE
    clip_index: Tensor  # (P,) long: the clip each pair's expression is about
    expressions: list[str]  # (P,) the expressions, cleaned
    frames: FrameOutput | None = None  # per-frame predictions and deep supervision, when asked
    aux_class_logits: list[Tensor] = field(default_factory=list)  # video decoder, earlier layers
    aux_mask_logits: list[Tensor] = field(default_factory=list)  # (P, N, T, h, w) each
    frame_embed: Tensor | None = None  # (P, T, N, C) similarity embeddings of the frame queries, when asked
    video_embed: Tensor | None = None  # (P, N, C) similarity embeddings of the video queries, when asked
    earlier_layers: list[VideoPredictions] = field(default_factory=list)
    """The video stage run on the frame queries of the frame decoder's earlier predictions (latest first,
    ``SSAConfig.train_frame_layers`` − 1 of them), when asked; empty at inference."""

    @property
    def scores(self) -> Tensor:
        """(P, N) probability that each video query is a referred object."""
        return self.class_logits.softmax(dim=-1)[..., 0]
