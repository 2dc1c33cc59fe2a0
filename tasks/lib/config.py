"""params.yaml → one typed, frozen config object; every error names the key."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tasks.lib.architecture import check_spec
from tasks.lib.errors import TrainflowError

DEFAULT_PARAMS = Path("params.yaml")

Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]
PositiveInt = Annotated[int, Field(gt=0)]


class Section(BaseModel):
    """A params section: unknown keys and wrong types are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DataParams(Section):
    source: str = Field(min_length=1)
    path: str = Field(min_length=1)
    image_size: tuple[PositiveInt, PositiveInt] | None
    color_mode: Literal["grayscale", "rgb"]
    classes: tuple[str, ...] | None
    shard_size: PositiveInt
    max_bytes: PositiveInt
    max_text_bytes: PositiveInt
    max_text_lines: PositiveInt
    text_column: str = Field(min_length=1)
    label_column: str = Field(min_length=1)

    @field_validator("source")
    @classmethod
    def _known_source(cls, source: str) -> str:
        scheme, _, arg = source.partition(":")
        files = {"idx", "npz", "folder", "tsv", "csv", "text_folder"}
        if (scheme in files | {"digits"} and not arg) or (scheme == "keras" and arg):
            return source
        if scheme in files:
            raise ValueError(f"the path goes in data.path now: data.source={scheme}, data.path={arg}")
        raise ValueError(
            f"unknown data source {source!r}; use digits, keras:NAME, or (with data.path) idx, npz, folder for "
            "images, tsv, csv, text_folder for text"
        )


class PathsParams(Section):
    raw: str
    clean: str
    augmented: str
    normalized: str  # a folder of statistics (normalize's), not of data: train reads the data from augmented
    checkpoints: str
    model: str
    history: str
    samples: str
    metrics: str
    per_class: str
    predictions: str
    confusion: str
    figures: str
    deploy_report: str
    gx: str
    data_docs: str
    validation: str
    reference_stats: str
    statistics: str
    run_info: str
    lock: str
    report: str
    tune: str
    review: str  # a person's decisions on the audit's findings (id,action,label rows): clean applies them
    audit: str


class IngestParams(Section):
    split: Literal["stratified", "ordered"]
    val_fraction: Fraction
    test_fraction: Fraction

    @model_validator(mode="after")
    def _room_for_train(self) -> IngestParams:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must leave room for a train split (sum < 1)")
        return self


class CleanParams(Section):
    max_removed_fraction: Annotated[float, Field(ge=0.0, le=1.0)]
    max_chars: PositiveInt


class AugmentParams(Section):
    copies: Annotated[int, Field(ge=0, le=50)]
    rotation_degrees: Annotated[float, Field(ge=0.0, le=180.0)]
    zoom: Annotated[float, Field(ge=0.0, lt=1.0)]
    shift: Annotated[float, Field(ge=0.0, le=0.5)]
    word_dropout: Annotated[float, Field(ge=0.0, le=0.5)]
    word_swaps: Annotated[int, Field(ge=0, le=10)]
    sample_count: Annotated[int, Field(ge=1, le=64)]


class NormalizeParams(Section):
    method: Literal["scale", "standardize"]
    vocabulary_size: Annotated[int, Field(ge=3)]
    sequence_quantile: Annotated[float, Field(gt=0.0, le=1.0)]


class TrainParams(Section):
    model: str  # cnn | mlp | rnn (text), or architectures.<module>:<function> (tasks/lib/architecture.py)
    model_args: dict[str, Any] = Field(default_factory=dict)  # the function's keyword arguments, passed as given
    epochs: PositiveInt
    batch_size: PositiveInt
    learning_rate: Annotated[float, Field(gt=0.0, le=1.0)]
    filters: tuple[PositiveInt, PositiveInt]
    dense_units: PositiveInt
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)]
    l2: Annotated[float, Field(ge=0.0)]
    early_stopping_patience: PositiveInt
    lr_plateau_patience: PositiveInt
    lr_plateau_factor: Annotated[float, Field(gt=0.0, lt=1.0)]
    lr_schedule: Literal["plateau", "cosine"]
    lr_warmup_epochs: Annotated[int, Field(ge=0)]
    batch_norm: bool
    embedding_dim: PositiveInt
    rnn: Literal["lstm", "gru"]
    rnn_units: PositiveInt
    bidirectional: bool
    mixed_precision: Literal["auto", "mixed_float16", "float32"]
    distribute: Literal["none", "mirrored"]
    checkpoint_seconds: Annotated[float, Field(ge=0.0)]

    @field_validator("model")
    @classmethod
    def _known_model(cls, model: str) -> str:
        return check_spec(model)

    @model_validator(mode="after")
    def _room_for_decay(self) -> TrainParams:
        if self.lr_schedule == "cosine" and self.lr_warmup_epochs >= self.epochs:
            raise ValueError("lr_warmup_epochs must be less than epochs (the cosine decays over the epochs after it)")
        return self


class EvaluateParams(Section):
    batch_size: PositiveInt


class DeployParams(Section):
    check_samples: PositiveInt
    tolerance: Annotated[float, Field(gt=0.0)]
    serving_timeout: Annotated[float, Field(gt=0.0)]
    model_name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    metric: Literal["accuracy", "f1_macro"]
    min_metric: Annotated[float, Field(ge=0.0, le=1.0)]
    require_significance: bool
    significance_level: Annotated[float, Field(gt=0.0, lt=1.0)]
    max_class_recall_drop: Annotated[float, Field(ge=0.0, le=1.0)]
    allow_new_contract: bool
    replace_unscorable_champion: bool
    max_request_images: PositiveInt


class ReportParams(Section):
    misclassified: Annotated[int, Field(ge=0, le=64)]
    confidence: Fraction


class ModelCardParams(Section):
    """What only a person can write about the model (the Model Card Toolkit's free-text fields)."""

    overview: str
    owners: tuple[str, ...]
    license: str
    intended_use: str
    users: str
    limitations: str
    tradeoffs: str
    ethical_considerations: str


class TrackingParams(Section):
    uri: str = Field(min_length=1)
    artifacts: str = Field(min_length=1)
    experiment: str = Field(min_length=1)


class ValidationParams(Section):
    min_images: PositiveInt
    max_images: PositiveInt
    min_class_fraction: Annotated[float, Field(ge=0.0, lt=1.0)]
    max_abs_standardized: Annotated[float, Field(gt=0.0)]
    probability_tolerance: Annotated[float, Field(gt=0.0, lt=1.0)]
    drift_action: Literal["ignore", "warn", "fail"]
    drift_label_p_value: Annotated[float, Field(gt=0.0, lt=1.0)]
    drift_psi: Annotated[float, Field(gt=0.0)]
    max_oov_rate: Annotated[float, Field(ge=0.0, le=1.0)]
    drift_oov_rate: Annotated[float, Field(gt=0.0, le=1.0)]

    @model_validator(mode="after")
    def _ordered(self) -> ValidationParams:
        if self.min_images > self.max_images:
            raise ValueError("min_images must not exceed max_images")
        return self


class ScheduleParams(Section):
    cron: str
    timezone: str

    @model_validator(mode="after")
    def _valid(self) -> ScheduleParams:
        from datetime import datetime
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        from cronsim import CronSim, CronSimError

        try:
            zone = ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {self.timezone!r} (use an IANA name such as Europe/Berlin)") from None
        try:
            CronSim(self.cron, datetime.now(zone))
        except CronSimError as exc:
            raise ValueError(f"invalid cron expression {self.cron!r} ({exc})") from None
        return self


class ParallelParams(Section):
    workers: PositiveInt | None
    dask_address: str | None


TuneMetric = Literal["accuracy", "f1_macro", "precision_macro", "recall_macro", "loss"]  # evaluate's headline, on val


class SpaceEntry(Section):
    """One searched key of ``tune.space``: a range (``low``, ``high``, optional ``log`` or ``step``) or ``choices``."""

    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    step: Annotated[int | float, Field(gt=0)] | None = None
    choices: tuple[bool | int | float | str, ...] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> SpaceEntry:
        ranged = self.low is not None or self.high is not None
        if self.choices is not None:
            if ranged or self.log or self.step is not None:
                raise ValueError("give either choices or low/high, not both")
            if not self.choices:
                raise ValueError("no choices: list at least one value")
            return self
        if self.low is None or self.high is None:
            raise ValueError("a range needs both low and high (or give choices)")
        if self.low >= self.high:
            raise ValueError(f"empty range: low {self.low} is not below high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, not {self.low}")
        if self.log and self.step is not None:
            raise ValueError("log and step do not go together (Optuna samples a log range continuously)")
        return self


class TuneParams(Section):
    """The hyper-parameter search (``python -m flows.tune``, flows/tuning.py); keys checked there against params."""

    study: str = Field(min_length=1, max_length=200)
    storage: str = Field(min_length=1)
    metric: TuneMetric
    epochs: PositiveInt
    sampler_startup_trials: Annotated[int, Field(ge=0)]
    pruner: Literal["median", "none"]
    pruner_startup_trials: Annotated[int, Field(ge=0)]
    pruner_warmup_epochs: Annotated[int, Field(ge=0)]
    baseline_first: bool
    space: dict[str, SpaceEntry] = Field(min_length=1)


class AuditParams(Section):
    folds: Annotated[int, Field(ge=2)]
    epochs: PositiveInt
    top: Annotated[int, Field(ge=0)]


class Params(Section):
    seed: Annotated[int, Field(ge=0)]
    data: DataParams
    paths: PathsParams
    ingest: IngestParams
    clean: CleanParams
    augment: AugmentParams
    normalize: NormalizeParams
    train: TrainParams
    evaluate: EvaluateParams
    deploy: DeployParams
    report: ReportParams
    model_card: ModelCardParams
    tracking: TrackingParams
    validation: ValidationParams
    parallel: ParallelParams
    schedule: ScheduleParams
    tune: TuneParams
    audit: AuditParams


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "missing":
        return f"{key}: missing key"
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    message = error["msg"].removeprefix("Value error, ")
    return f"{key}: {message} (got {error.get('input')!r})"


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of ``raw`` with dotted-key overrides (``{"train.epochs": 2}``) applied.

    Raises:
        TrainflowError: when an override names a key that params.yaml does not have.
    """
    result = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        node: Any = result
        *parents, leaf = dotted.split(".")
        for part in parents:
            if not isinstance(node, dict) or part not in node:
                raise TrainflowError(f"override {dotted}: unknown key")
            node = node[part]
        if not isinstance(node, dict) or (leaf not in node and parents != ["train", "model_args"]):  # free-form
            raise TrainflowError(f"override {dotted}: unknown key")
        node[leaf] = value
    return result


def parse_params(raw: Any, origin: str = "params") -> Params:
    """Validate a params mapping; the error lists every bad key, one per line."""
    if not isinstance(raw, dict):
        raise TrainflowError(f"{origin}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(_yaml_lists_as_tuples(raw))
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors())
        raise TrainflowError(f"{origin}: {problems}") from None


def _yaml_lists_as_tuples(value: Any) -> Any:
    # YAML has no tuples; strict mode would otherwise reject [28, 28] for a tuple field.
    if isinstance(value, dict):
        return {k: _yaml_lists_as_tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_yaml_lists_as_tuples(v) for v in value)
    return value


MAX_PARAMS_BYTES = 1 << 20  # a params file is a page of settings: a larger one is not one
MAX_PARAMS_DEPTH = 8  # sections, keys and the lists in them; params.yaml uses 3


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing what a params file never needs and DVC refuses too: repeated keys, and
    anchors/aliases (nested aliases expand exponentially: a few lines can stand for billions of values)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent) or getattr(self.peek_event(), "anchor", None):
            event = self.peek_event()
            raise TrainflowError(f"line {event.start_mark.line + 1}: YAML anchors and aliases are not allowed here")
        if len(self.ancestors) >= MAX_PARAMS_DEPTH:  # type: ignore[attr-defined]
            line = self.peek_event().start_mark.line + 1
            raise TrainflowError(f"line {line}: nested deeper than {MAX_PARAMS_DEPTH} levels")
        self.ancestors.append(True)  # type: ignore[attr-defined]
        try:
            return super().compose_node(parent, index)
        finally:
            self.ancestors.pop()  # type: ignore[attr-defined]

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise TrainflowError(f"line {line}: key {key!r} repeats line {seen[key]} (YAML keeps only the last)")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_params_file(path: Path) -> dict[str, Any]:
    """Read params.yaml as a plain mapping: a size limit, no repeated keys, no anchors or aliases, bounded depth.

    Raises:
        TrainflowError: naming the file (and the line, for what YAML parsing finds).
    """
    try:
        with path.open("rb") as f:
            data = f.read(MAX_PARAMS_BYTES + 1)
    except FileNotFoundError:
        raise TrainflowError(f"{path}: params file not found") from None
    except OSError as exc:
        raise TrainflowError(f"{path}: cannot read the params file ({exc.strerror})") from None
    if len(data) > MAX_PARAMS_BYTES:
        raise TrainflowError(f"{path}: larger than {MAX_PARAMS_BYTES} bytes; not a params file")
    loader = _StrictLoader(data.decode("utf-8", errors="replace"))
    loader.ancestors = []  # type: ignore[attr-defined]
    try:
        raw = loader.get_single_data()
    except TrainflowError as exc:
        raise TrainflowError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise TrainflowError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    finally:
        loader.dispose()
    if not isinstance(raw, dict):
        raise TrainflowError(f"{path}: expected a mapping of sections")
    return raw


# What the pipeline never writes or deletes: the code, the tools' own state and the files that define the pipeline.
PROTECTED = (
    ".git",
    ".dvc",
    ".ci",
    "tasks",
    "flows",
    "tests",
    "benchmarks",
    "docs",
    "params.yaml",
    "dvc.yaml",
    "dvc.lock",
    "pyproject.toml",
    "constraints.txt",
    "Makefile",
    "README.md",
)


def _overlap(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def check_paths(params: Params, root: Path, origin: str) -> None:
    """Refuse, before any work, outputs that could write or delete what is not the pipeline's own.

    Every ``paths.*`` entry must lie inside ``root`` (the repository: the working folder), not be it, not overlap
    another entry, the code, ``.git``, ``params.yaml`` or ``dvc.yaml`` (:data:`PROTECTED`); ``data.path``, the input,
    must not overlap an output.

    Raises:
        TrainflowError: naming the key(s) and the value.
    """
    root = root.resolve()
    outputs = {key: (root / value).resolve() for key, value in params.paths.model_dump().items()}
    protected = {name: (root / name).resolve() for name in PROTECTED}
    for key, path in outputs.items():
        value = getattr(params.paths, key)
        if path == root or root not in path.parents:
            raise TrainflowError(
                f"{origin}: paths.{key}={value}: outside the repository {root} (or the repository "
                "itself); the pipeline writes only inside it"
            )
        for name, guarded in protected.items():
            if _overlap(path, guarded):
                raise TrainflowError(
                    f"{origin}: paths.{key}={value}: overlaps {name}, which the pipeline never writes or deletes"
                )
    keys = list(outputs)
    for i, key in enumerate(keys):
        for other in keys[i + 1 :]:
            if _overlap(outputs[key], outputs[other]):
                raise TrainflowError(
                    f"{origin}: paths.{key}={getattr(params.paths, key)} and paths.{other}="
                    f"{getattr(params.paths, other)} overlap: a stage would delete the other's files"
                )
    source = (root / params.data.path).resolve()
    for key, path in outputs.items():
        if _overlap(source, path):
            raise TrainflowError(
                f"{origin}: data.path={params.data.path} overlaps paths.{key}="
                f"{getattr(params.paths, key)}: the input would be an output"
            )


def load_params(path: Path = DEFAULT_PARAMS, overrides: dict[str, Any] | None = None) -> Params:
    """Load and validate params.yaml, with optional dotted-key overrides; outputs checked against the working
    folder (the repository, where dvc.yaml runs the stages)."""
    raw = read_params_file(path)
    if overrides:
        raw = apply_overrides(raw, overrides)
    params = parse_params(raw, origin=str(path))
    check_paths(params, Path.cwd(), str(path))
    return params
