"""deploy: the candidate against the registry's champion (the gate), checked as served, registered, aliases moved.

The gate (:func:`decide`) is TFX's blessing made stricter: a minimum, a better metric with McNemar's test, no class
whose recall drops, the same input contract. Before any alias moves the logged model is served by `mlflow models
serve` and must answer the test images as evaluate scored them (tasks/lib/serving_check.py); then the champion
alias moves as a compare-and-set. A champion that cannot be scored is never replaced silently.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from tasks import evaluate
from tasks.lib import artifacts, serving_check, tracking
from tasks.lib.config import DeployParams, Params
from tasks.lib.errors import TrainflowError

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


def decide(
    candidate: dict[str, Any], recall: dict[str, float], comparison: dict[str, Any], params: DeployParams
) -> dict[str, Any]:
    """The gate: does the candidate take the champion alias?

    Args:
        candidate: the candidate's headline test metrics.
        recall: the candidate's test recall per class.
        comparison: the champion as :func:`tasks.evaluate.score_champion` found it.
        params: the deploy section (metric, minimum, significance, per-class drop, contract and unscorable opt-ins).

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


def run(params: Params) -> dict:
    """Gate the candidate against the current champion, check it served, register it, move the aliases."""
    stored = artifacts.open_dataset(Path(params.paths.clean))
    test = stored.load("test", mmap=True)
    wanted = evaluate.contract(stored)
    expected = expected_probabilities(Path(params.paths.predictions))
    comparison = artifacts.read_json(Path(params.paths.gate))
    name = params.deploy.model_name
    current = tracking.champion_version(params.tracking, name)
    scored = comparison["champion"]["version"] if comparison.get("champion") else None
    if (int(current.version) if current is not None else None) != scored:
        log.warning(
            "deploy: the champion of %s moved since evaluate (v%s → v%s): scoring it now",
            name,
            scored,
            current.version if current is not None else None,
        )
        comparison = evaluate.score_champion(params, np.asarray(test.x), np.asarray(test.y), expected, wanted)
        scored = comparison["champion"]["version"] if comparison.get("champion") else None
    candidate = artifacts.read_json(Path(params.paths.metrics))["test"]
    recall = {c: m["recall"] for c, m in artifacts.read_json(Path(params.paths.per_class))["test"]["per_class"].items()}
    gate = decide(candidate, recall, comparison, params.deploy)

    run_id = tracking.current_run(Path(params.paths.run_info))
    count = min(params.deploy.check_samples, len(expected))
    sample = np.asarray(test.x[:count])
    config = {
        "classes": list(stored.classes),
        "max_request_images": params.deploy.max_request_images,
        "kind": stored.kind,
    }
    # texts as an object tensor: MLflow would cast numbers to strings for a str signature, ours refuses them
    example = evaluate.model_input(sample[:4])
    model_uri = tracking.log_model(params.tracking, run_id, Path(params.paths.model), example, config)
    check = serving_check.check(
        model_uri,
        tracking.tracking_uri(params.tracking),
        sample,
        expected[:count],
        params.deploy.tolerance,
        params.deploy.serving_timeout,
    )
    if not check["ok"]:
        raise TrainflowError(
            f"{model_uri}: served predictions differ from evaluate's (max |diff| {check['max_abs_diff']:.2e} > "
            f"deploy.tolerance={params.deploy.tolerance}, classes agree: {check['classes_agree']}); nothing was "
            "registered and no alias moved"
        )
    tags = {
        **{f"gate.{k}": v for k, v in gate.items() if k != "class_recall_drops"},
        tracking.CONTRACT_TAG: json.dumps(wanted),
        "serving.latency_p50_ms": check["latency_ms"]["p50"],
        "serving.latency_p95_ms": check["latency_ms"]["p95"],
        "serving.max_abs_diff": check["max_abs_diff"],
    }
    registry = tracking.register(params.tracking, name, model_uri, gate["promote"], tags, scored)
    report = {"contract": wanted, "serving": check, "gate": gate, "registry": registry}
    artifacts.write_json(Path(params.paths.deploy_report), report)
    tracking.set_tags(
        params.tracking,
        run_id,
        {
            "deploy.promoted": str(gate["promote"]).lower(),
            "deploy.reason": gate["reason"],
            "deploy.version": registry["version"],
        },
    )
    metrics = {"serving_latency_p50_ms": check["latency_ms"]["p50"], "serving_startup_s": check["startup_s"]}
    if gate["p_value"] is not None:
        metrics["gate_p_value"] = gate["p_value"]
    tracking.log_metrics(params.tracking, run_id, metrics)
    tracking.log_artifacts(params.tracking, run_id, [params.paths.deploy_report, "dvc.lock"], "deploy")
    log.info(
        "deploy: %s served by mlflow models serve: %d test images as evaluate scored them (max |diff| %.2e), "
        "one image in %.1f ms (p50)",
        model_uri,
        check["checked"],
        check["max_abs_diff"],
        check["latency_ms"]["p50"],
    )
    version = registry["version"]
    if gate["promote"]:
        log.info("deploy: %s version %d is the new champion: %s", name, version, gate["reason"])
    else:
        log.warning(
            "deploy: %s version %d registered as challenger, NOT promoted: %s; the champion is unchanged",
            name,
            version,
            gate["reason"],
        )
    return report


def describe(report: dict) -> str:
    """One line for the flow-run summary: the serving check and the gate's decision."""
    verdict = "champion" if report["gate"]["promote"] else "challenger"
    served = f"served {report['serving']['checked']} images, p50 {report['serving']['latency_ms']['p50']:.0f} ms"
    return f"{served}; v{report['registry']['version']} {verdict}"


if __name__ == "__main__":
    from tasks.lib.cli import main

    main("deploy", run)
