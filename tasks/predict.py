"""Batch prediction: a folder of images, an .npz or (a text model) a file of one text per line → a CSV of predicted
classes from models:/<name>@champion."""

from __future__ import annotations

import argparse
import csv
import io
import logging
import os
import sys
from pathlib import Path

import numpy as np

from tasks.lib import artifacts, registry, tracking
from tasks.lib.config import DEFAULT_PARAMS, Params, load_params
from tasks.lib.errors import TrainflowError
from tasks.lib.sources import as_images, read_images, visible_files
from tasks.lib.text_sources import read_lines


def load_inputs(path: Path, shape: tuple[int, int, int]) -> tuple[list[str], np.ndarray]:
    """Ids and uint8 images shaped for the model: PNG/JPEG files in a folder and its sub-folders (ids: relative
    paths), or an .npz (``x``/``x_test``; ids: row numbers)."""
    if not path.exists():
        raise TrainflowError(f"{path}: not found")
    if path.is_dir():
        # the folder's images and those of its sub-folders (a folder: source's layout, one sub-folder per class)
        folders = [path, *sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))]
        files = [f for folder in folders for f in visible_files(folder)]
        if not files:
            raise TrainflowError(f"{path}: no images found (PNG/JPEG files in it or in its sub-folders, one down)")
        color_mode = "grayscale" if shape[2] == 1 else "rgb"
        ids = [f.relative_to(path).as_posix() for f in files]
        return ids, read_images(files, path, (shape[0], shape[1]), color_mode)
    if path.suffix == ".npz" and path.is_file():
        with np.load(path, allow_pickle=False) as archive:
            key = next((k for k in ("x", "x_test") if k in archive.files), None)
            if key is None:
                raise TrainflowError(f"{path}: expected an array named x or x_test, found {archive.files}")
            x = as_images(archive[key], f"{path}:{key}")
        if x.shape[1:] != shape:
            raise TrainflowError(f"{path}:{key}: images of shape {x.shape[1:]}, the model takes {shape}")
        return [str(i) for i in range(len(x))], x
    raise TrainflowError(f"{path}: not a folder of images or an .npz file")


def predictions_csv(ids: list[str], probabilities: np.ndarray, classes: tuple[str, ...]) -> bytes:
    """id, predicted label, its class name, its probability, then every class probability."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", "predicted", "class", "probability", *(f"p_{c}" for c in classes)])
    for name, row in zip(ids, probabilities, strict=True):
        best = int(row.argmax())
        writer.writerow([name, best, classes[best], f"{row[best]:.6f}", *(f"{p:.6f}" for p in row)])
    return buffer.getvalue().encode()


def predict(params: Params, source: Path, output: Path, model_uri: str) -> int:
    """Predict every image (or text) of ``source`` with the registered model and write ``output``; the count."""
    model = registry.load_model(params.tracking, model_uri)
    (spec,) = model.metadata.get_input_schema().inputs
    if tracking.model_contract(model)["dtype"] == artifacts.TEXT:
        ids, x = read_lines(source, params.data.max_bytes, params.data.max_text_bytes)
    else:
        ids, x = load_inputs(source, tuple(spec.shape[1:]))
    probabilities = tracking.predict_probabilities(model, x)
    classes = tracking.model_classes(model, probabilities.shape[1])
    artifacts.write_bytes(output, predictions_csv(ids, probabilities, classes))
    return len(ids)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tasks.predict", description=__doc__)
    parser.add_argument(
        "input",
        type=Path,
        help="a folder of PNG/JPEG images (and its sub-folders), an .npz with an array x, or for a text model a UTF-8 "
        "file of one text per line",
    )
    parser.add_argument("--output", type=Path, default=Path("predictions.csv"), help="CSV to write (%(default)s)")
    parser.add_argument("--model", help="model URI (default: models:/<deploy.model_name>@champion)")
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params file (default: %(default)s)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        params = load_params(args.params)
        uri = args.model or f"models:/{params.deploy.model_name}@{registry.CHAMPION}"
        count = predict(params, args.input, args.output, uri)
    except TrainflowError as exc:
        print(f"error: predict: {exc}", file=sys.stderr)
        sys.exit(1)
    print(f"{count} predictions from {uri} → {args.output}")


if __name__ == "__main__":
    main()
