"""tests/assets.py: a missing model or video skips with its name and how to get it, and fails under CI."""
import subprocess
import sys
import textwrap

import pytest

import assets


def test_asset_is_found_under_the_configured_folder(tmp_path, monkeypatch):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.task").write_bytes(b"x")
    monkeypatch.setenv(assets.ENV, str(tmp_path))
    assert assets.asset("models/m.task") == tmp_path / "models" / "m.task"


def _run_missing(tmp_path, env_ci: str) -> subprocess.CompletedProcess:
    """Run a one-test file that asks for a missing asset, in a child pytest (its outcome is what we test)."""
    test = tmp_path / "test_needs_asset.py"
    test.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(assets.REPO / "tests")!r})
        from assets import asset

        def test_it():
            asset("models/face_landmarker_v2_with_blendshapes.task")
    """))
    env = {"PATH": "/usr/bin:/bin", assets.ENV: str(tmp_path / "empty"), "CI": env_ci}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(test)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_missing_asset_skips_naming_the_file_and_the_source(tmp_path):
    result = _run_missing(tmp_path, env_ci="")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 skipped" in result.stdout
    assert "missing " in result.stdout and "models/face_landmarker_v2_with_blendshapes.task" in result.stdout
    assert assets.ENV in result.stdout and "storage.googleapis.com" in result.stdout


def test_missing_asset_fails_under_ci(tmp_path):
    result = _run_missing(tmp_path, env_ci="true")
    assert result.returncode == 1 and "1 failed" in result.stdout, result.stdout + result.stderr
    assert "CI=true: missing " in result.stdout and "face_landmarker_v2_with_blendshapes.task" in result.stdout


def test_default_folder_is_shared_beside_the_repository(monkeypatch):
    monkeypatch.delenv(assets.ENV, raising=False)
    expected = assets.DEFAULT_ROOT if assets.DEFAULT_ROOT.is_dir() else None
    assert assets.assets_root() == expected
    with pytest.raises(pytest.skip.Exception if not assets.in_ci() else pytest.fail.Exception):
        monkeypatch.setenv(assets.ENV, "/nonexistent-nerfbs-assets")
        assets.asset("videos/none.mp4")
