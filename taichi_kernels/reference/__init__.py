"""Plain-PyTorch twins of the Taichi kernels, one module per kernel module and named after it, with the same
function names and signatures; no Taichi imports. Used by the tests (and usable as a slow fallback)."""

__all__ = ["hash_grid", "occupancy", "march", "inference", "composite", "color_input"]
