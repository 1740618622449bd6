"""The field rendered along rays: training renders of ray batches and inference renders (``rays``), whole
images from a camera (``image``), the occupancy grid's refresh, and the distortion measure (``distortion``)."""
