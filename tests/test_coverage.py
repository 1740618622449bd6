"""nerfbs.data.coverage: how well the training frames' expressions cover the held-out frames'."""
import numpy as np
import pytest

from nerfbs.data.coverage import NEIGHBOUR_GAP, expression_coverage

NAMES = ["jawOpen", "browInnerUp", "eyeBlinkLeft"]


def _frames(n: int, seed: int, low: float = 0.0, high: float = 0.6) -> np.ndarray:
    return np.random.default_rng(seed).uniform(low, high, (n, len(NAMES)))


def test_held_out_values_beyond_the_training_range_are_named_largest_first():
    train = _frames(60, 0)
    held = _frames(10, 1)
    held[3, 0] = train[:, 0].max() + 0.30  # jawOpen far above the range
    held[5, 2] = train[:, 2].min() - 0.10  # eyeBlinkLeft below it
    held[7, 1] = train[:, 1].max() + 0.02  # browInnerUp within the tolerance
    cov = expression_coverage(np.concatenate([train, held]), 60, NAMES)
    assert [name for name, _ in cov.beyond] == ["jawOpen", "eyeBlinkLeft"]
    assert cov.beyond[0][1] == pytest.approx(0.30) and cov.beyond[1][1] == pytest.approx(0.10)
    assert cov.worrying
    line = cov.summary()
    assert line.startswith("2 of 3 coefficients beyond the training range (jawOpen +0.30, eyeBlinkLeft +0.10)")


def test_held_out_frames_like_the_training_ones_are_not_worrying_and_new_ones_are():
    train = _frames(200, 2)
    alike = expression_coverage(np.concatenate([train, _frames(40, 3)]), 200, NAMES)
    assert not alike.beyond and 0.5 < alike.distance_ratio < 1.25 and not alike.worrying
    assert alike.summary().startswith("all 3 coefficients within the training range; held-out expressions ")
    # The same range, but every held-out frame in a corner the training frames never visit.
    corner = train[(train[:, 0] < 0.3) | (train[:, 1] < 0.3)]
    held = np.column_stack([np.full(40, 0.55), np.full(40, 0.55), np.linspace(0.0, 0.6, 40)])
    new = expression_coverage(np.concatenate([corner, held]), len(corner), NAMES)
    assert not new.beyond and new.distance_ratio > 1.25 and new.worrying


def test_neighbouring_training_frames_do_not_count_as_each_others_cover():
    # Every expression held for NEIGHBOUR_GAP + 1 frames: without the gap the training spacing would be 0.
    distinct = _frames(40, 4)
    train = np.repeat(distinct, NEIGHBOUR_GAP + 1, axis=0)
    cov = expression_coverage(np.concatenate([train, _frames(5, 5)]), len(train), NAMES)
    assert cov.train_distance > 0.01


def test_names_fall_back_to_indices_and_short_training_sets_give_no_ratio():
    coeffs = _frames(12, 6)
    coeffs[-1, 1] = 5.0
    cov = expression_coverage(coeffs, 10, names=None)
    assert cov.beyond[0][0] == "1" and cov.train_distance is None and cov.distance_ratio is None
    assert "held-out expressions" not in cov.summary()


@pytest.mark.parametrize("num_train", [0, 12])
def test_bad_splits_raise(num_train):
    with pytest.raises(ValueError, match="num_train"):
        expression_coverage(_frames(12, 7), num_train)
