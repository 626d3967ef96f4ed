"""Typed outputs of the SSA network, one dataclass per stage boundary."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

__all__ = ["VisualFeatures", "FrameOutput", "SequenceOutput", "SSAOutput"]


@dataclass
class VisualFeatures:
    """The frozen CLIP visual pass of B clips of T frames: independent of any expression, so one pass
    serves every expression about these clips."""

    stages: list[Tensor]  # F_v^1..F_v^4, each (B·T, C_i, H_pad/s_i, W_pad/s_i)
    num_clips: int  # B
    num_frames: int  # T
    image_size: tuple[int, int]  # (H, W) of the frames given
    padded_size: tuple[int, int]  # (H_pad, W_pad), multiples of 32
    # with SSAConfig.motion_features: (B·T, mask_dim, H_pad/4, W_pad/4) and (B·T, C, H_pad/8, W_pad/8)
    motion: tuple[Tensor, Tensor] | None = None

    @property
    def mask_size(self) -> tuple[int, int]:
        """(H/4, W/4) rounded up: the size of the mask logits for the unpadded frames."""
        return (-(-self.image_size[0] // 4), -(-self.image_size[1] // 4))

    def frames(self, start: int, stop: int) -> VisualFeatures:
        """The features of frames [start, stop) of every clip."""
        def part(f: Tensor) -> Tensor:
            per_clip = f.reshape(self.num_clips, self.num_frames, *f.shape[1:])
            return per_clip[:, start:stop].reshape(-1, *f.shape[1:])

        motion = None if self.motion is None else (part(self.motion[0]), part(self.motion[1]))
        return VisualFeatures([part(f) for f in self.stages], self.num_clips, stop - start, self.image_size,
                              self.padded_size, motion)


@dataclass
class FrameOutput:
    """Per-frame stages (adapters → pixel decoder → query generation → frame decoder) for P
    (clip, expression) pairs."""

    queries: Tensor  # (P, T, N, C) frame queries Q̂^t, in each frame's own decoder order
    sentences: Tensor  # (P, T, C) per-frame sentence features F̂_s^t (Eq. 5)
    mask_features: Tensor  # (P, T, mask_dim, H/4, W/4) F_mask
    class_logits: Tensor  # (P, T, N, 2) frame-level class logits of the last decoder layer
    mask_logits: Tensor  # (P, T, N, H/4, W/4) frame-level mask logits of the last decoder layer
    mask_embed: Tensor  # (P, T, N, mask_dim) their mask embeddings: mask_logits = mask_embed · F_mask
    aux_class_logits: list[Tensor] = field(default_factory=list)  # per earlier layer (P, T, N, 2)
    aux_mask_logits: list[Tensor] = field(default_factory=list)  # per earlier layer (P, T, N, h, w)
    adapter_weights: Tensor | None = None  # (P, T, 4, 3) stream weights W_α per stage, or None


@dataclass
class SequenceOutput:
    """Per-clip stages (trajectories → temporal enhancement → ensemble → video decoder) for P pairs;
    everything but the masks, which need the mask features of every frame."""

    class_logits: Tensor  # (P, N, 2)
    mask_embed: Tensor  # (P, N, T, mask_dim) Q_emb per frame (one value over T unless trajectory_masks)
    video_queries: Tensor  # (P, N, C)
    trajectory_order: Tensor  # (P, T, N)
    ensemble_weights: Tensor  # (P, T, N)
    aux_class_logits: list[Tensor] = field(default_factory=list)  # (P, N, 2) per earlier layer
    aux_mask_embed: list[Tensor] = field(default_factory=list)  # (P, N, T, mask_dim) per earlier layer


@dataclass
class SSAOutput:
    """Output of :class:`ssa.SSAModel` for P (clip, expression) pairs."""

    class_logits: Tensor  # (P, N, 2) S_cls, logits of [referred, not referred]
    mask_logits: Tensor  # (P, N, T, H/4, W/4) video-query masks
    frame_queries: Tensor  # (P, T, N, C) frame queries Q̂^t (decoder order)
    trajectory_order: Tensor  # (P, T, N) long: trajectory i at frame t is query order[p, t, i]
    ensemble_weights: Tensor  # (P, T, N) A of Eq. 7, sums to 1 over T
    video_queries: Tensor  # (P, N, C) decoded video queries
    clip_index: Tensor  # (P,) long: the clip each pair's expression is about
    expressions: list[str]  # (P,) the expressions, cleaned
    frames: FrameOutput | None = None  # per-frame predictions and deep supervision, when asked
    aux_class_logits: list[Tensor] = field(default_factory=list)  # video decoder, earlier layers
    aux_mask_logits: list[Tensor] = field(default_factory=list)  # (P, N, T, h, w) each

    @property
    def scores(self) -> Tensor:
        """(P, N) probability that each video query is a referred object."""
        return self.class_logits.softmax(dim=-1)[..., 0]
