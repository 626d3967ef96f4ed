"""ssa.eval: DAVIS-2017 style J (region) and F (boundary) metrics for referring video segmentation,
the evaluation runner (:func:`evaluate`) and submission files (:mod:`ssa.eval.submission`)."""

from ssa.eval.evaluate import CSV_COLUMNS, EvaluationSummary, ExpressionScore, evaluate
from ssa.eval.metrics import (
    boundary_tolerance,
    disk_kernel,
    f_score,
    j_score,
    jf,
    seg2bmap,
    summarize,
)
from ssa.eval.submission import (
    prediction_path,
    read_mask_png,
    read_prediction,
    write_prediction,
    zip_submission,
)

__all__ = [
    "boundary_tolerance",
    "disk_kernel",
    "f_score",
    "j_score",
    "jf",
    "seg2bmap",
    "summarize",
    "evaluate",
    "EvaluationSummary",
    "ExpressionScore",
    "CSV_COLUMNS",
    "prediction_path",
    "read_mask_png",
    "read_prediction",
    "write_prediction",
    "zip_submission",
]
