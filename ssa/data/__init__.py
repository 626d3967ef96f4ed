"""Dataset readers (MeViS, Ref-YouTube-VOS, Ref-DAVIS) and training clip sampling."""

from ssa.data.datasets import ClipSampler, MeViSDataset, RefDAVISDataset, RefYouTubeVOSDataset, Sample

__all__ = ["Sample", "MeViSDataset", "RefYouTubeVOSDataset", "RefDAVISDataset", "ClipSampler"]
