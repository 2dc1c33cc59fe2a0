"""``train.model``: the model function (``architectures.<module>:<function>``, or a built-in's short name) resolved,
called with ``train.model_args`` and checked; the one place that knows the hook's contract (docs/own-model.md).

A model function takes the preprocessed input (a symbolic Keras tensor), ``num_classes`` and, if it names them,
``kind`` (``images`` or ``text``) and ``vocabulary_size`` (text), then its own keyword arguments; it returns a Keras
tensor or model of one logit per class (a last softmax is kept as it is). The pipeline adds the float32 head.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tasks.lib.errors import TrainflowError

if TYPE_CHECKING:
    import keras


class ModelChoice(Protocol):
    """What :func:`resolve` reads of the train params (config.TrainParams, which imports this module: no circle)."""

    model: str
    model_args: dict[str, Any]


FOLDER = "architectures"  # the project folder of model functions: a dependency of train, logged with every model
BUILTIN = f"{FOLDER}.builtin"
SHORT = {"images": {"cnn": "cnn", "mlp": "mlp"}, "text": {"cnn": "rnn", "mlp": "rnn", "rnn": "rnn"}}
CONTEXT = ("inputs", "num_classes", "kind", "vocabulary_size")  # what the pipeline passes; never a model_args key
SPEC = re.compile(rf"^{FOLDER}(\.[A-Za-z_]\w*)+:[A-Za-z_]\w*$")


@dataclass(frozen=True)
class Architecture:
    """A resolved ``train.model``: the function, its full name, and the keyword arguments it is called with."""

    name: str  # module:function, e.g. architectures.builtin:cnn
    function: Callable[..., Any]
    args: dict[str, Any]

    @property
    def module(self) -> str:
        return self.name.partition(":")[0]

    def source_hash(self) -> str:
        """The hash of the folder's Python files (what DVC tracks for train): a resumed training never continues the
        checkpoint of another version of the code."""
        digest = hashlib.sha256()
        for folder in importlib.import_module(FOLDER).__path__:
            for path in sorted(Path(folder).rglob("*.py")):
                digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes())
        return digest.hexdigest()[:16]


def check_spec(spec: str) -> str:
    """``spec`` if it is a short name or ``architectures.<module>:<function>`` (config.py's validator)."""
    if spec in SHORT["text"] or SPEC.match(spec):
        return spec
    raise ValueError(
        f"not a model: give cnn, mlp (images), rnn (text) or a function in {FOLDER}/ as "
        f"{FOLDER}.<module>:<function> (the folder is a dependency of train)"
    )


def qualified(spec: str, kind: str) -> str:
    """``spec`` as ``module:function``: a short name becomes its built-in (for text, every short name is the RNN)."""
    if ":" in spec:
        return spec
    if spec not in SHORT[kind]:
        raise TrainflowError(f"train.model={spec} is the text model; images train cnn, mlp or a function of yours")
    return f"{BUILTIN}:{SHORT[kind][spec]}"


def module_of(spec: str) -> str:
    """The module that ``spec`` names (no import): what a logged model imports before Keras loads it."""
    return spec.partition(":")[0] if ":" in spec else BUILTIN


def import_module(spec: str) -> None:
    """Import ``spec``'s module, so that the custom layers it registers are known before Keras loads a model."""
    name = module_of(spec)
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            raise TrainflowError(f"train.model={spec}: no module {name} ({name.replace('.', '/')}.py)") from None
        raise TrainflowError(f"train.model={spec}: importing {name} failed ({_first(exc)})") from None
    except Exception as exc:  # the user's module raised while importing: a syntax error, a failed import
        raise TrainflowError(f"train.model={spec}: importing {name} failed ({_first(exc)})") from None


def import_trained(run_info: Mapping[str, Any]) -> str:
    """Import the module of the ``train.model`` that train's run trained (``run_info``: the ``paths.run_info`` file's
    contents), before a stage loads the saved model; that ``train.model``."""
    spec = str(run_info.get("train", {}).get("model", "cnn"))
    import_module(spec)
    return spec


def _first(exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def resolve(cfg: ModelChoice, kind: str) -> Architecture:
    """The function ``cfg.model`` names and its keyword arguments (``cfg.model_args``; a built-in also takes the train
    keys of its arguments' names), checked against its signature.

    Raises:
        TrainflowError: one line naming train.model or the train.model_args keys.
    """
    name = qualified(cfg.model, kind)
    import_module(name)
    module, _, attr = name.partition(":")
    function = getattr(importlib.import_module(module), attr, None)
    if not callable(function):
        raise TrainflowError(f"train.model={cfg.model}: {module.replace('.', '/')}.py has no function {attr}")
    signature = inspect.signature(function)
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    own = [p for p in signature.parameters if p not in CONTEXT]
    reserved = sorted(set(cfg.model_args) & set(CONTEXT))
    if reserved:
        raise TrainflowError(f"train.model_args: {', '.join(reserved)} is given by the pipeline, not by model_args")
    unknown = sorted(set(cfg.model_args) - set(own)) if not accepts_any else []
    if unknown:
        takes = ", ".join(p for p in own if signature.parameters[p].kind is not inspect.Parameter.VAR_POSITIONAL)
        raise TrainflowError(
            f"train.model_args: {attr} takes no argument {', '.join(unknown)} (it takes: {takes or 'none'})"
        )
    defaults = {  # what the function is called with, shown in MLflow and the report: its own defaults too
        p: signature.parameters[p].default
        for p in own
        if signature.parameters[p].default is not inspect.Parameter.empty
    }
    if module == BUILTIN:  # the built-ins' arguments are train keys too (train.filters, train.dense_units, ...)
        defaults |= {p: getattr(cfg, p) for p in own if p in type(cfg).model_fields}
    return Architecture(name, function, {**defaults, **cfg.model_args})


def build(
    architecture: Architecture, inputs: Any, num_classes: int, kind: str, vocabulary_size: int | None = None
) -> Any:
    """Call the model function on ``inputs`` (the preprocessed tensor) and add the head: the float32 class
    probabilities, named ``probabilities``.

    Raises:
        TrainflowError: the function raised, returned something that is not a Keras tensor or model, or an output
        whose width is not ``num_classes``.
    """
    import keras

    where = f"train.model={architecture.name}"
    context = {"num_classes": num_classes, "kind": kind, "vocabulary_size": vocabulary_size}
    parameters = inspect.signature(architecture.function).parameters
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    given = {k: v for k, v in context.items() if k in parameters or takes_all}
    try:
        returned = architecture.function(inputs, **given, **architecture.args)
    except Exception as exc:
        raise TrainflowError(f"{where}: the function raised {_first(exc)}") from None
    if isinstance(returned, keras.Model):
        try:  # a Sequential without an input shape has no inputs until it is called
            same_input = len(returned.inputs or []) == 1 and returned.inputs[0] is inputs
        except (AttributeError, ValueError):
            same_input = False
        try:
            outputs = returned.outputs[0] if same_input else returned(inputs)
        except Exception as exc:
            raise TrainflowError(f"{where}: the model it returned does not take the input ({_first(exc)})") from None
    elif isinstance(returned, keras.KerasTensor):
        outputs = returned
    else:
        raise TrainflowError(f"{where}: returned {type(returned).__name__}, not a Keras model or tensor")
    if len(outputs.shape) != 2 or outputs.shape[-1] != num_classes:
        raise TrainflowError(
            f"{where}: its output has shape {tuple(outputs.shape)}; it must be (batch, {num_classes}), one per class"
        )
    last = _maker(outputs)
    if isinstance(last, keras.Model) and last.layers:  # a model of the function's own, called on the input
        last = last.layers[-1]
    done = getattr(last, "activation", None) is keras.activations.softmax or isinstance(last, keras.layers.Softmax)
    return keras.layers.Activation("linear" if done else "softmax", dtype="float32", name="probabilities")(outputs)


def _maker(tensor: Any) -> Any:
    """The layer that made a symbolic tensor, or None. Keras has no public API for it: this is the one use of its
    ``_keras_history``; if that goes, a function's own softmax would be applied twice, and
    tests/tasks/lib/test_architecture.py's ``ends_in_softmax`` case fails."""
    return getattr(getattr(tensor, "_keras_history", None), "operation", None)


def describe(architecture: Architecture, model: keras.Model) -> dict[str, str]:
    """MLflow tags (and the report's lines) for the architecture: its name, its arguments and parameter count."""
    import json

    return {
        "train.architecture": architecture.name,
        "train.architecture_args": json.dumps(_plain(architecture.args), sort_keys=True, default=repr),
        "train.parameters": str(model.count_params()),
    }


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value
