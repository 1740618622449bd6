"""A talking-head video to a subject: decoding and face tracking (``tracking``), head masks and the background
(``masks``) and ``nerfbs preprocess`` itself (``pipeline``)."""
