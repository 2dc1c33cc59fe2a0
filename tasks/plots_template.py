"""`dvc plots show`'s page template with Vega, Vega-Lite and Vega-Embed inlined, so the plots render offline.

DVC's default page loads the three libraries from a CDN (a white page without the network). DVC's own hook,
``plots.html_template`` in .dvc/config, points at the template this module writes (.dvc/plots/offline.html,
committed). The JavaScript is vl-convert-python's bundle (``vl_convert.javascript_bundle``), which ships the three
libraries, so the template is made from a pinned package, never edited by hand: ``make plots-template``.
"""

from __future__ import annotations

import sys
from pathlib import Path

TEMPLATE = Path(".dvc/plots/offline.html")
# DVC's plot specs are Vega-Lite v5 (dvc_render's templates): the newest v5 that vl-convert bundles
VEGA_LITE = "5.21"
# DVC fills these three by plain replacement; the page leaves out {scripts}, DVC's CDN <script> tags
PLACEHOLDERS = ("{refresh_tag}", "{plot_divs}", "{scripts}")


def page(bundle: str, versions: str) -> str:
    """The template: ``bundle`` (JavaScript that sets window.vega, vegaLite and vegaEmbed) inlined, then DVC's plots.

    The bundle runs in its own function scope, so its top-level names cannot clash with the ``var spec`` of DVC's
    inline plot scripts.
    """
    found = [p for p in PLACEHOLDERS if p in bundle]
    if found or "</script" in bundle.lower():
        raise ValueError(f"the JavaScript bundle holds {found or '</script'}: it cannot be inlined in DVC's template")
    return f"""<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
{{refresh_tag}}
<title>DVC Plot</title>
<!-- Made by `make plots-template` (tasks/plots_template.py), not by hand: {versions}. -->
<script>(() => {{
{bundle}
}})();</script>
<style>table {{ border-spacing: 15px; }}</style>
</head>
<body>
{{plot_divs}}
</body>
</html>
"""


def main() -> None:
    """Write the template from the installed vl-convert-python (the ``plots-template`` extra)."""
    import vl_convert

    versions = (
        f"vl-convert-python {vl_convert.__version__}, Vega {vl_convert.get_vega_version()}, "
        f"Vega-Lite {VEGA_LITE}, Vega-Embed {vl_convert.get_vega_embed_version()}"
    )
    TEMPLATE.parent.mkdir(parents=True, exist_ok=True)
    TEMPLATE.write_text(page(vl_convert.javascript_bundle(vl_version=VEGA_LITE), versions), encoding="utf-8")
    sys.stdout.write(f"{TEMPLATE}: {versions}\n")


if __name__ == "__main__":
    main()
