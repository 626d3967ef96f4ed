"""Input and output: reading videos, mask formats, overlay videos and safe file writes.

* :mod:`ssa.io.video` — frames from video files (PyAV), frame folders, image lists and arrays;
* :mod:`ssa.io.masks` — COCO RLE, DAVIS palette PNGs, one video's segmentation folder;
* :mod:`ssa.io.overlay` — masks tinted over the frames as an H.264 MP4;
* :mod:`ssa.io.files` — the one rule of what ssa may write or replace, and the one atomic write
  (:func:`atomic_write`) every writer of ssa goes through.

Every function takes arrays and paths, never pipeline results (``RVOSResult`` has its own ``save_*``
methods built on these).
"""

from ssa.io.files import (
    OutputLayout,
    atomic_output_dir,
    atomic_write,
    atomic_write_text,
    check_output_dir,
    check_output_file,
    default_permissions,
    is_leftover,
    prepare_output_dir,
    remove_stale_temporaries,
    sync_to_disk,
    temp_prefix,
    temporary_sibling,
)
from ssa.io.masks import (
    DAVIS_PALETTE,
    MASKS_LAYOUT,
    SEGMENTATION_INDEX,
    SEGMENTATION_LAYOUT,
    ExpressionMasks,
    decode_rle,
    encode_rle,
    is_segmentation_output,
    read_palette_png,
    rle_record,
    write_mask_pngs,
    write_palette_png,
    write_segmentation,
)
from ssa.io.overlay import h264_encoder, write_overlay_video
from ssa.io.video import (
    IMAGE_EXTENSIONS,
    Frame,
    VideoDecodeError,
    VideoInfo,
    check_bit_depth,
    count_frames,
    iter_frames,
    probe,
    read_frames,
)

__all__ = [
    # video
    "Frame", "VideoInfo", "VideoDecodeError", "IMAGE_EXTENSIONS", "probe", "count_frames", "iter_frames",
    "read_frames", "check_bit_depth",
    # masks
    "DAVIS_PALETTE", "encode_rle", "decode_rle", "write_palette_png", "read_palette_png", "write_mask_pngs",
    "rle_record", "ExpressionMasks", "write_segmentation", "is_segmentation_output", "MASKS_LAYOUT",
    "SEGMENTATION_LAYOUT", "SEGMENTATION_INDEX",
    # overlay
    "write_overlay_video", "h264_encoder",
    # files
    "OutputLayout", "check_output_dir", "check_output_file", "prepare_output_dir", "atomic_write",
    "atomic_output_dir", "atomic_write_text", "default_permissions", "temp_prefix",
    "remove_stale_temporaries", "is_leftover", "temporary_sibling", "sync_to_disk",
]
