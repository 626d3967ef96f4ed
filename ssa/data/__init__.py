"""Dataset readers (MeViS, Ref-YouTube-VOS, Ref-DAVIS) and training clip sampling."""

from ssa.data.datasets import (
    ClipSampler,
    MeViSDataset,
    RefDAVISDataset,
    ReferringVideoDataset,
    RefYouTubeVOSDataset,
    Sample,
)

__all__ = ["Sample", "ReferringVideoDataset", "MeViSDataset", "RefYouTubeVOSDataset", "RefDAVISDataset",
           "ClipSampler"]
