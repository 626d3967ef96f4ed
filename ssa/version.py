"""The version of ssa (one place: the package, the CLI, checkpoints and model cards read it here)."""

__version__ = "0.1.0"
