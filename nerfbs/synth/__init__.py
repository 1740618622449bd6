"""The procedural talking head with exact truth: expression controls and an SDF (``head``), its landmarks
(``landmarks``), sphere tracing of its frames (``raytrace``) and ``nerfbs synth`` itself (``generate``)."""
