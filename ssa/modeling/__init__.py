"""The SSA network (the official ``SSAlignment`` of github.com/Tavarich/SSA), one module per component, in
data-flow order:

backbone (frozen CLIP, Eq. 2) with an adapter between its stages (Eq. 3-4) → fusion (text resizer and the
pixel decoder's text fusion, Eq. 5) → pixel_decoder → frame_decoder → sequential_alignment (trajectories,
Eq. 6, Eq. 7) → video_decoder → selection. ``model.SSAModel`` wires them together.
"""
