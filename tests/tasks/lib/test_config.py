"""tasks/config.py: the real params.yaml, its agreement with dvc.yaml, and one error per kind of mistake."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tasks.lib.config import Params, PathsParams, apply_overrides, load_params, parse_params, read_params_file
from tasks.lib.errors import TrainflowError
from tests.conftest import REPO
from tests.helpers import committed_params_file


def error_for(raw: dict[str, Any], overrides: dict[str, Any]) -> str:
    with pytest.raises(TrainflowError) as info:
        parse_params(apply_overrides(raw, overrides), origin="params.yaml")
    return str(info.value)


def test_default_params_yaml_loads(params: Params) -> None:
    assert params.data.source == "digits"
    assert params.ingest.val_fraction + params.ingest.test_fraction < 1
    assert params.train.model in {"cnn", "mlp"}
    assert params.train.epochs > 0
    assert isinstance(params.train.filters, tuple)


def test_every_dvc_stage_param_exists_in_params(params: Params) -> None:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    named = [(stage, key) for stage, spec in stages.items() for key in spec.get("params", [])]
    assert named, "dvc.yaml names no params"
    for stage, key in named:
        assert isinstance(key, str), f"stage {stage}: params entry {key!r} (another params file?)"
        node: Any = params
        for part in key.split("."):
            assert part in type(node).model_fields, f"stage {stage}: params key {key} is not in Params"
            node = getattr(node, part)


def test_every_paths_reference_in_dvc_yaml_exists() -> None:
    used = set(re.findall(r"\$\{paths\.(\w+)\}", (REPO / "dvc.yaml").read_text()))
    assert used, "dvc.yaml uses no ${paths.X}"
    unknown = used - set(PathsParams.model_fields)
    assert not unknown, f"dvc.yaml uses paths missing from params.yaml: {sorted(unknown)}"


def test_stage_names_are_params_sections() -> None:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert set(stages) <= set(Params.model_fields)


def test_typo_key_is_unknown_and_the_real_one_missing(raw: dict[str, Any]) -> None:
    raw["train"]["epoch"] = raw["train"].pop("epochs")
    with pytest.raises(TrainflowError) as info:
        parse_params(raw, origin="params.yaml")
    message = str(info.value)
    assert "train.epoch: unknown key" in message
    assert "train.epochs: missing key" in message
    assert message.startswith("params.yaml:")


def test_missing_section_key(raw: dict[str, Any]) -> None:
    del raw["deploy"]["tolerance"]
    with pytest.raises(TrainflowError, match=r"deploy\.tolerance: missing key"):
        parse_params(raw)


def test_missing_whole_section(raw: dict[str, Any]) -> None:
    del raw["normalize"]
    with pytest.raises(TrainflowError, match=r"normalize: missing key"):
        parse_params(raw)


@pytest.mark.parametrize("value", ["3", 2.5, True, -1, 0])
def test_bad_epochs_named(raw: dict[str, Any], value: Any) -> None:
    message = error_for(raw, {"train.epochs": value})
    assert "train.epochs:" in message
    assert repr(value) in message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("ingest.val_fraction", 1.2),
        ("clean.max_removed_fraction", -0.1),
        ("augment.copies", -1),
        ("normalize.method", "minmax"),
        ("train.model", "resnet"),
        ("train.mixed_precision", "yes"),
        ("train.distribute", "horovod"),
        ("data.color_mode", "cmyk"),
        ("data.image_size", [0, 28]),
        ("data.classes", [0, 1]),
        ("seed", -5),
    ],
)
def test_bad_values_name_their_key(raw: dict[str, Any], key: str, value: Any) -> None:
    assert f"{key}" in error_for(raw, {key: value})


def test_every_bad_key_is_reported_on_one_line(raw: dict[str, Any]) -> None:
    message = error_for(raw, {"train.epochs": "3", "evaluate.batch_size": 0})
    assert "train.epochs" in message and "evaluate.batch_size" in message
    assert "\n" not in message


def test_yaml_lists_become_tuples(raw: dict[str, Any]) -> None:
    parsed = parse_params(apply_overrides(raw, {"data.image_size": [12, 16], "data.classes": ["a", "b"]}))
    assert parsed.data.image_size == (12, 16)
    assert parsed.data.classes == ("a", "b")


@pytest.mark.parametrize(("val", "test"), [(0.5, 0.5), (0.6, 0.45)])
def test_fractions_must_leave_a_train_split(raw: dict[str, Any], val: float, test: float) -> None:
    message = error_for(raw, {"ingest.val_fraction": val, "ingest.test_fraction": test})
    assert "ingest" in message
    assert "val_fraction" in message and "test_fraction" in message


@pytest.mark.parametrize("source", ["ftp:x", "keras:", "digits:extra", "mnist"])
def test_unknown_source_scheme_rejected(raw: dict[str, Any], source: str) -> None:
    message = error_for(raw, {"data.source": source})
    assert repr(source) in message
    assert "keras:NAME" in message  # the error lists what is allowed


def test_a_path_in_the_source_says_where_it_goes_now(raw: dict[str, Any]) -> None:
    assert "the path goes in data.path now: data.source=idx, data.path=data/x" in error_for(
        raw, {"data.source": "idx:data/x"}
    )


def test_unknown_source_scheme_names_the_dotted_key(raw: dict[str, Any]) -> None:
    assert "data.source" in error_for(raw, {"data.source": "ftp:x"})


@pytest.mark.parametrize("source", ["digits", "idx", "npz", "folder", "keras:mnist"])
def test_known_source_schemes_accepted(raw: dict[str, Any], source: str) -> None:
    assert parse_params(apply_overrides(raw, {"data.source": source})).data.source == source


def test_params_are_frozen(params: Params) -> None:
    with pytest.raises(Exception, match="frozen"):
        params.train.epochs = 3  # type: ignore[misc]


def test_apply_overrides_sets_values_and_leaves_input_alone(raw: dict[str, Any]) -> None:
    before = raw["train"]["epochs"]
    out = apply_overrides(raw, {"train.epochs": 2, "seed": 7, "train.filters": [4, 8]})
    assert out["train"]["epochs"] == 2 and out["seed"] == 7 and out["train"]["filters"] == [4, 8]
    assert raw["train"]["epochs"] == before


@pytest.mark.parametrize("key", ["train.epoch", "trian.epochs", "train.epochs.value", "nope"])
def test_apply_overrides_rejects_unknown_keys(raw: dict[str, Any], key: str) -> None:
    with pytest.raises(TrainflowError, match=rf"override {re.escape(key)}: unknown key"):
        apply_overrides(raw, {key: 1})


def test_load_params_with_overrides(tmp_path: Path) -> None:
    params = load_params(committed_params_file(), overrides={"train.epochs": 3, "augment.copies": 0})
    assert params.train.epochs == 3 and params.augment.copies == 0
    with pytest.raises(TrainflowError, match=r"train\.epochs"):
        load_params(committed_params_file(), overrides={"train.epochs": "3"})


def test_load_params_error_names_the_file(tmp_path: Path, raw: dict[str, Any]) -> None:
    raw["train"]["epochs"] = 0
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(TrainflowError, match=rf"^{re.escape(str(path))}: train\.epochs"):
        load_params(path)


def test_missing_params_file_named(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(TrainflowError, match=rf"{re.escape(str(path))}: params file not found"):
        load_params(path)


def test_invalid_yaml_named(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("train: {epochs: [1, 2\n")
    with pytest.raises(TrainflowError) as info:
        load_params(path)
    assert str(path) in str(info.value) and "not valid YAML" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "42\n"])
def test_params_file_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    path = tmp_path / "odd.yaml"
    path.write_text(text)
    with pytest.raises(TrainflowError, match=rf"{re.escape(str(path))}: expected a mapping"):
        load_params(path)


def test_parse_params_rejects_non_mapping() -> None:
    with pytest.raises(TrainflowError, match="expected a mapping"):
        parse_params(["seed"], origin="x.yaml")


def _project_imports(module: Path) -> set[str]:
    """The tasks.* modules a module imports anywhere in its body (module level or inside functions)."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module in ("tasks", "tasks.lib"):
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tasks."):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("tasks.")}
    return found


def test_every_stage_depends_on_the_project_modules_it_runs() -> None:
    # dvc repro must rerun a stage when any project module it executes changes: its deps list the tasks/lib folder
    # and every other module it runs
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        seen, todo = set(), [f"tasks.{name}"]
        while todo:
            module = todo.pop()
            if module not in seen and (REPO / (module.replace(".", "/") + ".py")).is_file():
                seen.add(module)
                todo += _project_imports(REPO / (module.replace(".", "/") + ".py"))
        deps = {d for d in stage["deps"] if isinstance(d, str) and d.startswith("tasks/")}
        missing = {module.replace(".", "/") + ".py" for module in seen if not module.startswith("tasks.lib.")} - deps
        assert not missing, f"dvc.yaml stage {name} lacks deps {sorted(missing)}"
        assert "tasks/lib" in deps or not any(m.startswith("tasks.lib.") for m in seen), name


def enum_values() -> dict[str, tuple[str, ...]]:
    """Every params key whose value is one of a fixed set (a Literal), with its values."""
    from typing import Literal, get_args, get_origin

    found = {}
    for section, field in Params.model_fields.items():
        model = field.annotation
        for key, inner in getattr(model, "model_fields", {}).items():
            if get_origin(inner.annotation) is Literal:
                found[f"{section}.{key}"] = get_args(inner.annotation)
    return found


def test_every_enum_value_is_a_plain_word_in_yaml_1_1() -> None:
    values = enum_values()
    assert {"validation.drift_action", "train.mixed_precision", "train.distribute"} <= set(values)
    for key, choices in values.items():
        for value in choices:  # YAML 1.1 reads off/on/yes/no/null/~ as booleans or null: never a choice
            assert yaml.safe_load(f"x: {value}")["x"] == value, f"{key}: {value!r} does not survive YAML 1.1"


@pytest.mark.slow
def test_every_enum_value_survives_dvc_exp_run_set(tmp_path: Path) -> None:
    """`dvc exp run -S key=value` strips quotes and writes YAML: each value must reach the config as itself."""
    from tests.helpers import TINY, make_workspace, sh

    workspace = make_workspace(tmp_path, TINY)
    values = enum_values()
    for round_ in range(max(len(choices) for choices in values.values())):
        chosen = {key: choices[round_ % len(choices)] for key, choices in values.items()}
        sh(workspace, "dvc", "exp", "run", "ingest", *(f"-S{key}={value}" for key, value in chosen.items()))
        params = load_params(workspace / "params.yaml")
        got = {key: getattr(getattr(params, key.split(".")[0]), key.split(".")[1]) for key in chosen}
        assert got == chosen


def test_a_repeated_key_is_an_error_naming_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text((committed_params_file()).read_text() + "seed: 7\n")  # DVC refuses this file too
    with pytest.raises(TrainflowError, match=r"params.yaml: line \d+: key 'seed' repeats line \d+"):
        load_params(path)


def test_an_alias_bomb_is_refused_before_it_expands(tmp_path: Path) -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]  # 10⁹ values once expanded
    path = tmp_path / "params.yaml"
    path.write_text("\n".join(levels) + "\n")
    with pytest.raises(TrainflowError, match="line 1: YAML anchors and aliases are not allowed"):
        read_params_file(path)


def test_a_params_file_too_large_or_too_deep_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("x: " + "y" * (2 << 20) + "\n")
    with pytest.raises(TrainflowError, match="larger than 1048576 bytes"):
        read_params_file(big)
    deep = tmp_path / "deep.yaml"
    deep.write_text("x: " + "[" * 50 + "]" * 50 + "\n")
    with pytest.raises(TrainflowError, match="nested deeper than 8 levels"):
        read_params_file(deep)
