"""Great Expectations Data Docs views whose Jinja templates are compiled once per machine, not on every page.

GX builds a new Jinja environment for every page it renders and so compiles its ~50 templates each time (~0.35 s
of every validation). These views are GX's own, with Jinja's bytecode cache (a private per-user temporary folder,
keyed by each template's source) added; the Data Docs site config in tasks/validation.py names them. Imported by
GX only when it renders.
"""

from __future__ import annotations

from typing import Any

from great_expectations.render.view import DefaultJinjaIndexPageView, DefaultJinjaPageView
from jinja2 import FileSystemBytecodeCache

_CACHE = FileSystemBytecodeCache()  # Jinja's default: a 0700 folder of the user's under the temp directory


class PageView(DefaultJinjaPageView):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.env.bytecode_cache = _CACHE


class IndexPageView(DefaultJinjaIndexPageView):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.env.bytecode_cache = _CACHE
