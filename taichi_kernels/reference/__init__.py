"""Plain-PyTorch twins of every Taichi kernel: same names and signatures, used by the tests and
usable as a slow fallback."""
