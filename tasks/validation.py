"""Great Expectations at every stage boundary: per-image summary table → suite → checkpoint → Data Docs.

The only module that knows GX's API. A stage calls :func:`validate_dataset` (or :func:`validate_predictions`)
before it writes its output; a failed suite raises a TrainflowError listing every failed expectation.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks import artifacts
from tasks.artifacts import Dataset
from tasks.config import Params, PathsParams, ValidationParams
from tasks.errors import TrainflowError

log = logging.getLogger(__name__)

BOUNDARIES = ("raw", "clean", "augmented", "normalized", "predictions")
IMAGE_BOUNDARIES = BOUNDARIES[:4]
DATASOURCE = "trainflow"
SITE = "trainflow"
BATCH = "whole"
CHUNK = 16384  # images summarised at once: bounds the float buffers
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


def _hex(hashes: np.ndarray) -> np.ndarray:
    """Each row's two 64-bit words as one 32-digit hex string (vectorised: one hex() of the whole buffer)."""
    text = np.ascontiguousarray(hashes, dtype=">u8").tobytes().hex().encode()
    return np.frombuffer(text, dtype="S32").astype("U32")


def _image_stats(x: np.ndarray) -> dict[str, np.ndarray]:
    """min, max, mean, std, NaN and inf counts and content hash of each image, in chunks of CHUNK images."""
    n = len(x)
    flat = np.asarray(x).reshape(n, -1)
    stats = {k: np.empty(n, dtype=np.float64) for k in ("min", "max", "mean", "std")}
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
                total = rows.sum(axis=1, dtype=np.int64)
                squares = (rows.astype(np.uint16) ** 2).sum(axis=1, dtype=np.uint64)
            else:  # BLAS in float32: ample for statistics that no expectation bounds tightly
                values = rows.astype(np.float32, copy=False)
                total = values @ np.ones(pixels, dtype=np.float32)
                squares = np.einsum("ij,ij->i", values, values)
            mean = total / pixels
            stats["mean"][part] = mean
            stats["std"][part] = np.sqrt(np.maximum(squares / pixels - mean * mean, 0.0))
        hashes[part] = row_hashes(rows)
    return {**stats, "hash": hashes}


def _in_train(hashes: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Which rows' 128-bit hashes also occur in ``train``: candidates on the first word, confirmed on both."""
    found = np.isin(hashes[:, 0], train[:, 0])
    if found.any():
        known = set(map(tuple, train[np.isin(train[:, 0], hashes[found, 0])].tolist()))
        found[found] = [tuple(h) in known for h in hashes[found].tolist()]
    return found


def _categorical(values: list[str], codes: np.ndarray) -> pd.Categorical:
    return pd.Categorical.from_codes(codes, categories=pd.Index(values, dtype=object))


def summary_table(dataset: Dataset, reference: Dataset | None = None) -> pd.DataFrame:
    """One row per image: what the suites check.

    Columns: split, index, id, label, height, width, channels, shape, dtype, min, max, mean, std, nan_count,
    inf_count, hash, plus dataset-level facts per row: split_rows (images in the row's split), class_fraction
    (share of the row's label in its split), split_label, leaked_into_train (a val/test image whose content is
    also in train) and, with ``reference`` (augment's input), changed_by_augment (a val/test image that differs
    from the reference's image at the same index). Repeated strings are categoricals, so 100,000 rows take
    tenths of a second.

    Args:
        dataset: the dataset at a boundary.
        reference: the dataset before augment; val/test must be unchanged relative to it.
    """
    names = list(dataset.splits)
    shapes = sorted({"x".join(str(d) for d in s.x.shape[1:]) for s in dataset.splits.values()})
    dtypes = sorted({str(s.x.dtype) for s in dataset.splits.values()})
    labels_seen = sorted({int(v) for s in dataset.splits.values() for v in np.unique(np.asarray(s.y))})
    pairs = [f"{name}:{label}" for name in names for label in labels_seen]
    frames, all_hashes = [], {}
    for code, (name, split) in enumerate(dataset.splits.items()):
        x, y = split.x, np.asarray(split.y).astype(np.int64)
        n = len(y)
        height, width, channels = (*x.shape[1:], 1, 1, 1)[:3]
        values, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
        stats = _image_stats(x)
        all_hashes[name] = stats.pop("hash")
        pair_codes = (code * len(labels_seen) + np.searchsorted(labels_seen, values))[inverse] if n else inverse
        frame = pd.DataFrame(
            {
                "split": _categorical(names, np.full(n, code)),
                "index": np.arange(n),
                "label": y,
                "height": np.full(n, height),
                "width": np.full(n, width),
                "channels": np.full(n, channels),
                "shape": _categorical(shapes, np.full(n, shapes.index("x".join(str(d) for d in x.shape[1:])))),
                "dtype": _categorical(dtypes, np.full(n, dtypes.index(str(x.dtype)))),
                **stats,
                "hash": _hex(all_hashes[name]),
                "split_rows": np.full(n, n),
                "class_fraction": (counts / max(n, 1))[inverse] if n else np.zeros(0),
                "split_label": _categorical(pairs, pair_codes.astype(np.int64)),
            }
        )
        if reference is not None:
            changed = np.zeros(n, dtype=bool) if name == "train" else _changed(all_hashes[name], reference, name)
            frame["changed_by_augment"] = changed
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    table.insert(2, "id", np.arange(len(table)))  # unique by construction: names the row in failure reports
    train = all_hashes.get("train", np.zeros((0, 2), np.uint64))
    leaked = [np.zeros(len(h), bool) if name == "train" else _in_train(h, train) for name, h in all_hashes.items()]
    table["leaked_into_train"] = np.concatenate(leaked) if leaked else np.zeros(0, bool)
    return table


def _changed(hashes: np.ndarray, reference: Dataset, name: str) -> np.ndarray:
    if name not in reference.splits:
        return np.ones(len(hashes), dtype=bool)
    before = row_hashes(np.asarray(reference.splits[name].x).reshape(len(reference.splits[name].y), -1))
    if len(before) != len(hashes):  # images added or dropped: every row of the split is suspect
        return np.ones(len(hashes), dtype=bool)
    return (hashes != before).any(axis=1)


def prediction_table(results: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> pd.DataFrame:
    """One row per evaluated image: split, index, id, label, predicted, prob_sum, prob_min, prob_max, nan_count."""
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
            e.ExpectColumnValuesToBeInSet(column="leaked_into_train", value_set=[False]),
        ]
    if boundary == "augmented":
        expectations.append(e.ExpectColumnValuesToBeInSet(column="changed_by_augment", value_set=[False]))
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
    if (bars.get("globally") if isinstance(bars, dict) else getattr(bars, "globally", None)) is not False:
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        context.variables.save()
    site = {
        "class_name": "SiteBuilder",
        "show_how_to_buttons": False,
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
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


def setup_checkpoint(context: Any, boundary: str, expectations: list[Any]) -> Any:
    """Get-or-add the datasource, asset and batch definition; add-or-update suite, definition, checkpoint."""
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction

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
    suite = context.suites.add_or_update(gx.ExpectationSuite(name=boundary, expectations=expectations))
    definition = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=boundary, data=batch, suite=suite)
    )
    return context.checkpoints.add_or_update(
        gx.Checkpoint(
            name=boundary,
            validation_definitions=[definition],
            actions=[UpdateDataDocsAction(name="data_docs", site_names=[SITE])],
            result_format={"result_format": "SUMMARY"},
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


def _observed(result: Mapping[str, Any]) -> str:
    if result.get("observed_value") is not None:
        return f"observed {result['observed_value']}"
    if result.get("partial_missing_list"):
        return f"missing {list(result['partial_missing_list'])[:5]}"
    if result.get("unexpected_count"):
        sample = list(result.get("partial_unexpected_list") or [])[:3]
        return f"observed {result['unexpected_count']} unexpected of {result.get('element_count')}, e.g. {sample}"
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
    checkpoint = setup_checkpoint(context, boundary, expectations)
    _forget_previous_results(context, boundary, params.paths)
    started = time.perf_counter()
    outcome = checkpoint.run(batch_parameters={"dataframe": table})
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
        "splits": {str(k): int(v) for k, v in table["split"].value_counts(sort=False).items()},
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


def validate_dataset(
    boundary: str, dataset: Dataset, params: Params, reference: Dataset | None = None
) -> dict[str, Any]:
    """Summarise ``dataset`` and validate it with the suite of ``boundary`` (raw, clean, augmented, normalized).

    Args:
        boundary: which suite.
        dataset: the stage's output, before it is written.
        params: the whole config (paths, validation thresholds, normalize method).
        reference: augment's input, to check that val/test are unchanged.

    Returns:
        The JSON summary written to ``paths.validation/<boundary>.json``.
    """
    if boundary not in IMAGE_BOUNDARIES:
        raise ValueError(f"unknown image boundary {boundary!r}")
    table = summary_table(dataset, reference if boundary == "augmented" else None)
    expectations = image_expectations(boundary, dataset.classes, tuple(dataset.splits), params)
    return run_suite(boundary, table, expectations, params)


def validate_predictions(
    results: Mapping[str, tuple[np.ndarray, np.ndarray]], classes: tuple[str, ...], params: Params
) -> dict[str, Any]:
    """Validate evaluate's predictions ({split: (labels, probabilities)}) with the ``predictions`` suite."""
    return run_suite("predictions", prediction_table(results), prediction_expectations(classes, params), params)
