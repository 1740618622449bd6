"""Taichi kernels for nerfbs: blended hash encoding, occupancy marching, volume compositing.

Nothing here initialises Taichi at import time; see ``runtime.ensure_initialized``.
"""
