"""report: every stage's outputs and the MLflow run → reports/report.html (one self-contained page).

The page has six sections: data, training, evaluation, decision, lineage and the model card (the Model Card
Toolkit's sections). It renders offline: figures are matplotlib PNGs inlined as data URIs, the style is inline, and
there is no script. :func:`gather` reads what the stages wrote (nothing is recomputed but a few intervals; what deploy
found in the registry is in reports/deploy.json), :func:`render` turns those facts into HTML through the Jinja2
template ``tasks/templates/report.html.j2``.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import logging
import os
import platform
import time
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import yaml

from tasks.lib import artifacts, dag, tracking, validation
from tasks.lib.config import Params, TrainParams
from tasks.lib.errors import TrainflowError, redact_tree
from tasks.lib.sources import FILE_SOURCES

log = logging.getLogger(__name__)

SECTIONS = {
    "data": "Data",
    "training": "Training",
    "evaluation": "Evaluation",
    "decision": "Decision",
    "model-card": "Model card",
    "lineage": "Lineage",  # last: the page's provenance, each stage's files folded
}
TEMPLATE = Path(__file__).with_name("templates") / "report.html.j2"
PACKAGES = (
    "tensorflow",
    "keras",
    "numpy",
    "scikit-learn",
    "mlflow",
    "dvc",
    "great-expectations",
    "prefect",
    "jinja2",
    "matplotlib",
)


# ---- the pure core: numbers and figures in, facts out; facts in, HTML out ----


def wilson(successes: int, trials: int, confidence: float) -> tuple[float, float]:
    """Wilson score interval of a proportion (sound near 0 and 1 and for small samples); (0, 1) without trials."""
    if trials <= 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))


def model_card_text(card: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """The model card's free text with ``{kind}`` (image, text) and ``{items}`` (images, texts) filled in, so that the
    default card fits either kind of data."""
    words = {"{kind}": kind, "{items}": f"{kind}s"}

    def fill(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        for placeholder, word in words.items():
            value = value.replace(placeholder, word)
        return value

    return {key: fill(value) for key, value in card.items()}


def changed_params(
    current: Mapping[str, str], committed: Mapping[str, str] | None, champion: Mapping[str, str] | None
) -> list[dict[str, Any]]:
    """The params.yaml keys of this run that differ from the committed params.yaml or from the champion's run (None:
    unknown); what else a run logs as a param (its classes, the kind of data) is not a params key and is left out.

    Returns:
        One row per differing key, sorted: ``{"key", "value", "committed", "champion"}`` (absent there: None).
    """
    rows = []
    keys = set(current) | set(committed or {}) | set(champion or {})
    for key in sorted(k for k in keys if k.split(".", 1)[0] in Params.model_fields and "." in k):  # params.yaml's
        value = current.get(key)
        theirs = [ref.get(key) for ref in (committed, champion) if ref is not None]
        if any(not _same(other, value) for other in theirs):
            rows.append(
                {
                    "key": key,
                    "value": value,
                    "committed": None if committed is None else committed.get(key),
                    "champion": None if champion is None else champion.get(key),
                }
            )
    return rows


def _same(a: str | None, b: str | None) -> bool:
    """Equal as values: ``120`` in YAML and ``120.0`` as logged are the same number."""
    if a is None or b is None:
        return a is b
    try:
        return a == b or yaml.safe_load(a) == yaml.safe_load(b)
    except yaml.YAMLError:
        return False


def stopping(history: Sequence[Mapping[str, str]], train: TrainParams) -> dict[str, Any]:
    """Epochs run, the best epoch (lowest val loss, whose weights early stopping keeps) and why training stopped."""
    epochs_run = len(history)
    if not history:
        return {"epochs_run": 0, "epochs_max": train.epochs, "best_epoch": None, "best_val_loss": None, "reason": ""}
    losses = [float(row["val_loss"]) for row in history]
    best = int(np.argmin(losses))
    if epochs_run >= train.epochs:
        reason = f"ran all train.epochs={train.epochs} epochs"
    else:
        reason = (
            f"early stopping: val loss did not improve for train.early_stopping_patience="
            f"{train.early_stopping_patience} epochs after epoch {best + 1}; the weights of epoch {best + 1} are kept"
        )
    return {
        "epochs_run": epochs_run,
        "epochs_max": train.epochs,
        "best_epoch": best + 1,
        "best_val_loss": losses[best],
        "reason": reason,
    }


def mistakes(rows: Sequence[Mapping[str, str]], count: int) -> list[dict[str, Any]]:
    """The ``count`` most confident wrong answers among evaluate's test predictions (predictions.csv rows)."""
    wrong = []
    for row in rows:
        if row["split"] != "test" or row["label"] == row["predicted"]:
            continue
        probabilities = [float(v) for k, v in row.items() if k.startswith("p_")]
        wrong.append(
            {
                "index": int(row["index"]),
                "label": int(row["label"]),
                "predicted": int(row["predicted"]),
                "probability": probabilities[int(row["predicted"])],
            }
        )
    return sorted(wrong, key=lambda w: (-w["probability"], w["index"]))[:count]


def image_grid(images: np.ndarray, titles: Sequence[str]) -> bytes:
    """A PNG of uint8 images (N, H, W, C) in a grid, each with its title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(6, max(1, len(images)))
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.7 * columns, 2.0 * rows), squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles, strict=False):
        picture = image[..., 0] if image.shape[-1] == 1 else image
        ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, interpolation="nearest")
        ax.set_title(title, fontsize=8, parse_math=False)  # class names with `$` are names, not TeX
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def audit_facts(summary: Mapping[str, Any], rows: Sequence[Mapping[str, str]], top: np.ndarray) -> dict[str, Any]:
    """The audit's counts and its top label issues (issues.csv's first label rows, as many as top.npy holds): each
    with its text, or all of them as one picture grid."""
    labels = [dict(row) for row in rows if row["issue"] == "label"][: len(top)]
    png = None
    if top.dtype.kind == "U":
        for row, text in zip(labels, top.tolist(), strict=True):
            row["text"] = text[:300]
    elif labels:
        titles = [
            f"{r['id'][-18:]}\n{r['given_label']}→{r['suggested_label']} ({float(r['score']):.3f})" for r in labels
        ]
        png = image_grid(top[: len(labels)], titles)
    return {
        "flagged": summary["flagged"],
        "seconds": summary["seconds"],
        "folds": summary["folds"],
        "top": labels,
        "top_png": png,
    }


def own_architecture(tags: Mapping[str, str]) -> str:
    """The model function train logged (tags ``train.architecture``, ``train.architecture_args``, ``train.parameters``)
    in one line, e.g. ``architectures.resnet:resnet(blocks=2, width=16), 9,770 parameters``; empty for older runs."""
    if "train.architecture" not in tags:
        return ""
    args = json.loads(tags.get("train.architecture_args") or "{}")
    shown = ", ".join(f"{key}={value!r}" for key, value in sorted(args.items()))
    count = tags.get("train.parameters")
    return f"{tags['train.architecture']}({shown})" + (f", {int(count):,} parameters" if count else "")


def architecture(params: Params, t: TrainParams, kind: str, tags: Mapping[str, str] | None = None) -> str:
    """The model card's one-line architecture, from the train params it was trained with (text: the built-in RNN)
    and the model function train logged (its name, arguments and parameter count)."""
    own = own_architecture(tags or {})
    if own and not own.startswith("architectures.builtin:"):
        return f"Keras model of {own}; preprocessing inside the model"
    return _builtin(params, t, kind) + (f" ({own})" if own else "")


def _builtin(params: Params, t: TrainParams, kind: str) -> str:
    if kind == "text":
        rnn = f"{'bidirectional ' if t.bidirectional else ''}{t.rnn.upper()} {t.rnn_units}"
        return (
            f"Keras text RNN: word embedding {t.embedding_dim} (vocabulary of {params.normalize.vocabulary_size} words "
            f"at most), {rnn}, dense {t.dense_units}, dropout {t.dropout}; vectorisation inside the model"
        )
    return (
        f"Keras {t.model}: filters {list(t.filters)}, dense {t.dense_units}, dropout {t.dropout}, batch norm "
        f"{t.batch_norm}; preprocessing ({params.normalize.method}) inside the model"
    )


def quantitative(per_class: Mapping[str, Any], headline: Mapping[str, Any], confidence: float) -> dict[str, Any]:
    """Accuracy with its Wilson interval per split and per class (a class's accuracy is its recall)."""
    overall = []
    for split, metrics in headline.items():
        n = int(per_class[split]["count"])
        correct = round(metrics["accuracy"] * n)
        overall.append({"split": split, "accuracy": metrics["accuracy"], "n": n, "ci": wilson(correct, n, confidence)})
    classes = []
    for name, m in per_class["test"]["per_class"].items():
        n = int(m["support"])
        classes.append(
            {"class": name, "accuracy": m["recall"], "n": n, "ci": wilson(round(m["recall"] * n), n, confidence)}
        )
    return {"confidence": confidence, "overall": overall, "per_class": classes}


def data_uri(png: bytes | None) -> str:
    """An inline image source: the PNG itself, base64 (the page fetches nothing)."""
    return "data:image/png;base64," + base64.b64encode(png or b"").decode("ascii")


def render(facts: Mapping[str, Any]) -> str:
    """The report page for :func:`gather`'s facts (a missing fact is an error, not a blank); credentials in any of
    them (a champion's params logged by an older version, a tracking URI) redacted."""
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE.parent),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["data_uri"] = data_uri
    environment.filters["pct"] = lambda v, d=1: "—" if v is None else f"{100 * float(v):.{d}f} %"
    environment.filters["num"] = lambda v, d=4: "—" if v is None else f"{float(v):.{d}f}"
    environment.filters["visible"] = visible
    return environment.get_template(TEMPLATE.name).render(sections=SECTIONS, **redact_tree(facts))


def visible(text: str) -> str:
    """``text`` with each unprintable character as its Python escape (SMS texts hold C1 controls such as ``\\x92``,
    Windows-1252 quotes read as Latin-1, which a browser draws as a box or not at all)."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


# ---- I/O: what the stages wrote, the MLflow run and the registry ----


def _read_bytes(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise TrainflowError(f"{path}: not found; {dag.hint(path)}") from None


def _read_csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(_read_bytes(path).decode())))


def _committed_params() -> tuple[dict[str, str] | None, str | None]:
    """params.yaml as committed at HEAD, flattened, and the commit; (None, None) outside git or before a commit."""
    text, commit = tracking.git("show", "HEAD:params.yaml"), tracking.git("rev-parse", "--short", "HEAD")
    if text is None or commit is None:
        return None, None
    try:
        return tracking.flatten(yaml.safe_load(text) or {}), commit
    except yaml.YAMLError:
        return None, commit


def _docs_page(params: Params, boundary: str) -> str | None:
    """The newest Data Docs page of a boundary's validation, relative to the report (None: not there)."""
    pages = sorted(
        (Path(params.paths.data_docs) / "validations" / boundary).glob("**/*.html"), key=lambda p: p.stat().st_mtime
    )
    return os.path.relpath(pages[-1], Path(params.paths.report).parent) if pages else None


def _lineage_stages(lock: Path) -> list[dict[str, Any]]:
    """Each stage's deps and outs with DVC's hashes, as dvc.lock records them."""
    if not lock.is_file():
        return []
    content = yaml.safe_load(lock.read_text()) or {}
    stages = []
    for name, stage in (content.get("stages") or {}).items():
        files = []
        for kind in ("deps", "outs"):
            for item in stage.get(kind) or []:
                digest = item.get("md5") or item.get("etag") or item.get("checksum") or "—"
                files.append({"kind": kind[:-1], "path": item.get("path"), "hash": digest, "size": item.get("size")})
        values = {}  # keyed by params file: params.yaml's keys as they are, another file's under its name
        for source, tree in (stage.get("params") or {}).items():
            values |= tracking.flatten(tree, "" if source == "params.yaml" else source)
        stages.append({"stage": name, "files": files, "params": values})
    return stages


def _versions() -> list[dict[str, str]]:
    found = [{"name": "python", "version": platform.python_version()}]
    for name in PACKAGES:
        try:
            found.append({"name": name, "version": metadata.version(name)})
        except metadata.PackageNotFoundError:
            continue
    return found


def gather(params: Params) -> dict[str, Any]:
    """Every fact of the page, from the files the stages wrote and the MLflow runs (this one, the champion's).

    Raises:
        TrainflowError: an upstream file is missing or unreadable (named), or the MLflow run is gone.
    """
    paths, settings = params.paths, params.tracking
    raw = artifacts.open_dataset(Path(paths.raw))
    clean = artifacts.open_dataset(Path(paths.clean))
    augmented = artifacts.open_dataset(Path(paths.augmented))
    validations = [artifacts.read_json(Path(paths.validation) / f"{b}.json") for b in validation.BOUNDARIES]
    history = _read_csv(Path(paths.history))
    metrics = artifacts.read_json(Path(paths.metrics))
    per_class = artifacts.read_json(Path(paths.per_class))
    deployed = artifacts.read_json(Path(paths.deploy_report))
    run_info = artifacts.read_json(Path(paths.run_info))
    trained = TrainParams.model_validate(run_info["train"], strict=False)  # what train used (params.yaml may be newer)
    predictions = _read_csv(Path(paths.predictions))
    curves = _read_bytes(Path(paths.figures) / "training_curves.png")
    confusion = _read_bytes(Path(paths.figures) / "confusion_matrix.png")
    samples = _read_bytes(Path(paths.samples))

    from mlflow.exceptions import MlflowException

    try:
        run = tracking.run_record(settings, run_info["run_id"])
    except MlflowException as exc:
        raise TrainflowError(f"{paths.run_info}: MLflow run not found ({str(exc).splitlines()[0][:200]})") from None
    champion, drift = deployed.get("champion"), deployed["drift"]
    try:  # the champion's params, to compare with: a champion whose run is gone has none
        champion_run = tracking.run_record(settings, champion["run_id"]) if champion else None
    except MlflowException:
        champion_run = None
    registry = deployed["registry"]
    aliases = deployed["aliases"]  # as deploy left them
    classes = list(clean.classes)

    wrong = mistakes(predictions, params.report.misclassified)
    test = clean.load("test", mmap=True)
    wrong_png = None
    if wrong and clean.kind == "text":
        for w in wrong:
            w["text"] = str(test.x[w["index"]])[:300]
    elif wrong:
        images = np.stack([np.asarray(test.x[w["index"]]) for w in wrong])
        titles = [f"true {classes[w['label']]}\npred {classes[w['predicted']]} ({w['probability']:.0%})" for w in wrong]
        wrong_png = image_grid(images, titles)
    for w in wrong:
        w["label"], w["predicted"] = classes[w["label"]], classes[w["predicted"]]
    total_wrong = sum(1 for r in predictions if r["split"] == "test" and r["label"] != r["predicted"])

    tags = run["tags"]
    committed, head = _committed_params()
    # the values this model was trained with, as train logged them (every params.yaml key), and this page's own
    current = {**run["params"], **tracking.flatten({"report": params.report.model_dump(mode="json")})}
    champion_params = champion_run["params"] if champion_run else None
    cleaned = clean.info.get("clean", {})
    scored = champion if champion and champion.get("status") == "scored" else None
    champion_per_class = (scored or {}).get("per_class") or {
        name: {"recall": recall} for name, recall in (scored or {}).get("recall", {}).items()
    }
    report_uri = f"runs:/{run['run_id']}/report/{Path(paths.report).name}"
    version = registry["version"]
    return {
        "title": f"{registry['model_name']} v{version}: {run['name']}",
        "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "headline": {
            "test_accuracy": metrics["test"]["accuracy"],
            "promoted": deployed["gate"]["promote"],
            "version": version,
            "alias": registry["alias"],
            "registered": registry.get("registered", True),
            "reason": deployed["gate"]["reason"],
        },
        "data": {
            "kind": clean.kind,
            "noun": "texts" if clean.kind == "text" else "images",
            "source": raw.info.get("source", params.data.source),
            "path": params.data.path if params.data.source in FILE_SOURCES else None,
            "classes": classes,
            "shape": list(clean.image_shape),
            "splits": [
                {
                    "split": split,
                    "raw": raw.count(split),
                    "clean": clean.count(split),
                    "augmented": augmented.count(split),
                    "per_class": clean.manifest["splits"][split]["class_counts"],
                }
                for split in clean.splits
            ],
            "removed": cleaned.get("removed", {}),
            "review": cleaned.get("review"),  # what the person's review did (clean applied it)
            "removed_total": cleaned.get("removed_total", 0),
            "input_total": cleaned.get("input_total", sum(raw.count(s) for s in raw.splits)),
            "augment": {**augmented.info.get("augment", {}), "samples": samples},
            "validation": [
                {
                    "boundary": v["boundary"],
                    "success": v["success"],
                    "rows": v["rows"],
                    "expectations": len(v["expectations"]),
                    "failed": v.get("failed", []),
                    "page": _docs_page(params, v["boundary"]),
                }
                for v in validations
            ],
            "drift": drift,
            "audit": audit_facts(
                artifacts.read_json(Path(paths.audit) / "summary.json"),
                _read_csv(Path(paths.audit) / "issues.csv"),
                np.load(Path(paths.audit) / "top.npy", allow_pickle=False),
            ),
        },
        "training": {
            "model": own_architecture(tags)
            or (
                f"text RNN ({'bidirectional ' if trained.bidirectional else ''}{trained.rnn.upper()})"
                if clean.kind == "text"
                else trained.model
            ),
            "changed": changed_params(current, committed, champion_params),
            "committed": head,
            "champion_version": champion["version"] if champion else None,
            "backend": tags.get("keras.backend", "unknown"),
            "device": tags.get("device", "unknown"),
            "device_name": tags.get("device.name", "unknown"),
            "replicas": tags.get("train.replicas"),
            "fit_seconds": float(tags["train.fit_seconds"]) if "train.fit_seconds" in tags else None,
            "stopping": stopping(history, trained),
            "curves": curves,
            "last": history[-1] if history else {},
        },
        "evaluation": {
            "headline": metrics,
            "per_class": [
                {"class": name, **m, "champion": champion_per_class.get(name)}
                for name, m in per_class["test"]["per_class"].items()
            ],
            "champion": champion,
            "confusion": confusion,
            "mistakes": wrong,
            "mistakes_png": wrong_png,
            "total_wrong": total_wrong,
            "test_count": per_class["test"]["count"],
        },
        "decision": {
            "gate": deployed["gate"],
            "deploy": deployed["settings"],  # the deploy params the gate applied
            "recall": [
                {
                    "class": name,
                    "candidate": m["recall"],
                    "champion": (scored or {}).get("recall", {}).get(name),
                    "drop": deployed["gate"]["class_recall_drops"].get(name),
                }
                for name, m in per_class["test"]["per_class"].items()
            ],
            "serving": deployed["serving"],
            "registry": registry,
            "aliases": aliases,
            "this_version_aliases": [alias for alias, v in aliases.items() if v == version],
        },
        "lineage": {
            "git_commit": tags.get("git.commit", "unknown"),
            "git_dirty": tags.get("git.dirty", "unknown"),
            "mlflow": {
                "run_id": run["run_id"],
                "run_name": run["name"],
                "experiment_id": run["experiment_id"],
                "tracking_uri": run_info.get("tracking_uri"),
                "ui_path": run_info.get("ui_path"),
                "model_uri": registry["model_uri"],
                "report_uri": report_uri,
            },
            # the flow run that trained the model (a tag of its MLflow run), and the one writing this page (they differ
            # when the flow found train cached)
            "prefect": {"training": tags.get("prefect.flow_run_id"), "report": tracking.prefect_flow_run_id()},
            "stages": _lineage_stages(Path("dvc.lock")),
            "packages": _versions(),
            "platform": f"{platform.system()} {platform.machine()}",
        },
        "model_card": {
            "card": model_card_text(params.model_card.model_dump(mode="json"), clean.kind),
            "name": registry["model_name"],
            "version": version,
            "architecture": architecture(params, trained, clean.kind, tags),
            "input": (
                "raw strings (N texts); split into words and numbered by the train vocabulary inside the model"
                if clean.kind == "text"
                else f"raw uint8 images {list(clean.image_shape)} (N × H × W × C)"
            ),
            "output": f"one of {len(classes)} classes with its probability and every class's probability",
            "datasets": [
                {"name": f"{paths.augmented}/train", "use": "training", "count": augmented.count("train")},
                {"name": f"{paths.clean}/val", "use": "early stopping", "count": clean.count("val")},
                {"name": f"{paths.clean}/test", "use": "evaluation and the gate", "count": clean.count("test")},
            ],
            "hashes": {s: clean.manifest["splits"][s]["sha256"][:16] for s in clean.splits},
            "quantitative": quantitative(per_class, metrics, params.report.confidence),
        },
    }


def run(params: Params) -> dict:
    """Write reports/report.html and log it to the MLflow run (deploy pointed the registered version at it)."""
    facts = gather(params)
    page = render(facts)
    target = Path(params.paths.report)
    artifacts.write_bytes(target, page.encode())
    registry = facts["decision"]["registry"]
    uri = tracking.log_report(params.tracking, facts["lineage"]["mlflow"]["run_id"], target)
    log.info("report: %s (%.0f KB), logged to MLflow as %s", target, len(page) / 1024, uri)
    return {"path": str(target), "bytes": len(page), "mlflow": uri, "version": registry["version"]}


if __name__ == "__main__":
    from tasks.lib.cli import main

    main("report", run)
