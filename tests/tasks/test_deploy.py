"""tasks/deploy.py: reading evaluate's probabilities back and comparing served predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tasks import deploy
from tasks.deploy import compare, expected_probabilities
from tasks.evaluate import predictions_csv
from tasks.lib.config import DeployParams, Params
from tasks.lib.errors import TrainflowError

CLASSES = ("a", "b", "c")


def probabilities(n: int, seed: int) -> np.ndarray:
    raw = np.random.default_rng(seed).random((n, 3)).astype(np.float32)
    return raw / raw.sum(axis=1, keepdims=True)


def test_expected_probabilities_reads_test_rows_only(tmp_path: Path) -> None:
    val, test = probabilities(4, 0), probabilities(6, 1)
    path = tmp_path / "predictions.csv"
    results = {"val": (np.zeros(4, int), val), "test": (np.ones(6, int), test)}
    path.write_bytes(predictions_csv(results, CLASSES))
    got = expected_probabilities(path, 5)
    assert got.dtype == np.float32 and got.shape == (5, 3)
    np.testing.assert_allclose(got, test[:5], rtol=1e-6)
    assert expected_probabilities(path, 100).shape == (6, 3)


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


def _gate(params: Params, **deploy: object) -> DeployParams:
    return params.deploy.model_copy(update={"min_metric": 0.5, "require_significance": True, **deploy})


def _champion(accuracy: float, b: int, c: int) -> dict:
    return {
        "champion": {"version": 1, "comparable": True, "metrics": {"accuracy": accuracy}},
        "paired": {"b": b, "c": c},
    }


def test_mcnemar_exact_p_values() -> None:
    assert deploy.mcnemar_p_value(10, 0) == pytest.approx(2 * 0.5**10)
    assert deploy.mcnemar_p_value(5, 5) == pytest.approx(1.0)
    assert deploy.mcnemar_p_value(0, 0) == 1.0


def test_gate_promotes_the_first_model_above_the_minimum(params: Params) -> None:
    assert deploy.decide({"accuracy": 0.8}, {"champion": None}, _gate(params))["promote"] is True
    below = deploy.decide({"accuracy": 0.4}, {"champion": None}, _gate(params))
    assert below["promote"] is False and "below deploy.min_metric" in below["reason"]


def test_gate_needs_a_significant_improvement_unless_params_waive_it(params: Params) -> None:
    slightly_better = _champion(0.80, b=3, c=1)
    decision = deploy.decide({"accuracy": 0.81}, slightly_better, _gate(params))
    assert decision["promote"] is False and "not significantly" in decision["reason"]
    assert deploy.decide({"accuracy": 0.81}, slightly_better, _gate(params, require_significance=False))["promote"]
    much_better = deploy.decide({"accuracy": 0.95}, _champion(0.80, b=40, c=2), _gate(params))
    assert much_better["promote"] is True and much_better["p_value"] < 0.05


def test_gate_never_promotes_a_tie_or_a_worse_candidate(params: Params) -> None:
    for accuracy in (0.80, 0.70):
        decision = deploy.decide(
            {"accuracy": accuracy}, _champion(0.80, b=0, c=5), _gate(params, require_significance=False)
        )
        assert decision["promote"] is False and "does not beat" in decision["reason"]
