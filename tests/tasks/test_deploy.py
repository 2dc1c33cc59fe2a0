"""tasks/deploy.py: reading evaluate's probabilities back, the gate (with drift), the model fingerprint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tasks import deploy
from tasks.deploy import expected_probabilities
from tasks.evaluate import predictions_csv
from tasks.lib.config import DeployParams, Params
from tasks.lib.errors import TrainflowError
from tests.conftest import copy_run
from tests.helpers import sh

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


def test_the_gate_compares_the_metric_deploy_metric_names(params: Params) -> None:
    """Catches a gate that compares accuracy whatever ``deploy.metric`` says (never exercised before)."""
    champion = _champion(0.80, b=40, c=2)
    champion["champion"]["metrics"]["f1_macro"] = 0.75
    better_accuracy_worse_f1 = {"accuracy": 0.95, "f1_macro": 0.70}
    on_f1 = _gate(params, metric="f1_macro")
    decision = deploy.decide(better_accuracy_worse_f1, RECALL, champion, on_f1)
    assert decision["promote"] is False and decision["reason"] == "f1_macro 0.7000 does not beat the champion's 0.7500"
    assert decision["metric"] == "f1_macro" and decision["candidate"] == 0.70
    assert deploy.decide(better_accuracy_worse_f1, RECALL, champion, _gate(params))["promote"] is True  # on accuracy
    below = deploy.decide({"accuracy": 0.95, "f1_macro": 0.4}, RECALL, {"champion": None}, on_f1)
    assert below["promote"] is False and below["reason"].startswith("f1_macro 0.4000 is below deploy.min_metric")


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


def _drift(params: Params, action: str, reference: dict, current: dict) -> dict:
    from tasks.lib import drift

    validation = params.validation.model_copy(update={"drift_action": action})
    return drift.assess(reference, "pets v1 (run r1): train/reference_stats.json", current, validation)


def test_drift_with_drift_action_fail_blocks_promotion_and_the_reason_names_it(params: Params) -> None:
    from tasks.lib import drift

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (300, 6, 6, 1), dtype=np.uint8), np.arange(300) % 3
    reference = drift.statistics([(x, y)], CLASSES)
    darker = drift.statistics([(x // 3, y)], CLASSES)
    better = _champion(0.80, b=40, c=2)

    blocked = deploy.decide(
        {"accuracy": 0.95}, RECALL, better, _gate(params), _drift(params, "fail", reference, darker)
    )
    assert blocked["promote"] is False
    assert blocked["reason"].startswith("data drift against pets v1 (run r1): train/reference_stats.json: intensity")
    assert "validation.drift_action=fail" in blocked["reason"]
    warned = _drift(params, "warn", reference, darker)
    assert (
        warned["drifted"] is True
        and deploy.decide({"accuracy": 0.95}, RECALL, better, _gate(params), warned)["promote"]
    )
    same = _drift(params, "fail", reference, reference)
    assert same["checked"] is True and same["drifted"] is False
    assert deploy.decide({"accuracy": 0.95}, RECALL, better, _gate(params), same)["promote"] is True
    ignored = _drift(params, "ignore", reference, darker)
    assert ignored["checked"] is False and ignored["why"] == "validation.drift_action=ignore"

    other = drift.statistics([(x, y)], ("x", "y", "z"))  # data of other classes: not comparable, blocked under fail
    refused = deploy.decide({"accuracy": 0.95}, RECALL, better, _gate(params), _drift(params, "fail", reference, other))
    assert refused["promote"] is False and "not comparable with pets v1" in refused["reason"]


def _model(seed: int) -> object:
    from tasks.lib.quiet import import_keras

    keras = import_keras()
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.Dense(5)(inputs)))


def test_the_fingerprint_is_the_architecture_and_weights_not_the_file(tmp_path: Path) -> None:
    import time

    from tasks.lib.quiet import import_keras

    keras = import_keras()
    model = _model(0)
    model.save(tmp_path / "a.keras")
    time.sleep(1.1)  # the .keras file records when it was saved
    model.save(tmp_path / "b.keras")
    assert (tmp_path / "a.keras").read_bytes() != (tmp_path / "b.keras").read_bytes()
    a, b = (keras.saving.load_model(tmp_path / f"{n}.keras", compile=False) for n in "ab")
    assert deploy.fingerprint(a) == deploy.fingerprint(b) == deploy.fingerprint(model)
    assert deploy.fingerprint(_model(1)) != deploy.fingerprint(model)  # other weights
    weights = model.get_weights()
    weights[-1] = weights[-1] + 1e-6
    model.set_weights(weights)
    assert deploy.fingerprint(model) != deploy.fingerprint(a)  # one bias moved


# ---- the stage end to end, on a tiny `dvc repro` (tests/conftest.py: tiny_run) ----


def _read(root: Path, path: str) -> dict:
    return json.loads((root / path).read_text())


def _versions(root: Path, name: str) -> list[int]:
    from mlflow import MlflowClient

    store = f"sqlite:///{root / 'mlflow.db'}"
    found = MlflowClient(tracking_uri=store, registry_uri=store).search_model_versions(f"name='{name}'")
    return sorted(int(v.version) for v in found)


@pytest.mark.slow
def test_an_identical_model_is_not_registered_again(tiny_run: Path, tmp_path: Path) -> None:
    root = copy_run(tiny_run, tmp_path / "workspace")
    first = _read(root, "reports/deploy.json")
    name = first["registry"]["model_name"]
    assert first["registry"]["registered"] is True and _versions(root, name) == [1]
    assert first["drift"]["why"] == f"no reference yet: {name} has no champion"  # v1 was the first

    sh(root, "python", "-m", "tasks.deploy")  # the same candidate again: as a second driver's run would
    again = _read(root, "reports/deploy.json")
    assert _versions(root, name) == [1]
    assert again["registry"] == {
        "model_name": name,
        "version": 1,
        "alias": "champion",
        "registered": False,
        "model_uri": f"models:/{name}/1",
    }
    assert again["gate"]["identical_to"] == 1 and again["gate"]["promote"] is False
    assert again["gate"]["reason"].startswith(f"identical to {name} v1 (@champion)")
    assert again["fingerprint"] == first["fingerprint"] and again["aliases"] == {"champion": 1}
    sh(root, "python", "-m", "tasks.report")
    assert "Not registered again: identical to v1" in (root / "reports/report.html").read_text()


def test_the_log_says_there_is_no_champion_rather_than_that_it_is_unchanged() -> None:
    gate = {"promote": False, "reason": "accuracy 0.4000 is below deploy.min_metric 0.9"}
    first = deploy.outcome("m", 1, gate, None)
    assert first.endswith("; there is no champion yet") and "unchanged" not in first
    assert deploy.outcome("m", 3, gate, {"version": 2}).endswith("; the champion stays version 2")
    promoted = deploy.outcome("m", 3, {"promote": True, "reason": "no champion yet"}, None)
    assert promoted == "m version 3 is the new champion: no champion yet"
