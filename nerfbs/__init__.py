"""nerfbs: NeRFBlendShape head avatars with Taichi kernels and a PyTorch MLP."""

__version__ = "0.1.0"
