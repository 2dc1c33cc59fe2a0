"""docs/state.md, where each tool keeps its state, says what params.yaml, .dvc/config and the tools' defaults say."""

from __future__ import annotations

import configparser
import os
import re
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO

PAGE = REPO / "docs/state.md"


def rows() -> dict[str, str]:
    """The page's table: path → its "set by" cell."""
    found = re.findall(r"^\| `([^`]+)` \| [^|]+ \| [^|]+ \| ([^|]+) \|$", PAGE.read_text(), re.M)
    assert found, "docs/state.md has no table of paths"
    return {path: set_by.strip() for path, set_by in found}


def params_key(set_by: str) -> str | None:
    """The params.yaml key a "set by" cell names (`tracking.uri`), if any."""
    found = re.match(r"`([a-z_]+\.[a-z_]+)`", set_by)
    return found.group(1) if found else None


def test_every_path_named_after_a_params_key_is_that_keys_value() -> None:
    """Mutation: `gx` written `great_expectations` on the page, or `tracking.uri` pointed at another file, fails."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    checked = []
    for path, set_by in rows().items():
        if (key := params_key(set_by)) is None:
            continue
        section, name = key.split(".")
        value = str(params[section][name]).removeprefix("sqlite:///")
        if "and others" in set_by:
            assert value.startswith(path + "/"), (path, key, value)
        else:
            assert value == path, (path, key, value)
        checked.append(key)
    assert {"tracking.uri", "tracking.artifacts", "paths.gx", "tune.storage", "paths.lock"} <= set(checked)


def test_every_path_params_yaml_names_is_on_the_page() -> None:
    """Nothing params.yaml writes is left out: each ``paths.*`` value is, or lies under, a path of the page."""
    listed = rows()
    paths = yaml.safe_load((REPO / "params.yaml").read_text())["paths"]
    missing = {k: v for k, v in paths.items() if not any(v == p or v.startswith(p + "/") for p in listed)}
    assert missing == {}


def test_the_tools_own_defaults_are_what_the_page_says(monkeypatch: pytest.MonkeyPatch) -> None:
    """The DVC remote (.dvc/config), DVC's cache and site cache, and Prefect's home, as the tools resolve them."""
    from dvc.dirs import site_cache_dir
    from dvc.repo import Repo
    from prefect.settings import Settings

    listed = rows()
    config = configparser.ConfigParser()
    config.read(REPO / ".dvc/config")
    remote = os.path.normpath(REPO / ".dvc" / config["'remote \"local\"'"]["url"])
    assert Path(remote).relative_to(REPO).as_posix() in listed
    monkeypatch.delenv("DVC_SITE_CACHE_DIR", raising=False)
    assert f"{site_cache_dir()}/repo" in listed
    with Repo(str(REPO)) as repo:
        assert Path(repo.cache.local_cache_dir).relative_to(REPO).as_posix() in listed
        assert Path(repo.tmp_dir).relative_to(REPO).as_posix() in listed
    assert str(Settings.model_fields["home"].default) in listed
