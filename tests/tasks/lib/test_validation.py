"""tasks/validation.py: a catalog of corrupted datasets, each caught by the expectation meant for it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tasks import clean
from tasks.lib import artifacts, stats, validation
from tasks.lib.artifacts import Dataset, Split
from tasks.lib.config import Params
from tasks.lib.errors import TrainflowError
from tests.conftest import tiny_dataset

COUNTS = {"train": 30, "val": 12, "test": 12}


@pytest.fixture
def vparams(params: Params, tmp_path: Path) -> Params:
    """The repo's params with the GX context, Data Docs and summaries under tmp_path."""
    paths = params.paths.model_copy(
        update={
            "gx": str(tmp_path / "gx"),
            "data_docs": str(tmp_path / "reports/data_docs"),
            "validation": str(tmp_path / "reports/validation"),
            "raw": str(tmp_path / "data/raw"),
            "clean": str(tmp_path / "data/clean"),
        }
    )
    return params.model_copy(update={"paths": paths})


def with_validation(params: Params, **values: object) -> Params:
    return params.model_copy(update={"validation": params.validation.model_copy(update=values)})


def replace(dataset: Dataset, name: str, x: np.ndarray | None = None, y: np.ndarray | None = None) -> Dataset:
    split = dataset.splits[name]
    new = Split(split.x if x is None else x, split.y if y is None else y)
    return Dataset(splits={**dataset.splits, name: new}, classes=dataset.classes)


def augmented(dataset: Dataset, before: Dataset, params: Params) -> dict:
    """Validate ``dataset`` as augment does: each val/test shard summarised against augment's input shard."""
    summaries = [
        stats.summarize(name, 0, split.x, split.y, reference=None if name == "train" else before.splits[name].x)
        for name, split in dataset.splits.items()
    ]
    return validation.validate_summaries("augmented", summaries, dataset.classes, params)


def failure(boundary: str, dataset: Dataset, params: Params, before: Dataset | None = None) -> str:
    with pytest.raises(TrainflowError) as info:
        if boundary == "augmented":
            augmented(dataset, before or dataset, params)
        else:
            validation.validate_dataset(boundary, dataset, params)
    message = str(info.value)
    assert message.startswith(f"validation {boundary} failed: ")
    assert "\n" not in message  # tasks/cli.py prints it as the stage's one error line
    assert not (Path(params.paths.validation) / f"{boundary}.json").exists()
    return message


def test_a_clean_dataset_passes_every_image_boundary_and_writes_summaries(vparams: Params) -> None:
    data = tiny_dataset(COUNTS)
    for boundary in ("raw", "clean"):
        summary = validation.validate_dataset(boundary, data, vparams)
        assert summary["success"] and summary["rows"] == 9  # split × shard × label
        assert summary["splits"] == COUNTS
    augmented(data, data, vparams)
    written = json.loads((Path(vparams.paths.validation) / "augmented.json").read_text())
    assert "expect_column_values_to_be_between(changed_by_augment)" in written["expectations"]


def test_label_outside_the_class_set(vparams: Params) -> None:
    data = tiny_dataset(COUNTS)
    y = data.splits["train"].y.copy()
    y[4] = 7
    message = failure("clean", replace(data, "train", y=y), vparams)
    assert "expect_column_values_to_be_in_set(label) observed 1 unexpected of 10, e.g. [7] at ['train/0/7']" in message
    # raw data may still hold bad labels: clean removes and counts them, so the raw suite lets them through
    validation.validate_dataset("raw", replace(data, "train", y=y), vparams)


def test_missing_class_in_a_split(vparams: Params) -> None:
    data = tiny_dataset(COUNTS)
    keep = data.splits["val"].y != 2
    message = failure("raw", replace(data, "val", data.splits["val"].x[keep], data.splits["val"].y[keep]), vparams)
    assert "expect_column_distinct_values_to_contain_set(split_label) missing ['val:2']" in message


def test_a_rare_class_below_the_min_fraction(vparams: Params) -> None:
    data = tiny_dataset(COUNTS)
    y = np.zeros(30, dtype=np.int64)
    y[:15], y[15] = 1, 2  # class 2 is 1 of 30 train images
    message = failure("clean", replace(data, "train", y=y), with_validation(vparams, min_class_fraction=0.05))
    assert "expect_column_values_to_be_between(class_fraction) observed 1 unexpected" in message


def test_mixed_image_shapes_across_splits(vparams: Params) -> None:
    data = tiny_dataset(COUNTS)
    other = tiny_dataset(COUNTS, shape=(5, 5, 1))
    message = failure("raw", replace(data, "test", other.splits["test"].x), vparams)
    assert "expect_column_unique_value_count_to_be_between(shape) observed 2" in message


def test_a_test_image_duplicated_into_train(vparams: Params) -> None:
    data = tiny_dataset(COUNTS)
    x = data.splits["train"].x.copy()
    x[3] = data.splits["test"].x[5]
    message = failure("clean", replace(data, "train", x), vparams)
    assert (
        "expect_column_values_to_be_between(leaked_into_train) observed 1 unexpected of 9, e.g. [1] at ['test/0/2']"
        in message
    )
    # raw data may still hold leaks: clean removes them, so the raw suite does not check
    validation.validate_dataset("raw", replace(data, "train", x), vparams)


def test_a_too_small_split(vparams: Params) -> None:
    data = tiny_dataset({"train": 30, "val": 6, "test": 12})
    message = failure("raw", data, vparams)
    assert (
        "expect_column_values_to_be_between(split_rows) observed 3 unexpected of 9, e.g. [6, 6, 6] at ['val/0/0'"
        in message
    )


@pytest.mark.parametrize("boundary", ["raw", "clean"])
def test_float_pixels_where_uint8_belongs(vparams: Params, boundary: str) -> None:
    data = tiny_dataset(COUNTS)
    x = data.splits["val"].x.astype(np.float32) / 255
    x[2, 1, 1, 0] = np.nan
    message = failure(boundary, replace(data, "val", x), vparams)
    assert "expect_column_values_to_be_in_set(dtype)" in message
    assert (
        "expect_column_values_to_be_between(nan_count) observed 1 unexpected of 9, e.g. [1] at ['val/0/2']" in message
    )


def test_val_changed_by_augment(vparams: Params) -> None:
    before = tiny_dataset(COUNTS)
    x = before.splits["val"].x.copy()
    x[1, 2, 2, 0] ^= 1
    message = failure("augmented", replace(before, "val", x), vparams, before=before)
    assert (
        "expect_column_values_to_be_between(changed_by_augment) observed 1 unexpected of 9, e.g. [1] at ['val/0/1']"
        in message
    )


def test_predictions_pass_and_fail(vparams: Params) -> None:
    classes = ("a", "b", "c")
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(3), size=12).astype(np.float32)
    y = np.arange(12) % 3
    assert validation.validate_predictions({"val": (y, p), "test": (y, p)}, classes, vparams)["rows"] == 24
    bad = p.copy()
    bad[0] *= 2
    with pytest.raises(TrainflowError, match=r"^validation predictions failed: .*\(prob_sum\) observed 1 unexpected"):
        validation.validate_predictions({"val": (y, p), "test": (y, bad)}, classes, vparams)


def test_data_docs_index_names_every_suite_and_setup_is_idempotent(vparams: Params) -> None:
    data = tiny_dataset(COUNTS)
    for _ in range(2):  # a second full pass over an existing context raises nothing
        context = validation.get_context(vparams.paths)
        for boundary in validation.IMAGE_BOUNDARIES:
            expectations = validation.image_expectations(boundary, data.classes, tuple(data.splits), vparams)
            validation.setup_checkpoint(context, boundary, expectations)
        for boundary in ("raw", "clean"):
            validation.validate_dataset(boundary, data, vparams)
        augmented(data, data, vparams)
        p = np.full((12, 3), 1 / 3, dtype=np.float32)
        validation.validate_predictions({"test": (np.arange(12) % 3, p)}, data.classes, vparams)
    index = (Path(vparams.paths.data_docs) / "index.html").read_text()
    for boundary in validation.BOUNDARIES:
        assert boundary in index
        # only the latest result of each suite is kept
        assert len(list((Path(vparams.paths.data_docs) / "validations" / boundary).rglob("*.html"))) == 1
    # GX's own views render the pages, and GX reads no config-variables file on every variable access
    site = dict(validation.get_context(vparams.paths).get_config().data_docs_sites[validation.SITE])
    assert "site_index_builder" not in site and site["show_how_to_buttons"] is False
    assert validation.get_context(vparams.paths).variables.config_variables_file_path is None
    page = next((Path(vparams.paths.data_docs) / "validations" / "augmented").rglob("*.html")).read_text()
    assert "changed_by_augment" in page and "values must be unique" in page  # rendered, with its expectations


def test_a_stored_suite_is_reused_until_what_it_was_made_from_changes(vparams: Params) -> None:
    data = tiny_dataset(COUNTS)
    suite, checkpoint = (Path(vparams.paths.gx) / kind / "clean.json" for kind in ("expectations", "checkpoints"))

    def stored() -> tuple[dict, dict]:
        return json.loads(suite.read_text()), json.loads(checkpoint.read_text())

    validation.validate_dataset("clean", data, vparams)
    first = (suite.stat().st_mtime_ns, checkpoint.stat().st_mtime_ns)
    assert stored()[1]["result_format"] == "BASIC"
    validation.validate_dataset("clean", data, vparams)
    assert (suite.stat().st_mtime_ns, checkpoint.stat().st_mtime_ns) == first  # reused, not rewritten
    validation.validate_dataset("clean", data, with_validation(vparams, min_images=5))
    bounds = [e["kwargs"] for e in stored()[0]["expectations"] if e["kwargs"].get("column") == "split_rows"]
    assert bounds[0]["min_value"] == 5
    # a failure runs again with the failing rows' ids, and the next pass goes back to the cheaper format
    with pytest.raises(TrainflowError, match=r"\(split_rows\) observed .* at \['val/0/"):
        validation.validate_dataset("clean", data, with_validation(vparams, min_images=20))
    assert stored()[1]["result_format"]["unexpected_index_column_names"] == ["id"]
    validation.validate_dataset("clean", data, vparams)
    assert stored()[1]["result_format"] == "BASIC"
    # a part of it deleted by hand: made again, not a crash
    (Path(vparams.paths.gx) / "validation_definitions" / "clean.json").unlink()
    validation.validate_dataset("clean", data, vparams)
    assert (Path(vparams.paths.gx) / "validation_definitions" / "clean.json").is_file()


def test_a_failed_suite_still_leaves_data_docs_behind(vparams: Params) -> None:
    data = tiny_dataset(COUNTS)
    failure("raw", replace(data, "val", y=np.full(12, 9)), vparams)
    assert (Path(vparams.paths.data_docs) / "index.html").is_file()


def test_a_failing_stage_writes_nothing_downstream(vparams: Params) -> None:
    artifacts.write_dataset(Path(vparams.paths.raw), tiny_dataset(COUNTS))
    strict = with_validation(vparams, min_images=20)
    with pytest.raises(TrainflowError, match=r"validation clean failed: .*\(split_rows\)"):
        clean.run(strict)
    assert not Path(vparams.paths.clean).exists()
    assert clean.run(vparams)["removed_total"] == 0
    assert (Path(vparams.paths.clean) / "manifest.json").is_file()


def test_the_gx_internals_this_adapter_relies_on_still_work(vparams: Params) -> None:
    """ProgressBarsConfig and the results store's list_keys/remove_key are not GX's documented API: an upgrade that
    changes them fails here, by name, before it fails a stage."""
    from great_expectations.data_context.types.base import ProgressBarsConfig

    data = tiny_dataset(COUNTS)
    validation.validate_dataset("raw", data, vparams)
    validation.validate_dataset("raw", data, vparams)
    context = validation.get_context(vparams.paths)
    bars = context.variables.progress_bars
    assert (bars.get("globally") if isinstance(bars, dict) else bars.globally) is False
    assert ProgressBarsConfig(globally=False).globally is False
    kept = [k for k in context.validation_results_store.list_keys() if k.expectation_suite_identifier.name == "raw"]
    assert len(kept) == 1  # the earlier result was removed


# ---------------------------------------------------------------------------------------------- texts

WORDS = ("free", "entry", "ok", "lar", "win", "call", "now", "hello", "see", "you")


def text_dataset(counts: dict[str, int] | None = None) -> Dataset:
    """Distinct texts (the split's name in each, so none leaks) with labels cycling over three classes."""
    splits = {}
    for name, n in (counts or COUNTS).items():
        texts = [f"{name} message {i}: {WORDS[i % 10]} {WORDS[i * 7 % 10]}" for i in range(n)]
        splits[name] = Split(np.array(texts, dtype=str), np.arange(n, dtype=np.int64) % 3)
    return Dataset(splits=splits, classes=("ham", "spam", "other"))


def with_text(data: Dataset, name: str, index: int, text: str) -> Dataset:
    texts = data.splits[name].x.tolist()
    texts[index] = text
    return replace(data, name, np.array(texts, dtype=str))


def test_clean_texts_pass_every_boundary_with_the_text_suite(vparams: Params) -> None:
    data = text_dataset()
    for boundary in ("raw", "clean"):
        summary = validation.validate_dataset(boundary, data, vparams)
        assert summary["success"] and summary["rows"] == 9 and summary["splits"] == COUNTS
    assert "expect_column_values_to_be_between(non_utf8)" in summary["expectations"]
    assert "expect_column_values_to_be_between(max_length)" in summary["expectations"]
    assert not any("(shape)" in e or "(nan_count)" in e for e in summary["expectations"])  # not the image suite
    assert augmented(data, data, vparams)["splits"] == COUNTS


def test_a_too_small_text_split(vparams: Params) -> None:
    message = failure("raw", text_dataset({"train": 30, "val": 6, "test": 12}), vparams)
    assert "expect_column_values_to_be_between(split_rows) observed 3 unexpected of 9" in message


def test_a_text_class_missing_from_a_split(vparams: Params) -> None:
    data = text_dataset()
    keep = data.splits["test"].y != 1
    message = failure("raw", replace(data, "test", data.splits["test"].x[keep], data.splits["test"].y[keep]), vparams)
    assert "expect_column_distinct_values_to_contain_set(split_label) missing ['test:1']" in message


def test_a_text_that_is_not_utf8(vparams: Params) -> None:
    message = failure("raw", with_text(text_dataset(), "val", 4, "broken \ud800 text"), vparams)
    assert "expect_column_values_to_be_between(non_utf8) observed 1 unexpected of 9, e.g. [1] at ['val/0/1']" in message


def test_a_text_table_of_another_dtype(vparams: Params) -> None:
    """summarize always writes "str" for texts: the expectation guards tables built some other way."""
    data = text_dataset()
    table = stats.summary_table(stats.summarize_dataset(data, None)).assign(dtype="<U40")
    expectations = validation.text_expectations("raw", data.classes, tuple(data.splits), vparams)
    with pytest.raises(TrainflowError, match=r"expect_column_values_to_be_in_set\(dtype\) observed 9 unexpected"):
        validation.run_suite("raw", table, expectations, vparams)


def test_a_text_label_outside_the_class_set(vparams: Params) -> None:
    data = text_dataset()
    y = data.splits["train"].y.copy()
    y[4] = 7
    message = failure("clean", replace(data, "train", y=y), vparams)
    assert "expect_column_values_to_be_in_set(label) observed 1 unexpected of 10, e.g. [7] at ['train/0/7']" in message
    validation.validate_dataset("raw", replace(data, "train", y=y), vparams)  # clean removes them


def test_a_rare_text_class_below_the_min_fraction(vparams: Params) -> None:
    data = text_dataset()
    y = np.zeros(30, dtype=np.int64)
    y[:15], y[15] = 1, 2
    message = failure("clean", replace(data, "train", y=y), with_validation(vparams, min_class_fraction=0.05))
    assert "expect_column_values_to_be_between(class_fraction) observed 1 unexpected" in message


def test_a_test_text_duplicated_into_train_in_an_array_of_another_width(vparams: Params) -> None:
    data = text_dataset()
    train = data.splits["train"].x.astype("<U300")  # the same text must be caught whatever the width
    train[3] = data.splits["test"].x[5]
    message = failure("clean", replace(data, "train", train), vparams)
    assert (
        "expect_column_values_to_be_between(leaked_into_train) observed 1 unexpected of 9, e.g. [1] at ['test/0/2']"
        in message
    )
    validation.validate_dataset("raw", replace(data, "train", train), vparams)


def test_an_empty_text_after_clean(vparams: Params) -> None:
    data = with_text(text_dataset(), "train", 2, " \t ")
    message = failure("clean", data, vparams)
    assert "expect_column_values_to_be_between(empty) observed 1 unexpected of 9, e.g. [1] at ['train/0/2']" in message
    validation.validate_dataset("raw", data, vparams)  # clean removes them


def test_a_text_longer_than_clean_max_chars(vparams: Params) -> None:
    data = with_text(text_dataset(), "val", 0, "word " * 20)
    short = vparams.model_copy(update={"clean": vparams.clean.model_copy(update={"max_chars": 60})})
    message = failure("clean", data, short)
    assert (
        "expect_column_values_to_be_between(max_length) observed 1 unexpected of 9, e.g. [100] at ['val/0/0']"
        in message
    )
    validation.validate_dataset("raw", data, short)


def test_a_val_text_changed_by_augment(vparams: Params) -> None:
    before = text_dataset()
    message = failure("augmented", with_text(before, "val", 1, "changed"), vparams, before=before)
    assert (
        "expect_column_values_to_be_between(changed_by_augment) observed 1 unexpected of 9, e.g. [1] at ['val/0/1']"
        in message
    )


def test_normalize_output_is_no_validated_boundary(vparams: Params) -> None:
    # normalize writes statistics, not items (it checks them itself: tests/tasks/test_normalize.py); train reads the
    # items augment validated, so there is no suite to run again on them
    assert "normalized" not in validation.BOUNDARIES
    data = text_dataset()
    with pytest.raises(ValueError, match="unknown dataset boundary 'normalized'"):
        validation.validate_summaries("normalized", stats.summarize_dataset(data, None), data.classes, vparams)
