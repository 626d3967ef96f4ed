"""Experimental parts: **not in the official SSA network**.

Nothing here runs unless a config switches it on (``SSAConfig.experimental_*``, off by default), and an
official checkpoint never does. Each part states what it adds and what it was measured to do.

- :mod:`ssa.experimental.motion`: pixel motion features (``SSAConfig.experimental_motion_features``),
  used by the bundled demo model ``ssa-tiny-synthetic`` to tell look-alike objects apart by how they move.
"""
