"""The subject: reading the NeRFBlendShape layout (``subject``), its cameras (``camera``), ray batches drawn
from its frames (``rays``) and writing a subject in the same layout (``writer``)."""
