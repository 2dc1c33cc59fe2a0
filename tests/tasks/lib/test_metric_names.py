"""tracking.metric_names: any class name becomes a part of an MLflow metric name, distinct and deterministic."""

from __future__ import annotations

from pathlib import Path

from tasks.lib.tracking import MAX_NAME_PART, metric_names

HOSTILE = ("don't", "C++", "(other)", "a,b", "<b>x</b>", "café", "日本", "a/b", "..", "x.f1", "$x$", "-", " ")


def test_a_name_mlflow_takes_is_kept_as_it_is() -> None:
    names = ("cat", "dog_2", "a-b", "0", "Spam")
    assert metric_names(names) == {name: name for name in names}


def test_other_characters_become_underscores() -> None:
    parts = metric_names(HOSTILE[:7])
    assert parts == {
        "don't": "don_t",
        "C++": "C_",
        "(other)": "_other_",
        "a,b": "a_b",
        "<b>x</b>": "_b_x_b_",
        "café": "caf_",
        "日本": "_",
    }


def test_names_that_map_to_the_same_part_stay_distinct_and_a_safe_name_keeps_its_own() -> None:
    parts = metric_names(["a b", "a,b", "a_b", "a_b_2", "a.b"])
    assert parts == {"a b": "a_b_3", "a,b": "a_b_4", "a_b": "a_b", "a_b_2": "a_b_2", "a.b": "a_b_5"}
    many = [f"x{c}" for c in "!\"#$%&'()*+,./:;<=>?@[\\]^`{|}~ é日"]
    assert len(set(metric_names(many).values())) == len(many)


def test_the_same_classes_give_the_same_parts() -> None:
    assert metric_names(HOSTILE) == metric_names(list(HOSTILE))


def test_a_long_name_is_cut() -> None:
    long = "é" * 300
    parts = metric_names([long, "x" * 300])
    assert all(len(part) <= MAX_NAME_PART + 4 for part in parts.values()) and len(set(parts.values())) == 2


def test_mlflow_takes_every_metric_name_made_of_them(tmp_path: Path) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.create_run(client.create_experiment("names", artifact_location=str(tmp_path / "artifacts")))
    parts = metric_names([*HOSTILE, "x" * 300, "a_b", "a b"])
    keys = [f"test.per_class.{part}.f1" for part in parts.values()]
    client.log_batch(run.info.run_id, metrics=[Metric(key, 0.5, 0, 0) for key in keys])
    assert set(client.get_run(run.info.run_id).data.metrics) == set(keys)
