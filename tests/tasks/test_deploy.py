"""tasks/deploy.py: reading evaluate's probabilities back, and the gate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tasks import deploy
from tasks.deploy import expected_probabilities
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


def _gate(params: Params, **deploy: object) -> DeployParams:
    return params.deploy.model_copy(update={"min_metric": 0.5, "require_significance": True, **deploy})


RECALL = {"a": 0.9, "b": 0.8, "c": 0.85}


def _champion(accuracy: float, b: int, c: int, recall: dict[str, float] | None = None) -> dict:
    return {
        "champion": {"version": 1, "status": "scored", "metrics": {"accuracy": accuracy}, "recall": recall or RECALL},
        "paired": {"b": b, "c": c},
    }


def test_mcnemar_exact_p_values() -> None:
    assert deploy.mcnemar_p_value(10, 0) == pytest.approx(2 * 0.5**10)
    assert deploy.mcnemar_p_value(5, 5) == pytest.approx(1.0)
    assert deploy.mcnemar_p_value(0, 0) == 1.0


def test_gate_promotes_the_first_model_above_the_minimum(params: Params) -> None:
    assert deploy.decide({"accuracy": 0.8}, RECALL, {"champion": None}, _gate(params))["promote"] is True
    below = deploy.decide({"accuracy": 0.4}, RECALL, {"champion": None}, _gate(params))
    assert below["promote"] is False and "below deploy.min_metric" in below["reason"]


def test_gate_needs_a_significant_improvement_unless_params_waive_it(params: Params) -> None:
    slightly_better = _champion(0.80, b=3, c=1)
    decision = deploy.decide({"accuracy": 0.81}, RECALL, slightly_better, _gate(params))
    assert decision["promote"] is False and "not significantly" in decision["reason"]
    waived = _gate(params, require_significance=False)
    assert deploy.decide({"accuracy": 0.81}, RECALL, slightly_better, waived)["promote"]
    much_better = deploy.decide({"accuracy": 0.95}, RECALL, _champion(0.80, b=40, c=2), _gate(params))
    assert much_better["promote"] is True and much_better["p_value"] < 0.05


def test_gate_never_promotes_a_tie_or_a_worse_candidate(params: Params) -> None:
    for accuracy in (0.80, 0.70):
        decision = deploy.decide(
            {"accuracy": accuracy}, RECALL, _champion(0.80, b=0, c=5), _gate(params, require_significance=False)
        )
        assert decision["promote"] is False and "does not beat" in decision["reason"]


def test_a_better_candidate_that_drops_a_class_is_not_promoted_and_the_reason_names_it(params: Params) -> None:
    worse_on_b = {"a": 0.99, "b": 0.70, "c": 0.95}  # b: 0.80 → 0.70
    decision = deploy.decide({"accuracy": 0.95}, worse_on_b, _champion(0.80, b=40, c=2), _gate(params))
    assert decision["promote"] is False
    assert "recall of class 'b' drops by 0.1000 > deploy.max_class_recall_drop" in decision["reason"]
    assert decision["class_recall_drops"] == {"b": 0.1}
    lenient = _gate(params, max_class_recall_drop=0.15)
    assert deploy.decide({"accuracy": 0.95}, worse_on_b, _champion(0.80, b=40, c=2), lenient)["promote"] is True


def test_a_champion_with_another_contract_keeps_its_alias_unless_asked(params: Params) -> None:
    other = {"champion": {"version": 4, "status": "other_contract", "why": "its input_shape [8, 8, 1] vs [28, 28, 1]"}}
    kept = deploy.decide({"accuracy": 0.95}, RECALL, other, _gate(params))
    assert kept["promote"] is False and "champion v4 has another input contract" in kept["reason"]
    assert "deploy.allow_new_contract" in kept["reason"]
    assert deploy.decide({"accuracy": 0.95}, RECALL, other, _gate(params, allow_new_contract=True))["promote"] is True


def test_an_unscorable_champion_stops_deploy_unless_the_user_opts_in(params: Params) -> None:
    lost = {"champion": {"version": 2, "status": "unscorable", "why": "No such file or directory: '/old/mlartifacts'"}}
    with pytest.raises(TrainflowError, match=r"v2 \(the champion\) cannot be scored .*/old/mlartifacts"):
        deploy.decide({"accuracy": 0.95}, RECALL, lost, _gate(params))
    opted = deploy.decide({"accuracy": 0.95}, RECALL, lost, _gate(params, replace_unscorable_champion=True))
    assert opted["promote"] is True and "replace_unscorable_champion" in opted["reason"]
