"""deploy: the candidate against the registry's champion (drift, gate), checked as served, registered, aliases moved.

The only stage that touches the model registry (tasks/lib/registry.py): every other stage is a pure function of its
DVC dependencies and params. deploy reads the champion, scores it on the candidate's test split
(:func:`score_champion`), compares the candidate's data with the champion's training data (drift), and decides
(:func:`decide`, TFX's blessing made stricter: a minimum, no blocking drift, a better metric with McNemar's test, no
class whose recall drops, the same input contract). Before any alias moves the logged model is served by `mlflow
models serve` and must answer the test images as evaluate scored them (tasks/lib/serving_check.py); then the
champion alias moves as a compare-and-set. A champion that cannot be scored is never replaced silently, and a model
identical to a registered version (the same architecture and weights: :func:`fingerprint`) is not registered again.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from tasks import evaluate
from tasks.lib import architecture, artifacts, drift, registry, serving_check, tracking
from tasks.lib.config import DeployParams, Params
from tasks.lib.errors import TrainflowError, TransientError
from tasks.lib.quiet import import_keras

log = logging.getLogger(__name__)


def expected_probabilities(predictions_csv: Path, count: int | None = None) -> np.ndarray:
    """The first ``count`` (None: all) test-split probability rows that evaluate wrote."""
    with predictions_csv.open() as f:
        reader = csv.DictReader(f)
        columns = [c for c in reader.fieldnames or [] if c.startswith("p_")]
        rows = [[float(r[c]) for c in columns] for r in reader if r["split"] == "test"]
    return np.asarray(rows[:count], dtype=np.float32)


def mcnemar_p_value(b: int, c: int) -> float:
    """McNemar's exact test: two-sided binomial p-value of the discordant pairs (1.0 when there are none)."""
    from scipy.stats import binomtest

    return float(binomtest(min(b, c), b + c, 0.5).pvalue) if b + c else 1.0


def paired_outcomes(y: np.ndarray, candidate: np.ndarray, champion: np.ndarray) -> dict[str, int]:
    """McNemar's discordant pairs on one test split: b = only the candidate right, c = only the champion right."""
    cand_right, champ_right = candidate.argmax(axis=1) == y, champion.argmax(axis=1) == y
    return {"b": int((cand_right & ~champ_right).sum()), "c": int((~cand_right & champ_right).sum())}


def score_champion(
    params: Params, x: np.ndarray, y: np.ndarray, candidate: np.ndarray, wanted: dict[str, Any]
) -> dict[str, Any]:
    """The registry's current champion scored on the candidate's test split, paired with the candidate.

    Returns:
        ``{"champion": None}`` without one; else ``champion.status`` is ``scored`` (with its headline metrics and
        per-class recall, and the McNemar pairs), ``other_contract`` (it takes or answers something else than
        ``wanted``) or ``unscorable`` (it has the same contract but cannot be loaded or run: ``why``).
    """
    name = params.deploy.model_name
    version = registry.champion_version(params.tracking, name)
    if version is None:
        return {"champion": None}
    entry: dict[str, Any] = {"version": int(version.version), "run_id": version.run_id}
    tagged = registry.version_contract(version)
    if tagged is not None and tagged != wanted:
        return _other_contract(entry, tagged, wanted)
    try:
        model = registry.load_model(params.tracking, registry.version_uri(name, version.version))
        served = tracking.model_contract(model)
        if tagged is None and served != wanted:  # a version registered before contracts were tagged
            return _other_contract(entry, served, wanted)
        probabilities = tracking.predict_probabilities(model, x)
        if probabilities.shape != candidate.shape:
            raise ValueError(f"it answers {probabilities.shape[1:]} class probabilities, not {candidate.shape[1:]}")
    except Exception as exc:  # missing artifacts, a broken model: many types
        return {"champion": {**entry, "status": "unscorable", "why": str(exc).splitlines()[0][:300]}}
    scored = evaluate.classification_metrics(y, probabilities, tuple(wanted["classes"]))
    return {
        "champion": {
            **entry,
            "status": "scored",
            "metrics": {k: scored[k] for k in evaluate.HEADLINE},
            "recall": {c: m["recall"] for c, m in scored["per_class"].items()},
            "per_class": scored["per_class"],  # precision/recall/F1/support, shown beside the candidate's in the report
        },
        "paired": paired_outcomes(y, candidate, probabilities),
    }


def _other_contract(entry: dict[str, Any], theirs: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    differs = "; ".join(f"{k} {theirs.get(k)} vs {ours.get(k)}" for k in ours if theirs.get(k) != ours.get(k))
    return {"champion": {**entry, "status": "other_contract", "contract": theirs, "why": f"its {differs}"}}


def check_drift(params: Params, current: dict[str, Any]) -> dict[str, Any]:
    """The candidate's data (ingest's statistics) against the statistics the champion's run logged (train's)."""
    if params.validation.drift_action == "ignore":
        return drift.assess(None, "", current, params.validation)
    name = params.deploy.model_name
    try:
        found = registry.champion_json(params.tracking, name, f"train/{Path(params.paths.reference_stats).name}")
    except TransientError:
        raise  # the registry is unreachable: a retry may pass
    except TrainflowError as exc:  # a champion without reference statistics: not comparable, say why
        found = ({}, str(exc))
    if found is None:
        return drift.assess(None, f"no reference yet: {name} has no champion", current, params.validation)
    return drift.assess(*found, current, params.validation)


def fingerprint(model: Any) -> str:
    """SHA-256 of a Keras model's architecture (its JSON) and every weight array (dtype, shape, bytes), plus the
    vocabulary of any text-vectorisation layer (kept outside the weights). Not the .keras file's bytes: they carry
    the time it was saved, so a model saved twice would look new."""
    digest = hashlib.sha256(model.to_json().encode())
    for weights in model.get_weights():
        array = np.ascontiguousarray(weights)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    pending = [model]
    while pending:
        layer = pending.pop(0)
        pending.extend(getattr(layer, "layers", None) or [])
        if hasattr(layer, "get_vocabulary"):
            digest.update("\n".join(map(str, layer.get_vocabulary())).encode())
    return digest.hexdigest()


def outcome(name: str, version: int, gate: dict[str, Any], champion: dict[str, Any] | None) -> str:
    """What happened to the candidate, in one sentence for the log."""
    if gate["promote"]:
        return f"{name} version {version} is the new champion: {gate['reason']}"
    stays = "there is no champion yet" if champion is None else f"the champion stays version {champion['version']}"
    return f"{name} version {version} registered as challenger, NOT promoted: {gate['reason']}; {stays}"


def decide(
    candidate: dict[str, Any],
    recall: dict[str, float],
    comparison: dict[str, Any],
    params: DeployParams,
    drifted: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The gate: does the candidate take the champion alias?

    Args:
        candidate: the candidate's headline test metrics.
        recall: the candidate's test recall per class.
        comparison: the champion as :func:`score_champion` found it.
        params: the deploy section (metric, minimum, significance, per-class drop, contract and unscorable opt-ins).
        drifted: the drift report (:func:`check_drift`); with ``validation.drift_action: fail`` drift, or data
            that cannot be compared, blocks promotion and the reason says so.

    Raises:
        TrainflowError: the champion exists but cannot be scored, and ``deploy.replace_unscorable_champion`` is off.
    """
    metric, score = params.metric, float(candidate[params.metric])
    champion = comparison.get("champion")
    decision: dict[str, Any] = {
        "metric": metric,
        "candidate": score,
        "champion": None,
        "champion_version": champion["version"] if champion else None,
        "p_value": None,
        "class_recall_drops": {},
    }

    def verdict(promote: bool, reason: str) -> dict[str, Any]:
        return {**decision, "promote": promote, "reason": reason}

    if score < params.min_metric:
        return verdict(False, f"{metric} {score:.4f} is below deploy.min_metric {params.min_metric}")
    if drifted is not None and (blocked := drift.blocks(drifted)) is not None:
        return verdict(False, blocked)
    if champion is None:
        return verdict(True, "no champion yet")
    version = champion["version"]
    if champion["status"] == "unscorable":
        if not params.replace_unscorable_champion:
            raise TrainflowError(
                f"{params.model_name} v{version} (the champion) cannot be scored on this test split "
                f"({champion['why']}); "
                "nothing was registered. Repair the registry (is mlflow.db beside its artifacts?), or set "
                "deploy.replace_unscorable_champion: true to let a candidate replace it unscored"
            )
        return verdict(
            True,
            f"champion v{version} cannot be scored ({champion['why']}); replaced as "
            "deploy.replace_unscorable_champion allows",
        )
    if champion["status"] == "other_contract":
        if params.allow_new_contract:
            return verdict(
                True,
                f"champion v{version} has another input contract ({champion['why']}); replaced as "
                "deploy.allow_new_contract allows",
            )
        return verdict(
            False,
            f"champion v{version} has another input contract ({champion['why']}): a new contract "
            "takes the champion alias only with deploy.allow_new_contract: true",
        )
    best = float(champion["metrics"][metric])
    p_value = mcnemar_p_value(**comparison["paired"])
    drops = {
        name: round(before - recall.get(name, 0.0), 4)
        for name, before in champion["recall"].items()
        if before - recall.get(name, 0.0) > params.max_class_recall_drop
    }
    decision |= {"champion": best, "p_value": p_value, "class_recall_drops": drops, **comparison["paired"]}
    if score <= best:
        return verdict(False, f"{metric} {score:.4f} does not beat the champion's {best:.4f}")
    if params.require_significance and p_value >= params.significance_level:
        return verdict(
            False,
            f"better ({score:.4f} > {best:.4f}) but not significantly "
            f"(McNemar p={p_value:.3g} >= {params.significance_level})",
        )
    if drops:
        worst = max(drops, key=drops.__getitem__)
        return verdict(
            False,
            f"{metric} {score:.4f} beats the champion's {best:.4f}, but the recall of class "
            f"{worst!r} drops by {drops[worst]:.4f} > deploy.max_class_recall_drop "
            f"{params.max_class_recall_drop} ({len(drops)} class(es) worse)",
        )
    return verdict(True, f"{metric} {score:.4f} beats the champion's {best:.4f} (McNemar p={p_value:.3g})")


PROMOTION_ATTEMPTS = 5  # gates against a champion that moved meanwhile, before the candidate stays challenger


def settle(
    params: Params,
    version: int,
    gate: dict[str, Any],
    comparison: dict[str, Any],
    drifted: dict[str, Any],
    gate_again: Any,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """Move the aliases for a registered ``version`` as the gate decided, the champion's alias as a compare-and-set.

    When the champion moved after the gate compared with it (another run promoted its own candidate meanwhile), the
    candidate is scored against the new champion and gated again (``gate_again()``: the decision, the comparison and
    the drift), up to :data:`PROMOTION_ATTEMPTS` times; so the champion never moves to a version that was compared
    with an older one, and deploy.json says what the candidate was finally compared with.

    Returns:
        The final gate, comparison and drift, and each time the champion had moved (``gated_against``, ``found``).
    """
    name, settings, raced = params.deploy.model_name, params.tracking, []
    for _ in range(PROMOTION_ATTEMPTS):
        if not gate["promote"]:
            registry.make_challenger(settings, name, version)
            return gate, comparison, drifted, raced
        champion = comparison.get("champion")
        scored = champion["version"] if champion else None
        found = registry.promote(settings, name, version, scored)
        if found is None:
            return gate, comparison, drifted, raced
        raced.append({"gated_against": scored, "found": found})
        log.warning(
            "deploy: the champion moved to v%s after the gate compared %s v%d with v%s (another run promoted its "
            "candidate): comparing with v%s",
            found,
            name,
            version,
            scored,
            found,
        )
        gate, comparison, drifted = gate_again()
    registry.make_challenger(settings, name, version)
    reason = (
        f"the champion moved {PROMOTION_ATTEMPTS} times while this candidate was compared (last to "
        f"v{raced[-1]['found']}); registered as challenger, run deploy again to compare"
    )
    return {**gate, "promote": False, "reason": reason}, comparison, drifted, raced


def identical(
    candidate: dict[str, Any], comparison: dict[str, Any], params: DeployParams, version: int, aliases: list[str]
) -> dict[str, Any]:
    """The decision for a model identical to registered ``version`` (its ``aliases``): nothing registered again."""
    champion = comparison.get("champion")
    scored = champion is not None and champion["status"] == "scored"
    named = f" (@{', @'.join(aliases)})" if aliases else ""
    return {
        "metric": params.metric,
        "candidate": float(candidate[params.metric]),
        "champion": float(champion["metrics"][params.metric]) if scored else None,
        "champion_version": champion["version"] if champion else None,
        "p_value": None,
        "class_recall_drops": {},
        "identical_to": version,
        "promote": False,
        "reason": f"identical to {params.model_name} v{version}{named} (the same architecture and weights): "
        "nothing registered, no alias moved",
    }


def _already_registered(
    params: Params,
    run_id: str,
    report: dict[str, Any],
    candidate: dict[str, Any],
    comparison: dict[str, Any],
    version: int,
) -> dict[str, Any]:
    """Nothing registered, served or moved: deploy.json and the run say which version the model is."""
    name = params.deploy.model_name
    aliases = registry.model_aliases(params.tracking, name)
    # the alias that says most about it first
    held = [a for a in (registry.CHAMPION, registry.CHALLENGER, registry.PREVIOUS) if aliases.get(a) == version]
    gate = identical(candidate, comparison, params.deploy, version, held)
    entry = {"model_name": name, "version": version, "alias": held[0] if held else None, "registered": False}
    report |= {
        "serving": None,
        "gate": gate,
        "registry": {**entry, "model_uri": registry.version_uri(name, version)},
        "aliases": aliases,
    }
    artifacts.write_json(Path(params.paths.deploy_report), report)
    tags = {"deploy.promoted": "false", "deploy.reason": gate["reason"], "deploy.version": version}
    tracking.set_tags(params.tracking, run_id, tags)
    tracking.log_artifacts(params.tracking, run_id, [params.paths.deploy_report, "dvc.lock"], "deploy")
    log.warning("deploy: %s", gate["reason"])
    return report


def run(params: Params) -> dict:
    """Score the champion, compare drift, gate the candidate, check it served, register it, move the aliases."""
    keras = import_keras()  # the fingerprint loads the model; logging it for serving needs Keras too
    stored = artifacts.open_dataset(Path(params.paths.clean))
    test = stored.load("test", mmap=True)
    wanted = evaluate.contract(stored)
    expected = expected_probabilities(Path(params.paths.predictions))
    name, settings = params.deploy.model_name, params.tracking
    candidate = artifacts.read_json(Path(params.paths.metrics))["test"]
    recall = {c: m["recall"] for c, m in artifacts.read_json(Path(params.paths.per_class))["test"]["per_class"].items()}
    run_id = tracking.current_run(Path(params.paths.run_info))

    # its custom layers, before Keras loads it
    trained = architecture.import_trained(artifacts.read_json(Path(params.paths.run_info)))
    try:
        model = keras.saving.load_model(params.paths.model, compile=False, safe_mode=True)
    except Exception as exc:  # a truncated or foreign file: Keras raises many types
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise TrainflowError(
            f"{params.paths.model}: the model does not load ({first}); nothing was registered"
        ) from None
    print_ = fingerprint(model)
    drifted = check_drift(params, artifacts.read_json(Path(params.paths.statistics)))
    same = registry.identical_version(settings, name, print_)
    count = min(params.deploy.check_samples, len(expected))
    sample = np.asarray(test.x[:count])
    config = {
        "classes": list(stored.classes),
        "max_request_images": params.deploy.max_request_images,
        "kind": stored.kind,
        "max_request_chars": params.clean.max_chars,  # a text: longer ones are refused, as clean removed them
        "modules": [architecture.module_of(trained)],  # imported before Keras loads it: its registered layers
    }
    with contextlib.ExitStack() as stack:
        if same is None:
            # an object signature: MLflow's server hands the model the JSON values as sent (a uint8 or str signature
            # would cast 0.9 to 0, numbers to strings), and the served model refuses what is not a pixel or a string
            example = np.asarray(sample[:4]).astype(object)
            # the model function's folder travels with the model (MLflow code_paths): it loads where the project is not
            model_uri = tracking.log_model(
                settings, run_id, Path(params.paths.model), example, config, code_paths=[Path(architecture.FOLDER)]
            )
            # the scoring server comes up (it imports TensorFlow: seconds) while the champion is scored
            timeout = params.deploy.serving_timeout
            served = stack.enter_context(serving_check.serving(model_uri, tracking.tracking_uri(settings), timeout))
        comparison = score_champion(params, np.asarray(test.x), np.asarray(test.y), expected, wanted)
        report: dict[str, Any] = {
            "contract": wanted,
            "fingerprint": print_,
            "drift": drifted,
            **comparison,
            "settings": params.deploy.model_dump(mode="json"),  # what the gate applied, for the run report
        }
        if same is not None:
            return _already_registered(params, run_id, report, candidate, comparison, same)
        gate = decide(candidate, recall, comparison, params.deploy, drifted)
        check = served(sample, expected[:count], params.deploy.tolerance)
    if not check["ok"]:
        raise TrainflowError(
            f"{model_uri}: served predictions differ from evaluate's (max |diff| {check['max_abs_diff']:.2e} > "
            f"deploy.tolerance={params.deploy.tolerance}, classes agree: {check['classes_agree']}); nothing was "
            "registered and no alias moved"
        )
    tags = {
        **{f"gate.{k}": v for k, v in gate.items() if k != "class_recall_drops"},
        registry.CONTRACT_TAG: json.dumps(wanted),
        registry.FINGERPRINT_TAG: print_,
        "drift.drifted": str(drifted["drifted"]).lower(),
        "serving.latency_p50_ms": check["latency_ms"]["p50"],
        "serving.latency_p95_ms": check["latency_ms"]["p95"],
        "serving.max_abs_diff": check["max_abs_diff"],
    }
    version = registry.register_version(settings, name, model_uri, tags)

    def gate_again() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        again = check_drift(params, artifacts.read_json(Path(params.paths.statistics)))
        compared = score_champion(params, np.asarray(test.x), np.asarray(test.y), expected, wanted)
        return decide(candidate, recall, compared, params.deploy, again), compared, again

    gate, comparison, drifted, raced = settle(params, version, gate, comparison, drifted, gate_again)
    if raced:  # the version's tags say what was finally decided
        registry.tag_version(
            settings,
            name,
            version,
            {
                **{f"gate.{k}": v for k, v in gate.items() if k != "class_recall_drops"},
                "drift.drifted": str(drifted["drifted"]).lower(),
            },
        )
    registered = registry.entry(name, version, gate["promote"])
    report = {k: v for k, v in report.items() if k not in ("champion", "paired")}  # as finally compared
    report |= {"drift": drifted, **comparison, "raced": raced}
    # the report stage logs the page there next: the version's registry page links it already
    registry.point_at_report(settings, name, registered["version"], tracking.report_uri(run_id, params.paths.report))
    report |= {
        "serving": check,
        "gate": gate,
        "registry": {**registered, "registered": True},
        "aliases": registry.model_aliases(settings, name),
    }
    artifacts.write_json(Path(params.paths.deploy_report), report)
    tracking.set_tags(
        settings,
        run_id,
        {
            "deploy.promoted": str(gate["promote"]).lower(),
            "deploy.reason": gate["reason"],
            "deploy.version": registered["version"],
        },
    )
    metrics = {
        "serving_latency_p50_ms": check["latency_ms"]["p50"],
        "serving_startup_s": check["startup_s"],
        "serving_waited_s": check["waited_s"],  # of the start-up, what scoring the champion did not cover
    }
    if gate["p_value"] is not None:
        metrics["gate_p_value"] = gate["p_value"]
    champion = comparison.get("champion")
    if champion is not None and champion["status"] == "scored":
        metrics |= {f"champion.test.{k}": v for k, v in champion["metrics"].items()}
    tracking.log_metrics(settings, run_id, metrics)
    tracking.log_artifacts(settings, run_id, [params.paths.deploy_report, "dvc.lock"], "deploy")
    noun = "texts" if stored.kind == "text" else "images"
    log.info(
        "deploy: %s served by mlflow models serve: %d test %s as evaluate scored them (max |diff| %.2e), "
        "one %s in %.1f ms (p50)",
        model_uri,
        check["checked"],
        noun,
        check["max_abs_diff"],
        noun[:-1],
        check["latency_ms"]["p50"],
    )
    version = registered["version"]
    (log.info if gate["promote"] else log.warning)("deploy: %s", outcome(name, version, gate, champion))
    return report


if __name__ == "__main__":
    from tasks.lib.cli import main

    main("deploy", run)
