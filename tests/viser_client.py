"""A minimal viser browser stand-in for the tests: speaks viser's websocket protocol (msgpack messages out;
zstd-compressed msgpack windows in), reports a camera, presses GUI controls by label, and collects the
background images the viewer sends."""
from __future__ import annotations

import threading
from typing import Any, Optional

import cv2
import msgspec
import numpy as np
import viser
import zstandard
from viser import _messages
from websockets.sync.client import connect


class ViserTestClient:
    """Connects to ``url`` (http://host:port) as viser's web client would."""

    def __init__(self, url: str, timeout: float = 30.0):
        self._ws = connect(url.replace("http://", "ws://"), subprotocols=[f"viser-v{viser.__version__}"],
                           max_size=None, open_timeout=timeout)
        self._cond = threading.Condition()
        self.messages: list[dict[str, Any]] = []
        self.images: list[np.ndarray] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def close(self) -> None:
        self._ws.close()
        self._reader.join(5.0)

    def __enter__(self) -> "ViserTestClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------ send
    def send(self, message: _messages.Message) -> None:
        self._ws.send(msgspec.msgpack.encode(message.as_serializable_dict()))

    def camera(self, pose: np.ndarray, fov_y: float, width: int, height: int, look_at: np.ndarray) -> None:
        """Report the camera ``pose`` [4, 4] (camera-to-world, OpenCV axes) of a width x height canvas."""
        from nerfbs.viewer.camera import wxyz_from_rotation

        self.send(_messages.ViewerCameraMessage(
            wxyz=tuple(float(x) for x in wxyz_from_rotation(pose[:3, :3])),
            position=tuple(float(x) for x in pose[:3, 3]), fov=float(fov_y), near=0.01, far=1000.0,
            image_height=int(height), image_width=int(width), look_at=tuple(float(x) for x in look_at),
            up_direction=tuple(float(x) for x in -pose[:3, 1])))

    def gui_uuid(self, label: str, timeout: float = 10.0) -> str:
        """The uuid of the GUI element labelled ``label`` (waiting for the server to describe it)."""
        def find() -> Optional[str]:
            for m in self.messages:
                if m.get("type", "").startswith("Gui") and isinstance(m.get("props"), dict) \
                        and m["props"].get("label") == label:
                    return m["uuid"]
            return None

        with self._cond:
            if not self._cond.wait_for(lambda: find() is not None, timeout):
                raise TimeoutError(f"no GUI element labelled {label!r}")
            return find()

    def set_gui(self, label: str, value: Any) -> None:
        """Set an input (or, with True, press a button) as a user would."""
        self.send(_messages.GuiUpdateMessage(self.gui_uuid(label), {"value": value}))

    def _read(self) -> None:
        zstd = zstandard.ZstdDecompressor()
        try:
            for raw in self._ws:
                inner_size = int.from_bytes(raw[:8], "little")
                compressed_size = int.from_bytes(raw[8:16], "little")
                window = msgspec.msgpack.decode(zstd.decompress(raw[16:16 + compressed_size], max_output_size=inner_size))
                with self._cond:
                    for message in window["messages"]:
                        self.messages.append(message)
                        if message.get("type") == "BackgroundImageMessage" and message.get("rgb_data"):
                            data = np.frombuffer(message["rgb_data"], np.uint8)
                            image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
                            order = [2, 1, 0, 3] if image.shape[-1] == 4 else [2, 1, 0]
                            self.images.append(image[..., order])
                    self._cond.notify_all()
        except Exception:  # the connection closed
            with self._cond:
                self._cond.notify_all()
