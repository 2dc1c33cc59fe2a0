"""Great Expectations at every stage boundary: shard summaries → summary table → suite → checkpoint → Data Docs.

The only module that knows GX's API. A stage calls :func:`validate_dataset` (or :func:`validate_predictions`)
before it writes its output; a failed suite raises a TrainflowError listing every failed expectation.
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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tasks import artifacts
from tasks.artifacts import Dataset
from tasks.config import Params, PathsParams, ValidationParams
from tasks.errors import TrainflowError

if TYPE_CHECKING:  # pandas is imported where a table is built: a stage process hands over to a warm
    import pandas as pd  # server before it would need it (tasks/warm.py)

log = logging.getLogger(__name__)

BOUNDARIES = ("raw", "clean", "augmented", "normalized", "predictions")
IMAGE_BOUNDARIES = BOUNDARIES[:4]
DATASOURCE = "trainflow"
SITE = "trainflow"
BATCH = "whole"
FINGERPRINT = "trainflow_made_from"  # suite meta: what its suite, definition and checkpoint were made from
# A failed suite runs again with the ids of its failing rows, so the error names the split, shard and label; a
# passing one has nothing to name, and BASIC costs ~55 ms where this costs ~130 ms.
PASSING, ROWS_THAT_FAILED = "BASIC", {"result_format": "SUMMARY", "unexpected_index_column_names": ["id"]}
CHUNK = 1024  # images summarised at once: temporaries that stay in cache (2–5× faster than 16,384)
_HASH_SEED = 0x7472_6169_6E66  # fixed: the same image always gets the same content hash


# ---------------------------------------------------------------------------------------------- summary tables


def _mixers(words: int) -> np.ndarray:
    """Two fixed odd 64-bit multipliers per word position (two independent 64-bit hashes → 128 bits)."""
    rng = np.random.default_rng(_HASH_SEED)
    return rng.integers(1, 2**63, size=(words, 2), dtype=np.uint64) | np.uint64(1)


def row_hashes(flat: np.ndarray) -> np.ndarray:
    """128-bit content hash of each row of a 2-D array, as (N, 2) uint64, numpy-vectorised.

    Each 64-bit word of a row is mixed (xor-shift, multiply), then combined with position-dependent
    odd multipliers (wrapping arithmetic), so equal rows hash equal and a changed pixel changes the hash.
    """
    if not flat.size:
        return np.zeros((len(flat), 2), dtype=np.uint64)
    data = np.ascontiguousarray(flat).view(np.uint8).reshape(len(flat), -1)
    pad = (-data.shape[1]) % 8
    if pad:
        data = np.concatenate([data, np.zeros((len(data), pad), dtype=np.uint8)], axis=1)
    words = data.view(np.uint64)
    mixed = words ^ (words >> np.uint64(29))
    mixed *= np.uint64(0xBF58476D1CE4E5B9)
    mixed ^= mixed >> np.uint64(32)
    out = mixed @ _mixers(words.shape[1])
    out ^= out >> np.uint64(31)
    return out


def _image_stats(x: np.ndarray, with_hashes: bool = True) -> dict[str, np.ndarray]:
    """Per image: min, max, pixel sum and sum of squares, NaN and inf counts and content hash, CHUNK at a time."""
    n = len(x)
    flat = np.asarray(x).reshape(n, -1)
    stats = {k: np.zeros(n, dtype=np.float64) for k in ("min", "max", "sum", "squares")}
    stats |= {k: np.zeros(n, dtype=np.int64) for k in ("nan_count", "inf_count")}
    hashes = np.empty((n, 2), dtype=np.uint64)
    is_float, pixels = flat.dtype.kind == "f", flat.shape[1]
    for start in range(0, n, CHUNK):
        part = slice(start, start + CHUNK)
        rows = flat[part]
        if is_float and not np.isfinite(rows).all():  # the counts are zero otherwise
            stats["nan_count"][part] = np.isnan(rows).sum(axis=1)
            stats["inf_count"][part] = np.isinf(rows).sum(axis=1)
        if pixels:
            stats["min"][part] = rows.min(axis=1)
            stats["max"][part] = rows.max(axis=1)
            if rows.dtype == np.uint8:  # exact integer sums (squares fit 16 bits)
                stats["sum"][part] = rows.sum(axis=1, dtype=np.int64)
                stats["squares"][part] = (rows.astype(np.uint16) ** 2).sum(axis=1, dtype=np.uint64)
            else:  # float32: ample for statistics that no expectation bounds tightly
                values = rows.astype(np.float32, copy=False)
                # einsum, as fast as BLAS on one core: BLAS starts threads of its own in each of the stage's
                # workers, and on 2 cores that made these sums 6× slower
                stats["sum"][part] = np.einsum("ij->i", values)
                stats["squares"][part] = np.einsum("ij,ij->i", values, values)
        if with_hashes:
            hashes[part] = row_hashes(rows)
    return {**stats, "hash": hashes} if with_hashes else stats


def _in_train(hashes: np.ndarray, train: np.ndarray, train_first: np.ndarray) -> np.ndarray:
    """Which rows' 128-bit hashes also occur in ``train``: candidates on the first word (``train_first``: train's
    first words, sorted once for every split), confirmed on both."""
    if not len(train_first):
        return np.zeros(len(hashes), bool)
    at = np.minimum(np.searchsorted(train_first, hashes[:, 0]), len(train_first) - 1)
    found = train_first[at] == hashes[:, 0]
    if found.any():
        known = set(map(tuple, train[np.isin(train[:, 0], hashes[found, 0])].tolist()))
        found[found] = [tuple(h) in known for h in hashes[found].tolist()]
    return found


@dataclass(frozen=True)
class ShardSummary:
    """What the suites need of one shard: per-label aggregates and each image's label and content hash.

    Small (24 bytes per image plus a row per label), so a stage's workers return these instead of pixels.
    """

    split: str
    shard: int
    shape: tuple[int, ...]
    dtype: str
    pixels: int  # per image
    labels: np.ndarray  # (n,) int64
    hashes: np.ndarray  # (n, 2) uint64
    groups: dict[str, np.ndarray]  # per distinct label: label, images, min, max, sum, squares, nan/inf counts, changed


def summarize(
    split: str,
    shard: int,
    x: np.ndarray,
    y: np.ndarray,
    reference: np.ndarray | None = None,
    hashes: np.ndarray | None = None,
) -> ShardSummary:
    """Aggregate one shard's images per label.

    Args:
        split, shard: where the images are.
        x, y: the shard's images and labels.
        reference: the same shard before the stage (augment's val/test); ``changed`` counts images that differ.
        hashes: the images' :func:`row_hashes` when the stage has them already.
    """
    y = np.asarray(y).astype(np.int64)
    stats = _image_stats(x, hashes is None)
    hashes = stats.pop("hash") if hashes is None else hashes
    labels, inverse = np.unique(y, return_inverse=True)
    k = len(labels)
    groups: dict[str, np.ndarray] = {"label": labels, "images": np.bincount(inverse, minlength=k)}
    for key in ("sum", "squares", "nan_count", "inf_count"):
        groups[key] = np.bincount(inverse, weights=stats[key], minlength=k)
    groups["min"], groups["max"] = np.full(k, np.inf), np.full(k, -np.inf)
    with np.errstate(invalid="ignore"):  # a NaN pixel makes its group's min/max NaN: nan_count reports it
        np.minimum.at(groups["min"], inverse, stats["min"])
        np.maximum.at(groups["max"], inverse, stats["max"])
    if reference is not None:
        before = row_hashes(np.asarray(reference).reshape(len(reference), -1))
        changed = np.ones(len(y), bool) if len(before) != len(y) else (hashes != before).any(axis=1)
        groups["changed"] = np.bincount(inverse, weights=changed, minlength=k)
    pixels = int(np.prod(x.shape[1:])) if x.ndim > 1 else 0
    return ShardSummary(split, shard, tuple(int(d) for d in x.shape[1:]), str(x.dtype), pixels, y, hashes, groups)


def summary_table(summaries: list[ShardSummary]) -> pd.DataFrame:
    """One row per split × shard × label: what the suites check.

    Columns: split, shard, label, id (``split/shard/label``), images, height, width, channels, shape, dtype, min,
    max, mean, std (over the row's pixels), nan_count, inf_count, split_rows (images in the row's split),
    class_fraction (share of the row's label in its split), split_label, leaked_into_train (val/test images whose
    content is also in train) and, when the summaries carry it, changed_by_augment (val/test images that differ
    from the stage's input). Its size grows with shards and classes, not images.
    """
    train = [s.hashes for s in summaries if s.split == "train"]
    train_hashes = np.concatenate(train) if train else np.zeros((0, 2), np.uint64)
    train_first = np.sort(train_hashes[:, 0])
    split_rows: dict[str, int] = {}
    label_rows: dict[tuple[str, int], int] = {}
    for s in summaries:
        split_rows[s.split] = split_rows.get(s.split, 0) + len(s.labels)
        for label, n in zip(s.groups["label"].tolist(), s.groups["images"].tolist(), strict=True):
            label_rows[s.split, label] = label_rows.get((s.split, label), 0) + n
    with_changed = any("changed" in s.groups for s in summaries)
    rows = []
    for s in summaries:
        leaked = np.zeros(len(s.labels), bool) if s.split == "train" else _in_train(s.hashes, train_hashes, train_first)
        inverse = np.searchsorted(s.groups["label"], s.labels)
        leaked_per_label = np.bincount(inverse, weights=leaked, minlength=len(s.groups["label"]))
        height, width, channels = (*s.shape, 1, 1, 1)[:3]
        for g, label in enumerate(s.groups["label"].tolist()):
            images, values = int(s.groups["images"][g]), max(int(s.groups["images"][g]) * s.pixels, 1)
            mean = s.groups["sum"][g] / values
            row = {
                "split": s.split,
                "shard": s.shard,
                "label": label,
                "id": f"{s.split}/{s.shard}/{label}",
                "images": images,
                "height": height,
                "width": width,
                "channels": channels,
                "shape": "x".join(map(str, s.shape)),
                "dtype": s.dtype,
                "min": float(s.groups["min"][g]),
                "max": float(s.groups["max"][g]),
                "mean": float(mean),
                "std": float(np.sqrt(max(s.groups["squares"][g] / values - mean * mean, 0.0))),
                "nan_count": int(s.groups["nan_count"][g]),
                "inf_count": int(s.groups["inf_count"][g]),
                "split_rows": split_rows[s.split],
                "class_fraction": label_rows[s.split, label] / split_rows[s.split],
                "split_label": f"{s.split}:{label}",
                "leaked_into_train": int(leaked_per_label[g]),
            }
            if with_changed:
                row["changed_by_augment"] = int(s.groups.get("changed", np.zeros(len(s.groups["label"])))[g])
            rows.append(row)
    import pandas as pd

    return pd.DataFrame(rows, columns=None if rows else ["split", "split_rows", "split_label", "id"])


def summarize_dataset(dataset: Dataset, shard_size: int | None, reference: Dataset | None = None) -> list[ShardSummary]:
    """Summaries of an in-memory dataset cut into the shards :func:`artifacts.write_dataset` would write."""
    summaries = []
    for name, split in dataset.splits.items():
        checked = reference is not None and name != "train"  # augment may change train only
        before = (
            list(artifacts.chunks(reference.splits[name], shard_size)) if checked and name in reference.splits else []
        )
        for i, part in enumerate(artifacts.chunks(split, shard_size)):
            ref = (before[i].x if i < len(before) else part.x[:0]) if checked else None  # missing: all changed
            summaries.append(summarize(name, i, part.x, part.y, ref))
    return summaries


def prediction_table(results: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> pd.DataFrame:
    """One row per evaluated image: split, index, id, label, predicted, prob_sum, prob_min, prob_max, nan_count."""
    import pandas as pd

    frames = []
    for name, (y, probabilities) in results.items():
        p = np.asarray(probabilities, dtype=np.float64)
        n = len(y)
        frame = pd.DataFrame(
            {
                "split": np.full(n, name, dtype=object),
                "index": np.arange(n),
                "label": np.asarray(y, dtype=np.int64),
                "predicted": np.nanargmax(np.nan_to_num(p, nan=-np.inf), axis=1) if p.size else np.zeros(n, int),
                "prob_sum": p.sum(axis=1),
                "prob_min": p.min(axis=1) if p.size else np.zeros(n),
                "prob_max": p.max(axis=1) if p.size else np.zeros(n),
                "nan_count": np.isnan(p).sum(axis=1),
            }
        )
        frame["id"] = name + "/" + frame["index"].astype(str)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------------------------------------- suites


def image_expectations(boundary: str, classes: tuple[str, ...], splits: tuple[str, ...], params: Params) -> list[Any]:
    """The expectations of an image boundary (raw, clean, augmented, normalized), thresholds from params."""
    import great_expectations as gx

    e = gx.expectations
    v: ValidationParams = params.validation
    k = len(classes)
    if boundary == "normalized":
        dtype = "float32"
        if params.normalize.method == "scale":
            low, high = 0.0, 1.0
        else:
            low, high = -v.max_abs_standardized, v.max_abs_standardized
    else:
        dtype, low, high = "uint8", 0, 255
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


def get_context(paths: PathsParams) -> Any:
    """The file-backed context under ``paths.gx`` with the Data Docs site at ``paths.data_docs``; idempotent."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # no internet: never try to phone home
    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # its INFO chatter would bury the stage log
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    root = Path(paths.gx).resolve()
    root.mkdir(parents=True, exist_ok=True)
    context = gx.get_context(mode="file", context_root_dir=str(root))
    bars = context.variables.progress_bars  # a dict once read back from great_expectations.yml
    quiet = (bars.get("globally") if isinstance(bars, dict) else getattr(bars, "globally", None)) is False
    if not quiet or context.variables.config_variables_file_path:
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        # No config-variables file: the pipeline's settings come from params.yaml, and GX would re-read and parse
        # that YAML file on every access to a context variable (~80 times, 0.2 s, per validation).
        context.variables.config_variables_file_path = None
        context.variables.save()
        context = gx.get_context(mode="file", context_root_dir=str(root))
    views = {"module_name": "tasks.gx_views"}
    site = {
        "class_name": "SiteBuilder",
        "show_how_to_buttons": False,
        "site_index_builder": {
            "class_name": "DefaultSiteIndexBuilder",
            "view": {**views, "class_name": "IndexPageView"},
        },
        "site_section_builders": {
            section: {"view": {**views, "class_name": "PageView"}} for section in ("expectations", "validations")
        },
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
    # Data Docs should show the latest result of each suite, not every run since the repo was cloned.
    store = context.validation_results_store
    for key in store.list_keys():
        if key.expectation_suite_identifier.name == boundary:
            store.remove_key(key)
    shutil.rmtree(Path(paths.data_docs) / "validations" / boundary, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- running


def _split_counts(table: pd.DataFrame) -> dict[str, int]:
    if "images" in table:  # an image summary: rows are split × shard × label groups
        return {str(k): int(v) for k, v in table.groupby("split", sort=False)["images"].sum().items()}
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


def failures(validation_result: Any) -> list[str]:
    """``expect_x(column) observed ...`` for each failed expectation of one validation result."""
    lines = []
    for r in validation_result.results:
        if r.success:
            continue
        config = r.expectation_config
        column = config.kwargs.get("column", "table")
        if r.exception_info and r.exception_info.get("raised_exception"):
            lines.append(f"{config.type}({column}) raised {r.exception_info.get('exception_message')}")
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
    """Validate a dataset at ``boundary`` (raw, clean, augmented, normalized) from its shards' summaries.

    Returns:
        The JSON summary written to ``paths.validation/<boundary>.json``.
    """
    if boundary not in IMAGE_BOUNDARIES:
        raise ValueError(f"unknown image boundary {boundary!r}")
    table = summary_table(summaries)
    splits = tuple(dict.fromkeys(s.split for s in summaries))
    return run_suite(boundary, table, image_expectations(boundary, classes, splits, params), params)


def validate_dataset(
    boundary: str, dataset: Dataset, params: Params, reference: Dataset | None = None
) -> dict[str, Any]:
    """Validate an in-memory dataset, cut into ``data.shard_size`` shards as it will be written.

    Args:
        boundary: which suite.
        dataset: the stage's output, before it is written.
        params: the whole config (paths, validation thresholds, normalize method, shard size).
        reference: augment's input, to check that val/test are unchanged.
    """
    summaries = summarize_dataset(dataset, params.data.shard_size, reference if boundary == "augmented" else None)
    return validate_summaries(boundary, summaries, dataset.classes, params)


def validate_predictions(
    results: Mapping[str, tuple[np.ndarray, np.ndarray]], classes: tuple[str, ...], params: Params
) -> dict[str, Any]:
    """Validate evaluate's predictions ({split: (labels, probabilities)}) with the ``predictions`` suite."""
    return run_suite("predictions", prediction_table(results), prediction_expectations(classes, params), params)
