"""export-video: numeric frame order, even padding, side by side, clear errors, no partial mp4, and the CLI."""
from pathlib import Path

import cv2
import imageio.v2 as imageio
import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from nerfbs.errors import UserError
from nerfbs.export.video import export_video, list_frames, read_rgb


def _write(path: Path, h: int, w: int, rgb: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.empty((h, w, 3), np.uint8)
    image[:] = rgb
    assert cv2.imwrite(str(path), image[..., ::-1])


def _read_back(path: Path) -> tuple[list[np.ndarray], dict]:
    with imageio.get_reader(path, format="FFMPEG") as reader:
        return [frame for frame in reader], reader.get_meta_data()


def test_round_trip_in_numeric_order_skipping_novel_views(tmp_path):
    frames = tmp_path / "frames"
    greys = {1: 40, 2: 90, 10: 140, 11: 200}  # lexicographic order would put 10 and 11 before 2
    for number, grey in greys.items():
        _write(frames / f"{number}.png", 24, 32, (grey, grey, grey))
    _write(frames / "0001_nvs.png", 24, 32, (255, 0, 0))
    (frames / "notes.txt").write_text("not a frame")
    assert [p.name for p in list_frames(frames)] == ["1.png", "2.png", "10.png", "11.png"]
    calls = []
    out = tmp_path / "out" / "video.mp4"
    count, size = export_video(frames, out, fps=10, progress=lambda done, total: calls.append((done, total)))
    assert (count, size) == (4, (24, 32))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    back, meta = _read_back(out)
    assert len(back) == 4 and back[0].shape == (24, 32, 3)
    assert meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p") and meta["fps"] == pytest.approx(10)
    np.testing.assert_allclose([f.mean() for f in back], list(greys.values()), atol=4)
    assert sorted(p.name for p in out.parent.iterdir()) == ["video.mp4"]


def test_odd_sizes_are_padded_to_even(tmp_path):
    for i in range(2):
        _write(tmp_path / "f" / f"{i:04d}.jpg", 21, 33, (200, 100, 50))
    count, size = export_video(tmp_path / "f", tmp_path / "odd.mp4")
    assert (count, size) == (2, (22, 34))
    back, _ = _read_back(tmp_path / "odd.mp4")
    assert len(back) == 2 and back[0].shape == (22, 34, 3)
    assert np.abs(back[1][-1, -1].astype(int) - [200, 100, 50]).max() < 12  # the edge is repeated, not black


def test_alpha_grey_and_16_bit_frames_become_rgb(tmp_path):
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., :3] = (10, 20, 200)  # BGR: red 200
    rgba[:2, :, 3] = 255  # top half opaque, bottom half transparent
    cv2.imwrite(str(tmp_path / "a.png"), rgba)
    image = read_rgb(tmp_path / "a.png")
    assert image.shape == (4, 6, 3)
    np.testing.assert_array_equal(image[0, 0], [200, 20, 10])
    np.testing.assert_array_equal(image[3, 0], [255, 255, 255])
    cv2.imwrite(str(tmp_path / "g.png"), np.full((4, 6), 65535, np.uint16))
    np.testing.assert_array_equal(read_rgb(tmp_path / "g.png"), np.full((4, 6, 3), 255, np.uint8))


def test_side_by_side_puts_the_second_folder_on_the_right(tmp_path):
    for i in range(3):
        _write(tmp_path / "pred" / f"{i:04d}.png", 16, 20, (30, 30, 30))
        _write(tmp_path / "truth" / f"{i:04d}.png", 16, 14, (220, 220, 220))
    count, size = export_video(tmp_path / "pred", tmp_path / "both.mp4", side_by_side=tmp_path / "truth")
    assert (count, size) == (3, (16, 34))
    back, _ = _read_back(tmp_path / "both.mp4")
    assert len(back) == 3
    assert back[2][:, :16].mean() < 50 and back[2][:, 24:].mean() > 200

    _write(tmp_path / "short" / "0000.png", 16, 14, (0, 0, 0))
    with pytest.raises(UserError, match="same number of frames"):
        export_video(tmp_path / "pred", tmp_path / "x.mp4", side_by_side=tmp_path / "short")
    for i in range(3):
        _write(tmp_path / "taller" / f"{i:04d}.png", 18, 14, (0, 0, 0))
    with pytest.raises(UserError, match="one height"):
        export_video(tmp_path / "pred", tmp_path / "x.mp4", side_by_side=tmp_path / "taller")
    assert not (tmp_path / "x.mp4").exists()


def test_empty_and_mixed_size_folders_are_refused(tmp_path):
    _write(tmp_path / "empty" / "0000_nvs.png", 8, 8, (0, 0, 0))
    with pytest.raises(UserError, match="no numbered frames"):
        export_video(tmp_path / "empty", tmp_path / "x.mp4")
    with pytest.raises(UserError, match="no such folder"):
        export_video(tmp_path / "missing", tmp_path / "x.mp4")
    _write(tmp_path / "mixed" / "0000.png", 16, 16, (0, 0, 0))
    _write(tmp_path / "mixed" / "0001.png", 16, 18, (0, 0, 0))
    with pytest.raises(UserError, match="differ in size"):
        export_video(tmp_path / "mixed", tmp_path / "x.mp4")
    _write(tmp_path / "twice" / "1.png", 16, 16, (0, 0, 0))
    _write(tmp_path / "twice" / "0001.jpg", 16, 16, (0, 0, 0))
    with pytest.raises(UserError, match="both frame 1"):
        export_video(tmp_path / "twice", tmp_path / "x.mp4")
    assert not (tmp_path / "x.mp4").exists()


def test_an_interrupted_export_leaves_no_file_and_keeps_the_old_one(tmp_path):
    for i in range(4):
        _write(tmp_path / "f" / f"{i:04d}.png", 16, 16, (100, 100, 100))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    old = out_dir / "video.mp4"
    old.write_bytes(b"previous video")

    def interrupt(done, total):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_video(tmp_path / "f", old, progress=interrupt)
    assert old.read_bytes() == b"previous video"
    with pytest.raises(KeyboardInterrupt):
        export_video(tmp_path / "f", out_dir / "new.mp4", progress=interrupt)
    assert sorted(p.name for p in out_dir.iterdir()) == ["video.mp4"]


def test_cli_exports_and_reports(tmp_path):
    for i in range(3):
        _write(tmp_path / "f" / f"{i:04d}.png", 16, 16, (100, 100, 100))
    out = tmp_path / "cli.mp4"
    result = CliRunner().invoke(app, ["export-video", str(tmp_path / "f"), "-o", str(out), "--fps", "12"])
    assert result.exit_code == 0, result.output
    assert f"wrote 3 frames (16x16, 12 fps) to {out}" in result.output
    back, meta = _read_back(out)
    assert len(back) == 3 and meta["fps"] == pytest.approx(12)

    (tmp_path / "none").mkdir()
    result = CliRunner().invoke(app, ["export-video", str(tmp_path / "none"), "-o", str(tmp_path / "no.mp4")])
    assert result.exit_code == 2
    assert "no numbered frames" in result.output and not (tmp_path / "no.mp4").exists()
