"""tasks/report.py: the pure core on hand-made facts, the page in a real headless Chromium (network off), and the stage
end to end on a tiny `dvc repro`: every section, the lineage of dvc.lock, the MLflow artifact and the registry link."""

from __future__ import annotations

import base64
import csv
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tasks.lib.config import Params, read_params_file
from tasks.lib.errors import TrainflowError
from tasks.lib.tracking import flat_params, flatten
from tasks.report import (
    SECTIONS,
    audit_facts,
    changed_params,
    gather,
    image_grid,
    mistakes,
    model_card_text,
    render,
    stopping,
    wilson,
)
from tests.conftest import copy_run
from tests.helpers import committed_params_file, processes_in, ran, sh
from tests.helpers import in_chromium as chromium

PNG = b"\x89PNG\r\n\x1a\n"


# ---- the pure core ----


def test_wilson_interval_matches_the_textbook_values() -> None:
    low, high = wilson(0, 10, 0.95)
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson(10, 10, 0.95)
    assert low == pytest.approx(0.7225, abs=1e-4) and high == pytest.approx(1.0)
    low, high = wilson(81, 263, 0.95)  # Wilson (1927) as quoted by Newcombe (1998), case 1
    assert (low, high) == (pytest.approx(0.2553, abs=1e-4), pytest.approx(0.3662, abs=1e-4))
    assert wilson(90, 100, 0.99)[0] < wilson(90, 100, 0.95)[0]  # more confidence, a wider interval
    assert wilson(0, 0, 0.95) == (0.0, 1.0)


def test_changed_params_compares_values_not_spellings_and_only_params_keys() -> None:
    current = {"train.epochs": "3", "deploy.serving_timeout": "120.0", "train.filters": "[8, 16]", "train.new": "1"}
    current |= {"classes": "['a', 'b']", "kind": "text", "max_request_images": "100"}  # logged, but no params keys
    committed = {"train.epochs": "20", "deploy.serving_timeout": "120", "train.filters": "[8, 16]"}
    rows = changed_params(current, committed, None)
    assert rows == [
        {"key": "train.epochs", "value": "3", "committed": "20", "champion": None},
        {"key": "train.new", "value": "1", "committed": None, "champion": None},
    ]
    champion = {**current, "train.epochs": "3", "train.new": "2", "kind": "image"}
    assert [r["key"] for r in changed_params(current, None, champion)] == ["train.new"]
    assert changed_params(current, None, None) == []


def test_the_default_model_card_follows_the_kind_of_data(params: Params) -> None:
    card = params.model_card.model_dump(mode="json")
    for kind, other in (("text", "image"), ("image", "text")):
        text = " ".join(str(v) for v in model_card_text(card, kind).values())
        assert f"A small {kind} classifier" in text and other not in text and "{" not in text


def test_params_as_logged_equal_params_yaml_as_written(params: Params) -> None:
    # a run of the committed params.yaml changes nothing: no key appears that the file does not have (tune.space's
    # unset low/high/step/choices once did, as None)
    written = flatten(read_params_file(committed_params_file()))
    assert changed_params(flat_params(params), written, None) == []


def test_stopping_says_why_training_ended(params: Params) -> None:
    def history(*losses: float) -> list[dict[str, str]]:
        return [{"epoch": str(i), "val_loss": str(v)} for i, v in enumerate(losses)]

    train = params.train.model_copy(update={"epochs": 8, "early_stopping_patience": 2})
    early = stopping(history(1.0, 0.5, 0.6, 0.7), train)
    assert early["epochs_run"] == 4 and early["best_epoch"] == 2
    assert early["reason"].startswith("early stopping") and "patience=2" in early["reason"]
    full = stopping(history(*np.linspace(1, 0.1, 8)), train)
    assert full["best_epoch"] == 8 and full["reason"] == "ran all train.epochs=8 epochs"


def test_mistakes_are_the_most_confident_wrong_test_answers() -> None:
    def row(split: str, index: int, label: int, predicted: int, p: float) -> dict[str, str]:
        probabilities = [(1 - p) / 2] * 3
        probabilities[predicted] = p
        return {"split": split, "index": str(index), "label": str(label), "predicted": str(predicted)} | {
            f"p_{k}": str(v) for k, v in enumerate(probabilities)
        }

    rows = [row("val", 0, 0, 1, 0.99), row("test", 0, 0, 0, 0.9), row("test", 1, 0, 2, 0.6), row("test", 2, 1, 0, 0.8)]
    assert mistakes(rows, 5) == [
        {"index": 2, "label": 1, "predicted": 0, "probability": pytest.approx(0.8)},
        {"index": 1, "label": 0, "predicted": 2, "probability": pytest.approx(0.6)},
    ]
    assert len(mistakes(rows, 1)) == 1


def facts() -> dict[str, Any]:
    """A small, complete set of facts: what :func:`tasks.report.gather` returns, by hand (two classes)."""
    picture = image_grid(np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4, 1) * 8, ["a", "b"])
    gate = {
        "metric": "accuracy",
        "candidate": 0.9,
        "champion": 0.8,
        "champion_version": 1,
        "p_value": 0.01,
        "class_recall_drops": {},
        "b": 9,
        "c": 1,
        "promote": True,
        "reason": "accuracy 0.9000 beats the champion's 0.8000 (McNemar p=0.01)",
    }
    per_class = [
        {"class": c, "precision": 0.9, "recall": 0.9, "f1": 0.9, "support": 50, "champion": {"recall": 0.8}}
        for c in ("cat", "dog")
    ]
    headline = {
        s: {"loss": 0.3, "accuracy": 0.9, "precision_macro": 0.9, "recall_macro": 0.9, "f1_macro": 0.9}
        for s in ("val", "test")
    }
    return {
        "title": "pets v2: <run>",
        "generated": "2026-01-01 00:00:00 UTC",
        "headline": {
            "test_accuracy": 0.9,
            "promoted": True,
            "version": 2,
            "alias": "champion",
            "registered": True,
            "reason": gate["reason"],
        },
        "data": {
            "kind": "images",
            "noun": "images",
            "source": "folder",
            "path": "data/input",
            "classes": ["cat", "dog"],
            "shape": [4, 4, 1],
            "splits": [
                {"split": "test", "raw": 101, "clean": 100, "augmented": 100, "per_class": {"cat": 50, "dog": 50}}
            ],
            "removed": {"test": {"bad_label": 0, "constant": 1, "duplicate": 0, "leak": 0}},
            "removed_total": 1,
            "input_total": 101,
            "augment": {"copies": 1, "train_original": 10, "train_added": 10, "samples": picture},
            "validation": [
                {
                    "boundary": "raw",
                    "success": True,
                    "rows": 4,
                    "expectations": 9,
                    "failed": [],
                    "page": "data_docs/x.html",
                }
            ],
            "drift": {
                "checked": True,
                "drifted": False,
                "action": "warn",
                "reference": "pets v1",
                "reasons": [],
                "label_p_value": 0.5,
            },
            "audit": audit_facts(
                {"flagged": {"label": 2, "outlier": 0}, "seconds": {"cross_validation": 3.0}, "folds": 3},
                [
                    {
                        "id": "cat/7.png",
                        "split": "train",
                        "given_label": "cat",
                        "suggested_label": "dog",
                        "score": "0.01",
                        "issue": "label",
                    },
                    {
                        "id": "dog/2.png",
                        "split": "val",
                        "given_label": "dog",
                        "suggested_label": "cat",
                        "score": "0.02",
                        "issue": "label",
                    },
                ],
                np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4, 1),
            ),
        },
        "training": {
            "model": "cnn",
            "changed": [{"key": "train.epochs", "value": "3", "committed": "20", "champion": "20"}],
            "committed": "abc1234",
            "champion_version": 1,
            "backend": "tensorflow",
            "device": "CPU",
            "device_name": "x86_64",
            "replicas": "1",
            "fit_seconds": 1.5,
            "stopping": {"epochs_run": 3, "epochs_max": 3, "best_epoch": 3, "best_val_loss": 0.3, "reason": "all"},
            "curves": picture,
            "last": {},
        },
        "evaluation": {
            "headline": headline,
            "per_class": per_class,
            "champion": {"version": 1, "status": "scored"},
            "confusion": picture,
            "mistakes": [{"index": 3, "label": "cat", "predicted": "dog", "probability": 0.7}],
            "mistakes_png": picture,
            "total_wrong": 10,
            "test_count": 100,
        },
        "decision": {
            "gate": gate,
            "deploy": {
                "require_significance": True,
                "significance_level": 0.05,
                "min_metric": 0.5,
                "max_class_recall_drop": 0.05,
            },
            "recall": [{"class": "cat", "candidate": 0.9, "champion": 0.8, "drop": None}],
            "serving": {
                "ok": True,
                "checked": 16,
                "max_abs_diff": 1e-7,
                "latency_ms": {"p50": 10.0, "p95": 20.0},
                "startup_s": 5.0,
            },
            "registry": {"model_name": "pets", "version": 2, "alias": "champion", "model_uri": "models:/pets/2"},
            "aliases": {"champion": 2, "previous-champion": 1},
            "this_version_aliases": ["champion"],
        },
        "lineage": {
            "git_commit": "abc1234",
            "git_dirty": "false",
            "mlflow": {
                "run_id": "r1",
                "run_name": "pets",
                "experiment_id": "1",
                "tracking_uri": "sqlite:///mlflow.db",
                "ui_path": "#/experiments/1/runs/r1",
                "model_uri": "models:/pets/2",
                "report_uri": "runs:/r1/report/report.html",
            },
            "prefect": {"training": "f-1", "report": "f-2"},
            "stages": [
                {
                    "stage": "ingest",
                    "files": [{"kind": "out", "path": "data/raw", "hash": "d41d8cd9.dir", "size": 9}],
                    "params": {"seed": "42"},
                }
            ],
            "packages": [{"name": "python", "version": "3.11"}],
            "platform": "Linux x86_64",
        },
        "model_card": {
            "card": {
                "overview": "A pet classifier.",
                "owners": ["ml-team"],
                "license": "MIT",
                "intended_use": "Sorting pet photos <script>alert(1)</script>",
                "users": "us",
                "limitations": "Only cats and dogs.",
                "tradeoffs": "small",
                "ethical_considerations": "none known",
            },
            "name": "pets",
            "version": 2,
            "architecture": "cnn",
            "input": "uint8",
            "output": "classes",
            "datasets": [{"name": "data/clean/test", "use": "evaluation", "count": 100}],
            "hashes": {"test": "0123456789abcdef"},
            "quantitative": {
                "confidence": 0.95,
                "overall": [{"split": "test", "accuracy": 0.9, "n": 100, "ci": wilson(90, 100, 0.95)}],
                "per_class": [{"class": "cat", "accuracy": 0.9, "n": 50, "ci": wilson(45, 50, 0.95)}],
            },
        },
    }


class _Page(HTMLParser):
    """Section ids, image sources, and every URL the page could fetch (src, href of link/script, CSS url())."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images: list[str] = []
        self.fetches: list[str] = []
        self.tags: set[str] = set()
        self.feed(text)
        self.fetches += re.findall(r"url\(\s*['\"]?([^)'\"]+)", text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.tags.add(tag)
        if tag == "section":
            self.sections.append(found.get("id") or "")
        if tag == "img":
            self.images.append(found.get("src") or "")
        if found.get("src"):
            self.fetches.append(found["src"] or "")
        if tag in ("link", "script", "iframe", "object", "embed") and found.get("href"):
            self.fetches.append(found["href"] or "")


def check_self_contained(text: str) -> _Page:
    page = _Page(text)
    assert page.sections == list(SECTIONS) and page.sections[-2:] == ["model-card", "lineage"]  # provenance last
    assert "<details open" not in text  # the lineage's per-stage file tables start folded
    assert not page.tags & {"script", "link", "iframe", "object", "embed"}  # nothing runs, nothing is fetched
    assert all(src.startswith("data:image/png;base64,") for src in page.images)
    assert all(base64.b64decode(src.split(",", 1)[1])[:8] == PNG for src in page.images)
    assert not [u for u in page.fetches if not u.startswith(("data:", "#"))], page.fetches
    assert not re.search(r"(src|href)\s*=\s*['\"]?\s*(https?:)?//", text)
    return page


def test_render_has_every_section_inline_images_and_nothing_to_fetch() -> None:
    text = render(facts())
    page = check_self_contained(text)
    assert len(page.images) == 5  # samples, the audit's top items, curves, confusion, mistakes: all inline
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text  # the model card's free text is escaped
    assert "pets v2: &lt;run&gt;" in text
    assert "90.0 %" in text and "82.6 % – 94.5 %" in text  # accuracy with its Wilson interval
    assert "@champion → v2; @previous-champion → v1" in text
    assert 'href="data_docs/x.html"' in text  # the relative link to the suite's Data Docs page
    assert "trained in <code>f-1</code>" in text and "this page written by <code>f-2</code>" in text


def test_render_shows_the_audits_top_items_with_their_source_ids_and_texts() -> None:
    """The audit's top label issues: a picture grid and a row per item (source id, given → suggested, score); texts
    shown as text; what the person's review did. Fails without the section (mutation: the template's audit block
    removed) and without the review's line."""
    page = render(facts())
    assert 'id="audit"' in page and "flagged\n2 label, 0 outlier" in page
    assert "<code>cat/7.png</code></td><td>train</td><td>cat</td><td>dog</td>" in page
    assert page.count("data:image/png;base64,") >= 4  # the audit's grid among the page's pictures
    texts = facts()
    texts["data"]["kind"] = "text"
    texts["evaluation"]["mistakes"] = []
    texts["data"]["audit"] = audit_facts(
        {"flagged": {"label": 1}, "seconds": {"cleanlab": 1.0}, "folds": 2},
        [
            {
                "id": "sms.tsv:12",
                "split": "test",
                "given_label": "ham",
                "suggested_label": "spam",
                "score": "0.1",
                "issue": "label",
            }
        ],
        np.array(["WINNER! claim your prize"]),
    )
    assert "<td>WINNER! claim your prize</td>" in render(texts)
    reviewed = facts()
    reviewed["data"]["removed"] = {"test": {"bad_label": 0, "excluded_by_review": 2}}
    reviewed["data"]["review"] = {
        "file": "data/review.csv",
        "relabelled_by_review": {"train": 3, "test": 1},
        "unmatched": 1,
        "unmatched_examples": ["gone.png"],
    }
    assert "2 excluded, 4 relabelled; 1 ids match no item (gone.png)." in render(reviewed)


def test_render_says_when_the_model_was_identical_to_a_registered_version() -> None:
    same = facts()
    same["headline"] |= {"promoted": False, "version": 1, "registered": False}
    same["decision"]["gate"] |= {"promote": False, "identical_to": 1, "reason": "identical to pets v1 (@champion)"}
    same["decision"]["serving"] = None
    same["decision"]["registry"] |= {"version": 1, "registered": False}
    text = render(same)
    assert "Not registered again: identical to v1" in text and "Not served again" in text
    assert "identical to<b>v1 @champion</b>" in text


def test_render_shows_no_credential_of_any_fact() -> None:
    """A champion logged by an older version may hold a tracking URI's password among its params: never on the page."""
    leaky = facts()
    leaky["training"]["changed"] = [
        {"key": "tracking.uri", "value": "http://***@h", "committed": None, "champion": "http://a:pw-champion-1@h"},
        {"key": "tune.storage", "value": "sqlite:///o.db?password=pw-query-2", "committed": None, "champion": None},
    ]
    leaky["lineage"]["mlflow"]["tracking_uri"] = "https://a:pw-lineage-3@mlflow.example"
    text = render(leaky)
    assert "tracking.uri" in text and "https://***@mlflow.example" in text
    assert "pw-" not in text


def test_render_refuses_a_missing_fact() -> None:
    import jinja2

    incomplete = facts()
    del incomplete["decision"]["serving"]
    with pytest.raises(jinja2.UndefinedError, match="serving"):
        render(incomplete)


def test_a_missing_upstream_file_is_one_line_naming_it(params: Params, tmp_path: Path) -> None:
    paths = {key: str(tmp_path / value) for key, value in params.paths.model_dump().items()}
    config = params.model_copy(update={"paths": params.paths.model_copy(update=paths)})
    with pytest.raises(TrainflowError, match=r"data/raw/manifest\.json: not found") as caught:
        gather(config)
    assert "\n" not in str(caught.value)


# ---- a real browser, network off ----

# Appended to a test copy of a page only: on load, the result goes into the DOM for --dump-dom.
PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  const result = {
    sections: [...document.querySelectorAll("section[id]")].map((s) => s.id),
    images: images.length,
    broken: images.filter((i) => !(i.complete && i.naturalWidth > 0)).map((i) => i.alt),
    requests: performance.getEntriesByType("resource").map((e) => e.name).filter((u) => !u.startsWith("data:")),
  };
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
});
</script>"""


def in_chromium(html: str, folder: Path) -> dict[str, Any]:
    """The report's probe's result for ``html`` in headless Chromium, network off."""
    return chromium(html, folder, PROBE)


def test_a_misclassified_texts_unprintable_characters_show_as_escapes() -> None:
    """SMS texts hold C1 controls (\\x92: a Windows-1252 quote read as Latin-1), which a browser draws as a box or
    not at all: the page shows their escape. Fails without the template's ``visible`` filter (the raw \\x92)."""
    text_facts = facts()
    text_facts["data"] |= {"kind": "text", "noun": "texts"}
    text_facts["evaluation"]["mistakes"] = [
        {"index": 3, "label": "ham", "predicted": "spam", "probability": 0.7, "text": "don\x92t £5 café"}
    ]
    page = render(text_facts)
    assert "don\\x92t £5 café" in page and "\x92" not in page


def test_the_page_renders_offline_in_chromium(tmp_path: Path) -> None:
    result = in_chromium(render(facts()), tmp_path)
    assert result == {"sections": list(SECTIONS), "images": 5, "broken": [], "requests": []}


def test_the_chromium_probe_sees_a_request_and_a_broken_image(tmp_path: Path) -> None:
    """The probe is not blind: a page that fetches an image from the network shows both."""
    text = render(facts()).replace("</section>", '<img alt="remote" src="http://example.com/x.png"></section>', 1)
    result = in_chromium(text, tmp_path)
    assert result["broken"] == ["remote"] and result["requests"] == ["http://example.com/x.png"]


# ---- the stage end to end ----


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, tiny_run: Path) -> Path:
    """A tiny pipeline run by `dvc repro`, with one param changed after the last commit (the report shows it)."""
    root = copy_run(tiny_run, tmp_path_factory.mktemp("report") / "workspace")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["report"]["misclassified"] = 5
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    done = sh(root, "dvc", "repro")
    assert ran(done.stdout) == ["report"]  # the report's own param: only the page is written again
    assert processes_in(root) == []
    return root


@pytest.mark.slow
def test_repro_writes_the_report_with_this_runs_lineage(workspace: Path) -> None:
    text = (workspace / "reports/report.html").read_text()
    check_self_contained(text)
    lock = yaml.safe_load((workspace / "dvc.lock").read_text())["stages"]
    for stage in ("ingest", "train", "deploy"):  # the hashes of this run, as dvc.lock holds them after the run
        for out in lock[stage]["outs"]:
            assert out["md5"] in text, (stage, out["path"])
    run = json.loads((workspace / "models/mlflow_run.json").read_text())
    assert run["run_id"] in text
    assert "<code>report.misclassified</code></td><td><code>5</code></td>" in text.replace("\n", "")  # vs committed 12
    assert "(uncommitted changes in the tree)" in text  # params.yaml was changed after the last commit
    shown = len(re.findall(r"<tr><td class=\"n\">\d+</td><td>\d</td><td>\d</td>", text))
    assert shown <= 5
    assert "up to date" in sh(workspace, "dvc", "status").stdout
    with (workspace / "reports/audit/issues.csv").open() as f:  # the audit stage ran in the DAG; its top is shown
        first = next((row for row in csv.DictReader(f) if row["issue"] == "label"), None)
    assert 'id="audit"' in text and (first is None or f"<code>{first['id']}</code>" in text)


@pytest.mark.slow
def test_the_report_is_in_mlflow_and_the_version_points_at_it(workspace: Path) -> None:
    from mlflow import MlflowClient

    store = f"sqlite:///{workspace / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store, registry_uri=store)  # not whatever registry an earlier test set
    run_id = json.loads((workspace / "models/mlflow_run.json").read_text())["run_id"]
    local = client.download_artifacts(run_id, "report/report.html", str(workspace / "downloaded"))
    assert Path(local).read_bytes() == (workspace / "reports/report.html").read_bytes()
    assert client.get_run(run_id).data.tags["trainflow.report"] == "report/report.html"
    version = json.loads((workspace / "reports/deploy.json").read_text())["registry"]["version"]
    registered = client.get_model_version("trainflow-classifier", str(version))
    assert registered.tags["trainflow.report"] == f"runs:/{run_id}/report/report.html"
    assert f"runs:/{run_id}/report/report.html" in registered.description


@pytest.mark.slow
def test_a_missing_input_stops_the_stage_with_one_line_and_keeps_the_page(workspace: Path) -> None:
    deployed = workspace / "reports/deploy.json"
    before, kept = (workspace / "reports/report.html").read_bytes(), deployed.read_bytes()
    deployed.unlink()
    try:
        failed = sh(workspace, "python", "-m", "tasks.report", check=False)
    finally:
        deployed.write_bytes(kept)
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines()[-1] == (
        "error: report: reports/deploy.json: not found; run `dvc repro deploy` first"
    )
    assert (workspace / "reports/report.html").read_bytes() == before
    assert not list((workspace / "reports").glob(".report.html.*"))


@pytest.mark.slow
def test_the_pipelines_report_renders_offline_in_chromium(workspace: Path, tmp_path: Path) -> None:
    result = in_chromium((workspace / "reports/report.html").read_text(), tmp_path)
    assert result["sections"] == list(SECTIONS) and result["broken"] == [] and result["requests"] == []
    assert result["images"] == 5  # with the audit's top label issues
