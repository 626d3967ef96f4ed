"""ssa.eval: DAVIS-2017 style J (region) and F (boundary) metrics for referring video segmentation."""

from ssa.eval.metrics import (
    boundary_tolerance,
    disk_kernel,
    f_score,
    j_score,
    jf,
    seg2bmap,
    summarize,
)

__all__ = ["boundary_tolerance", "disk_kernel", "f_score", "j_score", "jf", "seg2bmap", "summarize"]
