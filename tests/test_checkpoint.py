import pytest
import torch

from nerfbs.train import checkpoint as ckpt
from nerfbs.config import Config
from nerfbs.errors import UserError


def _save(path, **over):
    kw = dict(config=Config(), step=7, model={"w": torch.ones(2)}, occupancy={"d": torch.zeros(3)}, optimizer=None,
              scaler=None, expressions={"num_coeffs": 46, "coeff_min": torch.zeros(46), "coeff_max": torch.ones(46),
                                        "coeff_names": []}, rng=None)
    kw.update(over)
    return ckpt.save_checkpoint(path, **kw)


def test_round_trip_keeps_config_and_step(tmp_path):
    path = _save(tmp_path / "a.pth")
    payload = ckpt.load_checkpoint(path)
    assert payload["config"] == Config() and payload["step"] == 7
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_corrupt_checkpoint_is_one_clear_error(tmp_path):
    path = _save(tmp_path / "a.pth")
    for damaged in (path.read_bytes()[:100], b"not a checkpoint at all"):
        path.write_bytes(damaged)
        with pytest.raises(UserError, match="a.pth: not a readable checkpoint") as err:
            ckpt.load_checkpoint(path)
        detail = str(err.value).split("(corrupt or truncated: ")[1].split(")")[0]
        assert len(detail) <= 101 and (detail.endswith("…") or "." not in detail), detail  # whole words


def test_checkpoint_written_with_a_retired_config_field_still_loads(tmp_path):
    """Checkpoints from before DataConfig.scale was removed carry it; it is dropped, other unknown keys refused."""
    path = _save(tmp_path / "old.pth")
    payload = torch.load(path, weights_only=True)
    payload["config"]["data"]["scale"] = 0.33
    torch.save(payload, path)
    assert ckpt.load_checkpoint(path)["config"] == Config()
    payload["config"]["data"]["brightness"] = 2.0
    torch.save(payload, path)
    with pytest.raises(UserError, match=r"unknown keys \['brightness'\]"):
        ckpt.load_checkpoint(path)


def test_foreign_file_and_missing_file(tmp_path):
    other = tmp_path / "other.pth"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(UserError, match="not a nerfbs checkpoint"):
        ckpt.load_checkpoint(other)
    with pytest.raises(UserError, match="no such checkpoint"):
        ckpt.load_checkpoint(tmp_path / "missing.pth")


def test_other_coefficient_count_is_refused_by_name(tmp_path):
    payload = ckpt.load_checkpoint(_save(tmp_path / "a.pth"))
    with pytest.raises(UserError, match="trained with 46 expression coefficients, but subj has 52"):
        ckpt.check_coefficient_count(payload, 52, path="a.pth", subject="subj")


def test_strict_state_loading_names_the_mismatch():
    module = torch.nn.Linear(3, 2)
    state = {"weight": torch.zeros(2, 4), "bias": torch.zeros(2)}
    with pytest.raises(UserError, match=r"shape mismatch weight \(2, 4\) vs \(2, 3\)"):
        ckpt.load_state_strict(module, state, what="model", path="x.pth")
