"""The SSA network, one module per component of the paper, in data-flow order:

backbone (frozen CLIP, Eq. 2) → adapter (Eq. 3-4) → pixel_decoder → query_generation (Eq. 5)
→ frame_decoder → sequential_alignment (trajectories, Eq. 6, Eq. 7) → video_decoder → selection.
``model.SSAModel`` wires them together.
"""
