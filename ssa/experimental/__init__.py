"""Experimental parts: **not in the official SSA network**.

Nothing here runs unless a config switches it on (``SSAConfig.experimental_*``, off by default), and an
official checkpoint never does. Each part states what it adds and what it was measured to do.

- :mod:`ssa.experimental.motion`: pixel motion features (``SSAConfig.experimental_motion_features``),
  meant to tell look-alike objects apart by how they move; tried on the demo model (docs/demo-model.md:
  no measurable gain when added to a trained model, so the shipped model does not use them).
"""
