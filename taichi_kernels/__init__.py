"""Taichi kernels for nerfbs: blended hash encoding, occupancy grid, ray marching, the inference loop,
volume compositing and the colour MLP's input, each wrapped for torch autograd where it is differentiated.

Nothing here initialises Taichi at import time (``runtime.ensure_initialized`` does, once), and nothing
here knows datasets, faces or models: the field reaches the kernels as a callback. Import the modules:
``from taichi_kernels.march import march_rays_train``.
"""

__all__ = ["runtime", "grid_layout", "hash_grid", "occupancy", "samples", "march", "inference", "composite",
           "color_input", "reference"]
