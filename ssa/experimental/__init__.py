"""Experimental parts: **not in the official SSA network**.

Nothing here runs unless a config switches it on (``SSAConfig.experimental_*``, off by default), and an
official checkpoint never does. Each part states what it adds and what it was measured to do.

- :mod:`ssa.experimental.motion`: pixel motion features (``SSAConfig.experimental_motion_features``),
  to tell look-alike objects apart by how they move. The bundled demo model uses them from its first
  iteration: same recipe and budget, held-out J&F 0.673 vs 0.595 without, motion-only 0.597 vs 0.464
  (docs/demo-model.md). Added to an already trained model they made no measurable difference.
"""
