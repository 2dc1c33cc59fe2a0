"""tasks/lib/serving_check.py: comparing the served answers with evaluate's (the server itself: test_tracking.py)."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.lib.errors import TrainflowError
from tasks.lib.serving_check import compare


def probabilities(n: int, seed: int) -> np.ndarray:
    raw = np.random.default_rng(seed).random((n, 3)).astype(np.float32)
    return raw / raw.sum(axis=1, keepdims=True)


def test_compare_ok_within_tolerance() -> None:
    expected = probabilities(8, 2)
    check = compare(expected, expected + 1e-6, tolerance=1e-4)
    assert check["ok"] is True and check["classes_agree"] is True
    assert check["checked"] == 8
    assert 0 < check["max_abs_diff"] < 1e-4


def test_compare_fails_beyond_tolerance() -> None:
    expected = probabilities(8, 3)
    served = expected.copy()
    served[2, 0] += 0.001
    check = compare(expected, served, tolerance=1e-4)
    assert check["ok"] is False and check["classes_agree"] is True
    assert check["max_abs_diff"] == pytest.approx(0.001, rel=1e-3)


def test_compare_fails_when_classes_disagree_within_tolerance() -> None:
    expected = np.array([[0.50001, 0.49999], [0.9, 0.1]], dtype=np.float32)
    served = np.array([[0.49999, 0.50001], [0.9, 0.1]], dtype=np.float32)
    check = compare(expected, served, tolerance=1e-3)
    assert check["classes_agree"] is False and check["ok"] is False


def test_compare_shape_mismatch_is_an_error() -> None:
    with pytest.raises(TrainflowError, match=r"served output shape \(4, 2\) != expected \(4, 3\)"):
        compare(probabilities(4, 4), np.zeros((4, 2), np.float32), tolerance=1e-4)
