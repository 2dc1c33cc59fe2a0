"""The train section's batch-norm and learning-rate-schedule keys: defaults keep the old behaviour, bad values name
the key, and the quality preset in benchmarks/quality_preset.yaml is a valid set of overrides."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tasks.lib.config import Params, apply_overrides, parse_params
from tasks.lib.errors import TrainflowError
from tests.conftest import REPO


def test_defaults_are_the_seed_behaviour(params: Params) -> None:
    assert params.train.lr_schedule == "plateau"
    assert params.train.batch_norm is False
    assert params.train.lr_warmup_epochs == 0


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("train.lr_schedule", "step", r"train\.lr_schedule: Input should be 'plateau' or 'cosine' \(got 'step'\)"),
        ("train.batch_norm", "yes", r"train\.batch_norm: Input should be a valid boolean \(got 'yes'\)"),
        ("train.batch_norm", 1, r"train\.batch_norm: Input should be a valid boolean \(got 1\)"),
        ("train.lr_warmup_epochs", -1, r"train\.lr_warmup_epochs: Input should be greater than or equal to 0"),
        ("train.lr_warmup_epochs", 0.5, r"train\.lr_warmup_epochs: Input should be a valid integer"),
    ],
)
def test_bad_value_names_the_key(raw: dict[str, Any], key: str, value: Any, message: str) -> None:
    with pytest.raises(TrainflowError, match=message):
        parse_params(apply_overrides(raw, {key: value}), origin="params.yaml")


def test_cosine_needs_epochs_after_the_warmup(raw: dict[str, Any]) -> None:
    overrides = {"train.lr_schedule": "cosine", "train.epochs": 3, "train.lr_warmup_epochs": 3}
    with pytest.raises(TrainflowError, match=r"train: lr_warmup_epochs must be less than epochs"):
        parse_params(apply_overrides(raw, overrides))
    # the plateau schedule ignores the warm-up, so the same numbers are fine there
    parse_params(apply_overrides(raw, {**overrides, "train.lr_schedule": "plateau"}))


def test_missing_new_key_is_named(raw: dict[str, Any]) -> None:
    del raw["train"]["batch_norm"]
    with pytest.raises(TrainflowError, match=r"train\.batch_norm: missing key"):
        parse_params(raw)


def test_quality_preset_is_valid_and_documented(raw: dict[str, Any]) -> None:
    preset = yaml.safe_load((REPO / "benchmarks" / "quality_preset.yaml").read_text())
    assert isinstance(preset, dict) and preset
    params = parse_params(apply_overrides(raw, preset), origin="quality_preset.yaml")
    assert params.train.batch_norm and params.train.lr_schedule == "cosine"
    command = "dvc exp run " + " ".join(f"-S {key}={_cli(value)}" for key, value in preset.items())
    readme = re.sub(r"\s+", " ", (REPO / "docs/performance.md").read_text().replace("\\\n", " "))
    assert command in readme, "docs/performance.md's preset command differs from benchmarks/quality_preset.yaml"


def _cli(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
