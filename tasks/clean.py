"""clean: data/raw and the review (paths.review) → data/clean (drops bad labels, blank images or empty and over-long
texts, duplicates and train items leaked into val/test; drops or relabels what a person's review names).

Shard by shard: one pass finds each item's problems and content hash, a global step over the hashes alone picks
the duplicates and leaks, a second pass writes the kept items. Memory: a shard per worker plus the hashes.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from tasks.lib import artifacts, parallel, stats, validation
from tasks.lib.config import CleanParams, Params
from tasks.lib.errors import TrainflowError

log = logging.getLogger(__name__)

Found = tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]  # per shard: good label, problems per reason, hashes
Review = dict[str, int]  # source id → its new label, or DROP
DROP = -1
REVIEW_COLUMNS = ["id", "action", "label"]


def parse_review(text: str, classes: tuple[str, ...], origin: str) -> Review:
    """A person's review (CSV: ``id,action,label``; ``drop``, or ``relabel`` to the class named by ``label``).

    Raises:
        TrainflowError: naming the line, for a wrong header, an unknown action or class, or an id listed twice.
    """
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return {}
    if [c.strip() for c in rows[0]] != REVIEW_COLUMNS:
        raise TrainflowError(f"{origin}:1: the header must be {','.join(REVIEW_COLUMNS)}, not {','.join(rows[0])}")
    review: Review = {}
    for line, row in enumerate(rows[1:], 2):
        if not row or not "".join(row).strip():
            continue
        source_id, action, name = [*row, "", ""][:3]
        if action.strip() not in ("drop", "relabel"):
            raise TrainflowError(f"{origin}:{line}: action {action!r} for {source_id!r} (drop or relabel)")
        if action.strip() == "relabel" and name.strip() not in classes:
            raise TrainflowError(f"{origin}:{line}: relabel {source_id!r} to {name!r}, not one of {list(classes)}")
        if source_id in review:
            raise TrainflowError(f"{origin}:{line}: {source_id!r} is listed twice")
        review[source_id] = DROP if action.strip() == "drop" else classes.index(name.strip())
    return review


def read_review(path: Path, classes: tuple[str, ...]) -> Review:
    """``paths.review`` parsed (:func:`parse_review`); no file is an empty review."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise TrainflowError(f"{path}: cannot read the review ({exc})") from None
    return parse_review(text, classes, str(path))


def apply_review(ids: np.ndarray | None, y: np.ndarray, review: Review) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The labels after the review, which items it drops and which it relabels (to another label than given)."""
    if not review or ids is None:
        none = np.zeros(len(y), dtype=bool)
        return y, none, none
    decided = np.array([review.get(str(i), -2) for i in ids], dtype=np.int64)
    dropped = decided == DROP
    relabelled = (decided >= 0) & (decided != y)
    return np.where(relabelled, decided, y), dropped, relabelled


def inspect(
    x: np.ndarray, y: np.ndarray, num_classes: int, params: CleanParams, excluded: np.ndarray | None = None
) -> Found:
    """Per item of one shard: a valid label, its problems (images: constant, i.e. blank; texts: empty or only
    whitespace, longer than ``params.max_chars``; ``excluded_by_review`` when a review is given), each only where the
    label is valid, and its content hash."""
    y, x = np.asarray(y), np.asarray(x)
    good_label = (y >= 0) & (y < num_classes)
    if x.dtype.kind == "U":
        empty = np.char.str_len(np.char.strip(x)) == 0
        too_long = np.char.str_len(x) > params.max_chars
        problems = {"empty": empty & good_label, "too_long": too_long & ~empty & good_label}
    else:
        flat = x.reshape(len(x), -1)
        constant = flat.min(axis=1) == flat.max(axis=1) if flat.shape[1] else np.ones(len(x), bool)
        problems = {"constant": constant & good_label}
    if excluded is not None:
        problems["excluded_by_review"] = excluded & good_label
    return good_label, problems, stats.content_hashes(x)


def decide(found: Mapping[str, list[Found]], params: CleanParams) -> tuple[dict[str, list[np.ndarray]], dict]:
    """Which items to keep, from every shard's :func:`inspect` result (splits and shards in order).

    Per split: labels outside the class set, the shard's problems (blank images; empty or over-long texts) and exact
    duplicates (the first copy stays; duplicates only among valid items, so a bad copy never wins). Then any train
    item also in val or test leaves train.

    Returns:
        A keep mask per shard and the report ``{"removed": {split: {reason: n}}, "removed_total", "input_total"}``.

    Raises:
        TrainflowError: when more than ``max_removed_fraction`` of all images would be removed.
    """
    keep: dict[str, list[np.ndarray]] = {}
    removed: dict[str, dict[str, int]] = {}
    kept_keys: dict[str, np.ndarray] = {}
    for name, shards in found.items():
        reasons = list(shards[0][1]) if shards else []
        counts = dict.fromkeys(["bad_label", *reasons, "duplicate", "leak"], 0)
        valid = [good & ~np.logical_or.reduce([*problems.values(), ~good]) for good, problems, _ in shards]
        counts["bad_label"] = int(sum((~good).sum() for good, _, _ in shards))
        for reason in reasons:
            counts[reason] = int(sum(problems[reason].sum() for _, problems, _ in shards))
        keys = stats.keys(np.concatenate([h[v] for (_, _, h), v in zip(shards, valid, strict=True)]))
        first = np.zeros(len(keys), dtype=bool)
        first[np.unique(keys, return_index=True)[1]] = True
        counts["duplicate"] = int((~first).sum())
        masks, start = [], 0
        for v in valid:
            mask = v.copy()
            mask[v] = first[start : start + int(v.sum())]
            start += int(v.sum())
            masks.append(mask)
        keep[name], removed[name], kept_keys[name] = masks, counts, keys[first]
    held_out = [kept_keys[name] for name in found if name != "train"]
    if "train" in found and held_out:
        leak_keys = np.concatenate(held_out)
        for mask, (_, _, hashes) in zip(keep["train"], found["train"], strict=True):
            leaked = np.zeros(len(mask), dtype=bool)
            leaked[mask] = np.isin(stats.keys(hashes[mask]), leak_keys)
            removed["train"]["leak"] += int(leaked.sum())
            mask &= ~leaked
    input_total = sum(len(good) for shards in found.values() for good, _, _ in shards)
    removed_total = sum(sum(c.values()) for c in removed.values())
    noun = "texts" if any("empty" in c for c in removed.values()) else "images"
    if input_total and removed_total / input_total > params.max_removed_fraction:
        raise TrainflowError(
            f"clean would remove {removed_total} of {input_total} {noun} ({removed_total / input_total:.1%}), "
            f"more than clean.max_removed_fraction={params.max_removed_fraction} ({removed})"
        )
    return keep, {"removed": removed, "removed_total": removed_total, "input_total": input_total}


def inspect_shard(raw: str, split: str, index: int, params: CleanParams, review: Review) -> tuple[Found, dict]:
    """One shard's :func:`inspect` after the review, and what the review did there (relabelled, ids it matched)."""
    stored = artifacts.open_dataset(Path(raw))
    shard = stored.shard(split, index)
    y, dropped, relabelled = apply_review(shard.ids, shard.y, review)
    found = inspect(shard.x, y, len(stored.classes), params, dropped if review else None)
    matched = [] if not review or shard.ids is None else [str(i) for i in shard.ids if str(i) in review]
    return found, {"relabelled": int(relabelled.sum()), "matched": matched}


def write_kept(
    raw: str, out: str, split: str, index: int, keep: np.ndarray, hashes: np.ndarray, review: Review
) -> tuple:
    """Write the kept items of one shard (relabelled as the review says); its manifest entry and validation summary."""
    shard = artifacts.open_dataset(Path(raw)).shard(split, index)
    shard = artifacts.Split(shard.x, apply_review(shard.ids, shard.y, review)[0], shard.ids)
    kept = shard.subset(keep)
    summary = stats.summarize(split, index, kept.x, kept.y, hashes=hashes[keep])
    return artifacts.write_shard(Path(out), split, index, kept), summary


def reviewed(path: str, review: Review, done: Mapping[str, list[dict]]) -> dict:
    """What the review did: items relabelled per split, and the ids it names that no item has (a stale review)."""
    matched = {i for shards in done.values() for d in shards for i in d["matched"]}
    unmatched = sorted(set(review) - matched)
    if unmatched:
        log.warning("clean: %s names %d ids no item has, e.g. %s", path, len(unmatched), unmatched[:5])
    return {
        "file": path,
        "relabelled_by_review": {split: sum(d["relabelled"] for d in shards) for split, shards in done.items()},
        "unmatched": len(unmatched),
        "unmatched_examples": unmatched[:10],
    }


def run(params: Params) -> dict:
    """Read data/raw shard by shard, clean it, validate and write data/clean."""
    raw = artifacts.open_dataset(Path(params.paths.raw).resolve())
    review = read_review(Path(params.paths.review), raw.classes)
    mapper = parallel.mapper(params.parallel)
    ids = raw.shard_ids()
    calls = [(str(raw.path), *i, params.clean, review) for i in ids]
    inspected = mapper("clean-inspect", inspect_shard, calls)
    found = artifacts.by_split(ids, [f for f, _ in inspected])
    keep, report = decide(found, params.clean)
    if review:
        report["review"] = reviewed(params.paths.review, review, artifacts.by_split(ids, [r for _, r in inspected]))
    with artifacts.atomic_dir(Path(params.paths.clean).resolve()) as tmp:
        calls = [(str(raw.path), str(tmp), name, i, keep[name][i], found[name][i][2], review) for name, i in ids]
        written = mapper("clean-write", write_kept, calls)
        validation.validate_summaries("clean", [summary for _, summary in written], raw.classes, params)
        entries = artifacts.by_split(ids, [entry for entry, _ in written])
        info = {**raw.info, "clean": report}
        artifacts.write_manifest(tmp, entries, raw.classes, raw.image_shape, raw.manifest["dtype"], info)
    log.info("clean: removed %d of %d items %s", report["removed_total"], report["input_total"], report["removed"])
    return report


if __name__ == "__main__":
    from tasks.lib.cli import main

    main("clean", run)
