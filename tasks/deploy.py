"""deploy: models/model.keras → models/serving (a SavedModel checked in a fresh process) + reports/deploy.json."""

from __future__ import annotations

import contextlib
import csv
import logging
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from tasks.lib import artifacts, tracking
from tasks.lib.config import DeployParams, Params
from tasks.lib.errors import TrainflowError
from tasks.lib.quiet import import_keras

log = logging.getLogger(__name__)

SERVING_FORMAT = "tf_saved_model"


def expected_probabilities(predictions_csv: Path, count: int) -> np.ndarray:
    """The first ``count`` test-split probability rows that evaluate wrote."""
    with predictions_csv.open() as f:
        reader = csv.DictReader(f)
        columns = [c for c in reader.fieldnames or [] if c.startswith("p_")]
        rows = [[float(r[c]) for c in columns] for r in reader if r["split"] == "test"]
    return np.asarray(rows[:count], dtype=np.float32)


def compare(expected: np.ndarray, served: np.ndarray, tolerance: float) -> dict[str, Any]:
    """How far the served model's probabilities are from evaluate's, and whether the classes agree."""
    if expected.shape != served.shape:
        raise TrainflowError(f"serving check: served output shape {served.shape} != expected {expected.shape}")
    diff = float(np.abs(expected - served).max()) if expected.size else 0.0
    agree = bool((expected.argmax(axis=1) == served.argmax(axis=1)).all())
    return {"checked": len(expected), "max_abs_diff": diff, "classes_agree": agree, "ok": agree and diff <= tolerance}


def mcnemar_p_value(b: int, c: int) -> float:
    """McNemar's exact test: two-sided binomial p-value of the discordant pairs (1.0 when there are none)."""
    from scipy.stats import binomtest

    return float(binomtest(min(b, c), b + c, 0.5).pvalue) if b + c else 1.0


def decide(candidate: dict[str, Any], comparison: dict[str, Any], params: DeployParams) -> dict[str, Any]:
    """The gate: does the candidate take the champion alias? (TFX's blessing, with a significance test.)

    Args:
        candidate: the candidate's test metrics.
        comparison: what evaluate found about the champion (``score_champion``).
        params: the deploy section (metric, minimum, significance).
    """
    metric, score = params.metric, float(candidate[params.metric])
    champion = comparison.get("champion")
    decision: dict[str, Any] = {
        "metric": metric,
        "candidate": score,
        "champion": None,
        "champion_version": None,
        "p_value": None,
    }
    if champion is not None:
        decision["champion_version"] = champion["version"]
    if score < params.min_metric:
        return {
            **decision,
            "promote": False,
            "reason": f"{metric} {score:.4f} is below deploy.min_metric {params.min_metric}",
        }
    if champion is None:
        return {**decision, "promote": True, "reason": "no champion yet"}
    if not champion["comparable"]:
        return {
            **decision,
            "promote": True,
            "reason": f"champion v{champion['version']} cannot score this test split ({champion['why']})",
        }
    best = float(champion["metrics"][metric])
    p_value = mcnemar_p_value(**comparison["paired"])
    decision |= {"champion": best, "p_value": p_value, **comparison["paired"]}
    if score <= best:
        return {**decision, "promote": False, "reason": f"{metric} {score:.4f} does not beat the champion's {best:.4f}"}
    if params.require_significance and p_value >= params.significance_level:
        return {
            **decision,
            "promote": False,
            "reason": f"better ({score:.4f} > {best:.4f}) but not significantly "
            f"(McNemar p={p_value:.3g} >= {params.significance_level})",
        }
    return {
        **decision,
        "promote": True,
        "reason": f"{metric} {score:.4f} beats the champion's {best:.4f} (McNemar p={p_value:.3g})",
    }


class FreshProcessCheck:
    """The export's predictions from a fresh interpreter, overlapped with this process's work.

    The interpreter starts (and imports TensorFlow, seconds) as soon as this is created; ``start`` hands it the
    export and the images; ``result`` waits for its predictions. Use it as a context manager: leaving kills it.
    """

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tasks.lib.serving_check"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._serving_dir: Path | None = None

    def start(self, serving_dir: Path, x: np.ndarray) -> None:
        self._serving_dir = serving_dir
        sample, out = Path(self._tmp.name) / "x.npy", Path(self._tmp.name) / "out.npy"
        np.save(sample, x, allow_pickle=False)
        assert self._process.stdin is not None
        with contextlib.suppress(BrokenPipeError):  # it died early: result() reports why
            self._process.stdin.write(f"{serving_dir}\t{sample}\t{out}\n")
            self._process.stdin.flush()

    def result(self) -> np.ndarray:
        _, stderr = self._process.communicate()
        if self._process.returncode != 0:
            last = (stderr.strip().splitlines() or ["no output"])[-1]
            raise TrainflowError(f"{self._serving_dir}: the exported model does not load in a fresh process ({last})")
        return np.load(Path(self._tmp.name) / "out.npy", allow_pickle=False)

    def __enter__(self) -> FreshProcessCheck:
        return self

    def __exit__(self, *_: object) -> None:
        if self._process.returncode is None:  # result() was not reached
            self._process.kill()
            self._process.communicate()
        self._tmp.cleanup()


def run(params: Params) -> dict:
    """Export the model, reload it in a fresh process and check its predictions against evaluate's."""
    with FreshProcessCheck() as fresh:
        return _deploy(params, fresh)


def _deploy(params: Params, fresh: FreshProcessCheck) -> dict:
    keras = import_keras()

    model = keras.saving.load_model(params.paths.model, compile=False, safe_mode=True)
    expected = expected_probabilities(Path(params.paths.predictions), params.deploy.check_samples)
    clean = artifacts.open_dataset(Path(params.paths.clean))
    sample = np.asarray(clean.load("test", mmap=True).x[: len(expected)])
    serving = Path(params.paths.serving)
    gate = decide(
        artifacts.read_json(Path(params.paths.metrics))["test"],
        artifacts.read_json(Path(params.paths.gate)),
        params.deploy,
    )
    run_id = tracking.current_run(Path(params.paths.run_info))
    with artifacts.atomic_dir(serving) as tmp:
        model.export(str(tmp), format=SERVING_FORMAT, verbose=False)
        fresh.start(tmp, sample)
        config = {"classes": list(clean.classes), "max_request_images": params.deploy.max_request_images}
        model_uri = tracking.log_model(  # while the fresh process works
            params.tracking, run_id, Path(params.paths.model), sample[:4], config
        )
        check = compare(expected, fresh.result(), params.deploy.tolerance)
        if not check["ok"]:
            raise TrainflowError(
                f"{serving}: served predictions differ from evaluate's (max |diff| {check['max_abs_diff']:.2e} > "
                f"deploy.tolerance={params.deploy.tolerance}, classes agree: {check['classes_agree']})"
            )
    registry = tracking.register(
        params.tracking, params.deploy.model_name, model_uri, gate["promote"], gate
    )  # only a checked model is registered
    report = {
        "serving_path": str(serving),
        "format": SERVING_FORMAT,
        "input_dtype": "uint8",
        "input_shape": [None, *model.input_shape[1:]],
        **check,
        "gate": gate,
        "registry": registry,
    }
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
    if gate["p_value"] is not None:
        tracking.log_metrics(params.tracking, run_id, {"gate_p_value": gate["p_value"]})
    tracking.log_artifacts(params.tracking, run_id, [params.paths.deploy_report, "dvc.lock"], "deploy")
    log.info("deploy: %s checked on %d test images (max |diff| %.2e)", serving, check["checked"], check["max_abs_diff"])
    name, version = registry["model_name"], registry["version"]
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
    checked = f"{report['checked']} predictions checked, max diff {report['max_abs_diff']:.1e}"
    return f"{checked}; v{report['registry']['version']} {verdict}"


if __name__ == "__main__":
    from tasks.lib.cli import main

    main("deploy", run)
