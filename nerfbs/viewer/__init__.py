"""``nerfbs view``: a live web viewer of a trained avatar, built on viser.

The modules keep the web and the renderer apart, as nerfstudio's viewer does: ``camera`` converts the
browser's camera into the renderer's pose and intrinsics; ``state`` records the newest camera, sliders and
settings (written by the web server's threads, read by the render thread); ``frames`` renders an image from
a pose, intrinsics and a coefficient vector (nothing of the web); ``loop`` is the one render thread;
``player`` plays a sequence's frames; ``gui`` binds viser's panel to the state; ``server`` starts it all.
Only ``gui`` and ``server`` import viser.
"""
