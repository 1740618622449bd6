"""Training: the loop (``loop``), checkpoints (``checkpoint``), the run's folder (``workspace``), the
perceptual loss (``perceptual``) and the training curves (``plot``)."""
