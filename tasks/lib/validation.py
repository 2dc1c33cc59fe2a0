"""Great Expectations at every stage boundary: summary table → suite → checkpoint → Data Docs.

The only module that knows GX's API (the statistics it checks come from tasks/lib/stats.py). A stage calls
:func:`validate_summaries` (or :func:`validate_dataset`, :func:`validate_predictions`) before it writes its output;
a failed suite raises a TrainflowError listing every failed expectation. The two GX calls outside its documented
API (:func:`_quiet_progress_bars`, :func:`_forget_previous_results`) are tested in tests/tasks/lib/test_validation.py
so that an upgrade that changes them fails loudly.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tasks.lib import artifacts
from tasks.lib.artifacts import Dataset
from tasks.lib.config import Params, PathsParams, ValidationParams
from tasks.lib.errors import TrainflowError
from tasks.lib.stats import ShardSummary, prediction_table, summarize_dataset, summary_table

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

# normalize has no suite: it writes statistics, not data (it checks them itself: tasks/normalize.py), and train reads
# the items augment validated
BOUNDARIES = ("raw", "clean", "augmented", "predictions")
IMAGE_BOUNDARIES = BOUNDARIES[:3]  # the dataset boundaries, of images or texts
DATASOURCE = "trainflow"
SITE = "trainflow"
BATCH = "whole"
FINGERPRINT = "trainflow_made_from"  # suite meta: what its suite, definition and checkpoint were made from
# A failed suite runs again with the ids of its failing rows, so the error names the split, shard and label; a
# passing one has nothing to name, and BASIC costs ~55 ms where this costs ~130 ms.
PASSING, ROWS_THAT_FAILED = "BASIC", {"result_format": "SUMMARY", "unexpected_index_column_names": ["id"]}


# ---------------------------------------------------------------------------------------------- suites


def image_expectations(boundary: str, classes: tuple[str, ...], splits: tuple[str, ...], params: Params) -> list[Any]:
    """The expectations of an image boundary (raw, clean, augmented), thresholds from params."""
    import great_expectations as gx

    e = gx.expectations
    v: ValidationParams = params.validation
    k = len(classes)
    dtype, low, high = "uint8", 0, 255  # what train reads too: the model applies normalize's statistics
    expectations = [
        e.ExpectColumnValuesToBeBetween(column="split_rows", min_value=v.min_images, max_value=v.max_images),
        e.ExpectColumnValuesToBeUnique(column="id"),
        e.ExpectColumnDistinctValuesToContainSet(
            column="split_label", value_set=[f"{s}:{c}" for s in splits for c in range(k)]
        ),
        e.ExpectColumnUniqueValueCountToBeBetween(column="shape", min_value=1, max_value=1),
        e.ExpectColumnValuesToBeInSet(column="dtype", value_set=[dtype]),
        e.ExpectColumnValuesToBeBetween(column="nan_count", min_value=0, max_value=0),
        e.ExpectColumnValuesToBeBetween(column="inf_count", min_value=0, max_value=0),
        e.ExpectColumnMinToBeBetween(column="min", min_value=low),
        e.ExpectColumnMaxToBeBetween(column="max", max_value=high),
    ]
    if boundary != "raw":
        # Labels outside the class set and train images leaked into val/test are what clean removes (and
        # counts): raw data may have them, every later boundary must not.
        expectations += [
            e.ExpectColumnValuesToBeInSet(column="label", value_set=list(range(k))),
            e.ExpectColumnValuesToBeBetween(column="class_fraction", min_value=v.min_class_fraction),
            e.ExpectColumnValuesToBeBetween(column="leaked_into_train", min_value=0, max_value=0),
        ]
    if boundary == "augmented":
        expectations.append(e.ExpectColumnValuesToBeBetween(column="changed_by_augment", min_value=0, max_value=0))
    return expectations


def text_expectations(boundary: str, classes: tuple[str, ...], splits: tuple[str, ...], params: Params) -> list[Any]:
    """The expectations of a text boundary (raw, clean, augmented), thresholds from params."""
    import great_expectations as gx

    e = gx.expectations
    v: ValidationParams = params.validation
    k = len(classes)
    expectations = [
        e.ExpectColumnValuesToBeBetween(column="split_rows", min_value=v.min_images, max_value=v.max_images),
        e.ExpectColumnValuesToBeUnique(column="id"),
        e.ExpectColumnDistinctValuesToContainSet(
            column="split_label", value_set=[f"{s}:{c}" for s in splits for c in range(k)]
        ),
        e.ExpectColumnValuesToBeInSet(column="dtype", value_set=[artifacts.TEXT]),
        e.ExpectColumnValuesToBeBetween(column="non_utf8", min_value=0, max_value=0),
    ]
    if boundary != "raw":
        # What clean removes (and counts): bad labels, leaks, empty and too long texts.
        expectations += [
            e.ExpectColumnValuesToBeInSet(column="label", value_set=list(range(k))),
            e.ExpectColumnValuesToBeBetween(column="class_fraction", min_value=v.min_class_fraction),
            e.ExpectColumnValuesToBeBetween(column="leaked_into_train", min_value=0, max_value=0),
            e.ExpectColumnValuesToBeBetween(column="empty", min_value=0, max_value=0),
            e.ExpectColumnValuesToBeBetween(column="max_length", max_value=params.clean.max_chars),
        ]
    if boundary == "augmented":
        expectations.append(e.ExpectColumnValuesToBeBetween(column="changed_by_augment", min_value=0, max_value=0))
    return expectations


def prediction_expectations(classes: tuple[str, ...], params: Params) -> list[Any]:
    """The expectations of evaluate's predictions: one known class per row, probabilities summing to 1."""
    import great_expectations as gx

    e = gx.expectations
    tolerance = params.validation.probability_tolerance
    k = list(range(len(classes)))
    return [
        e.ExpectTableRowCountToBeBetween(min_value=1),
        e.ExpectColumnValuesToBeUnique(column="id"),
        e.ExpectColumnValuesToBeInSet(column="label", value_set=k),
        e.ExpectColumnValuesToNotBeNull(column="predicted"),
        e.ExpectColumnValuesToBeInSet(column="predicted", value_set=k),
        e.ExpectColumnValuesToBeBetween(column="nan_count", min_value=0, max_value=0),
        e.ExpectColumnValuesToBeBetween(column="prob_sum", min_value=1 - tolerance, max_value=1 + tolerance),
        e.ExpectColumnMinToBeBetween(column="prob_min", min_value=0.0),
        e.ExpectColumnMaxToBeBetween(column="prob_max", max_value=1.0),
    ]


# ---------------------------------------------------------------------------------------------- GX context


def _quiet_progress_bars(context: Any) -> Any:
    """GX draws a tqdm bar per validation; off, in the project's context config. GX internal: ProgressBarsConfig."""
    from great_expectations.data_context.types.base import ProgressBarsConfig

    bars = context.variables.progress_bars  # a dict once read back from great_expectations.yml
    quiet = (bars.get("globally") if isinstance(bars, dict) else getattr(bars, "globally", None)) is False
    if quiet and not context.variables.config_variables_file_path:
        return False
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    # No config-variables file: the pipeline's settings come from params.yaml, and GX would re-read and parse
    # that YAML file on every access to a context variable.
    context.variables.config_variables_file_path = None
    context.variables.save()
    return True


def get_context(paths: PathsParams) -> Any:
    """The file-backed context under ``paths.gx`` with the Data Docs site at ``paths.data_docs``; idempotent."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # no internet: never try to phone home
    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # its INFO chatter would bury the stage log
    import great_expectations as gx

    root = Path(paths.gx).resolve()
    root.mkdir(parents=True, exist_ok=True)
    context = gx.get_context(mode="file", context_root_dir=str(root))
    if _quiet_progress_bars(context):
        context = gx.get_context(mode="file", context_root_dir=str(root))
    site = {
        "class_name": "SiteBuilder",
        "show_how_to_buttons": False,
        "store_backend": {
            "class_name": "TupleFilesystemStoreBackend",
            # relative to the gx/ folder, so the repo can move
            "base_directory": os.path.relpath(Path(paths.data_docs).resolve(), root),
        },
    }
    sites = context.get_config().data_docs_sites or {}
    if SITE not in sites:
        context.add_data_docs_site(site_name=SITE, site_config=site)
    elif dict(sites[SITE]) != site:
        context.update_data_docs_site(site_name=SITE, site_config=site)
    return context


def setup_checkpoint(context: Any, boundary: str, expectations: list[Any], result_format: Any = PASSING) -> Any:
    """Get-or-add the datasource, asset and batch definition; add-or-update suite, definition, checkpoint.

    The stored suite, definition and checkpoint are reused as they are when they were made from the same
    expectations, result format and batch definition (a fingerprint in the suite's meta): GX's add_or_update
    compares every expectation field by field and rewrites three files, ~70 ms a boundary.
    """
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction
    from great_expectations.exceptions import DataContextError

    try:
        source = context.data_sources.get(DATASOURCE)
    except KeyError:
        source = context.data_sources.add_pandas(DATASOURCE)
    try:
        asset = source.get_asset(boundary)
    except LookupError:
        asset = source.add_dataframe_asset(boundary)
    try:
        batch = asset.get_batch_definition(BATCH)
    except KeyError:
        batch = asset.add_batch_definition_whole_dataframe(BATCH)
    made_from = {
        "expectations": [e.configuration.to_json_dict() for e in expectations],
        "result_format": result_format,
        "batch_definition": batch.id,
        "site": SITE,
        "gx": gx.__version__,
    }
    fingerprint = hashlib.sha256(json.dumps(made_from, sort_keys=True, default=str).encode()).hexdigest()
    try:
        if context.suites.get(boundary).meta.get(FINGERPRINT) == fingerprint:
            return context.checkpoints.get(boundary)
    except (DataContextError, ValueError):
        pass  # not there (yet), or a part of it is gone: made again below
    suite = context.suites.add_or_update(
        gx.ExpectationSuite(name=boundary, expectations=expectations, meta={FINGERPRINT: fingerprint})
    )
    definition = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=boundary, data=batch, suite=suite)
    )
    return context.checkpoints.add_or_update(
        gx.Checkpoint(
            name=boundary,
            validation_definitions=[definition],
            actions=[UpdateDataDocsAction(name="data_docs", site_names=[SITE])],
            result_format=result_format,
        )
    )


def _forget_previous_results(context: Any, boundary: str, paths: PathsParams) -> None:
    """Data Docs show the latest result of each suite, not every run since the repo was cloned.

    GX internal: the validation results store's ``list_keys``/``remove_key`` (no documented call deletes a result).
    """
    store = context.validation_results_store
    for key in store.list_keys():
        if key.expectation_suite_identifier.name == boundary:
            store.remove_key(key)
    shutil.rmtree(Path(paths.data_docs) / "validations" / boundary, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- running


def _split_counts(table: pd.DataFrame) -> dict[str, int]:
    for items in ("images", "texts"):  # a dataset summary: rows are split × shard × label groups
        if items in table:
            return {str(k): int(v) for k, v in table.groupby("split", sort=False)[items].sum().items()}
    return {str(k): int(v) for k, v in table["split"].value_counts(sort=False).items()}


def _observed(result: Mapping[str, Any]) -> str:
    if result.get("observed_value") is not None:
        return f"observed {result['observed_value']}"
    if result.get("partial_missing_list"):
        return f"missing {list(result['partial_missing_list'])[:5]}"
    if result.get("unexpected_count"):
        sample = list(result.get("partial_unexpected_list") or [])[:3]
        where = [
            row.get("id") for row in (result.get("partial_unexpected_index_list") or [])[:3] if isinstance(row, dict)
        ]
        at = f" at {where}" if where else ""
        return f"observed {result['unexpected_count']} unexpected of {result.get('element_count')}, e.g. {sample}{at}"
    return "observed nothing"


def _raised(info: Mapping[str, Any] | None) -> str | None:
    """The message of an exception an expectation raised, on one line; GX gives it flat, or per metric when a
    metric failed (a missing column)."""
    for found in [info or {}, *(v for v in (info or {}).values() if isinstance(v, Mapping))]:
        if found.get("raised_exception"):
            return " ".join(str(found.get("exception_message")).split())
    return None


def failures(validation_result: Any) -> list[str]:
    """``expect_x(column) observed ...`` for each failed expectation of one validation result."""
    lines = []
    for r in validation_result.results:
        if r.success:
            continue
        config = r.expectation_config
        column = config.kwargs.get("column", "table")
        raised = _raised(r.exception_info)
        if raised is not None:
            lines.append(f"{config.type}({column}) raised {raised}")
        else:
            lines.append(f"{config.type}({column}) {_observed(r.result or {})}")
    return lines


def run_suite(boundary: str, table: pd.DataFrame, expectations: list[Any], params: Params) -> dict[str, Any]:
    """Validate ``table`` against the boundary's suite, update Data Docs, write the JSON summary on success.

    Raises:
        TrainflowError: one line listing every failed expectation with its column and observed value.
    """
    context = get_context(params.paths)
    started = time.perf_counter()
    for result_format in (PASSING, ROWS_THAT_FAILED):
        checkpoint = setup_checkpoint(context, boundary, expectations, result_format)
        _forget_previous_results(context, boundary, params.paths)
        outcome = checkpoint.run(batch_parameters={"dataframe": table})
        if outcome.success:
            break
        expectations = [copy.copy(e) for e in expectations]  # GX ties each to the suite it was saved in
    seconds = time.perf_counter() - started
    (result,) = outcome.run_results.values()
    failed = failures(result)
    docs = Path(params.paths.data_docs) / "index.html"
    if failed or not outcome.success:
        raise TrainflowError(f"validation {boundary} failed: {'; '.join(failed)} (Data Docs: {docs})")
    summary = {
        "boundary": boundary,
        "success": True,
        "rows": len(table),
        "splits": _split_counts(table),
        "expectations": [
            f"{r.expectation_config.type}({r.expectation_config.kwargs.get('column', 'table')})" for r in result.results
        ],
        "data_docs": str(docs),
    }
    artifacts.write_json(Path(params.paths.validation) / f"{boundary}.json", summary)
    log.info(
        "validation %s: %d expectations passed on %d rows in %.2f s", boundary, len(result.results), len(table), seconds
    )
    return summary


def validate_summaries(
    boundary: str,
    summaries: list[ShardSummary],
    classes: tuple[str, ...],
    params: Params,
) -> dict[str, Any]:
    """Validate a dataset at ``boundary`` (raw, clean, augmented) from its shards' summaries.

    Text summaries (dtype ``str``) are checked by :func:`text_expectations`, image ones by :func:`image_expectations`.

    Returns:
        The JSON summary written to ``paths.validation/<boundary>.json``.
    """
    if boundary not in IMAGE_BOUNDARIES:
        raise ValueError(f"unknown dataset boundary {boundary!r}")
    table = summary_table(summaries)
    splits = tuple(dict.fromkeys(s.split for s in summaries))
    text = bool(summaries) and summaries[0].kind == "text"  # summary_table refused a mix
    expectations = (text_expectations if text else image_expectations)(boundary, classes, splits, params)
    return run_suite(boundary, table, expectations, params)


def validate_dataset(boundary: str, dataset: Dataset, params: Params) -> dict[str, Any]:
    """Validate an in-memory dataset (ingest's), cut into ``data.shard_size`` shards as it will be written.

    Args:
        boundary: which suite.
        dataset: the stage's output, before it is written.
        params: the whole config (paths, validation thresholds, shard size).
    """
    return validate_summaries(boundary, summarize_dataset(dataset, params.data.shard_size), dataset.classes, params)


def validate_predictions(
    results: Mapping[str, tuple[np.ndarray, np.ndarray]], classes: tuple[str, ...], params: Params
) -> dict[str, Any]:
    """Validate evaluate's predictions ({split: (labels, probabilities)}) with the ``predictions`` suite."""
    return run_suite("predictions", prediction_table(results), prediction_expectations(classes, params), params)
