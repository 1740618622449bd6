"""Using a trained avatar: rebuilding it from a checkpoint (``avatar``), where coefficients come from
(``expressions``), cameras never in the data (``views``), render jobs (``job``) and mp4 export (``video``)."""
