"""Held-out scores: image metrics (``metrics``) and the evaluation of rendered frames with its report (``report``)."""
