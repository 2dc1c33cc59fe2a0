"""Pages the tools write render offline: `dvc plots show` (DVC's ``plots.html_template`` hook, .dvc/config), in a
real headless Chromium with the network off, with a negative control for each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tasks import plots_template
from tests.conftest import copy_run
from tests.helpers import REPO, in_chromium, sh

pytestmark = pytest.mark.slow

# After vegaEmbed's asynchronous rendering (within Chromium's virtual time): the charts drawn, and what was fetched.
PLOTS_PROBE = """<script>
window.addEventListener("load", () => setTimeout(() => {
  const painted = (canvas) => {
    const { data } = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
    return data.some((value, i) => i % 4 === 3 && value > 0);
  };
  const charts = [...document.querySelectorAll("canvas, svg.marks")];
  const result = {
    plots: document.querySelectorAll("body > div[id]").length,
    drawn: charts.filter((c) => (c.tagName === "CANVAS" ? painted(c) : c.querySelector("path, rect"))).length,
    requests: performance.getEntriesByType("resource").map((e) => e.name).filter((u) => !u.startsWith("data:")),
  };
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
}, 1500));
</script>"""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, tiny_run: Path) -> Path:
    return copy_run(tiny_run, tmp_path_factory.mktemp("offline") / "workspace")


def test_dvc_plots_show_renders_every_plot_offline(workspace: Path, tmp_path: Path) -> None:
    """The committed template (inlined Vega) draws every plot of dvc.yaml with no request; DVC's default page (the
    negative control: ``plots.html_template`` unset) loads Vega from a CDN and draws nothing.

    Fails without the fix: with the ``[plots]`` section taken out of .dvc/config, ``drawn`` is 0 and ``requests``
    names the CDN."""
    sh(workspace, "dvc", "plots", "show", "--out", "offline")
    page = (workspace / "offline/index.html").read_text()
    assert "cdn.jsdelivr.net" not in page
    offline = in_chromium(page, tmp_path, PLOTS_PROBE)
    assert offline["plots"] >= 3 and offline["drawn"] == offline["plots"] and offline["requests"] == [], offline

    sh(workspace, "dvc", "config", "--unset", "plots.html_template")
    sh(workspace, "dvc", "plots", "show", "--out", "default")
    (tmp_path / "default").mkdir()
    default = in_chromium((workspace / "default/index.html").read_text(), tmp_path / "default", PLOTS_PROBE)
    assert default["plots"] == offline["plots"] and default["drawn"] == 0, default
    assert any("cdn.jsdelivr.net" in url for url in default["requests"]), default


def test_the_plots_template_is_the_pinned_packages_bundle_with_dvcs_placeholders() -> None:
    """`make plots-template` wrote it from the vl-convert-python that constraints.txt pins; DVC's ``{plot_divs}``
    is there, its CDN ``{scripts}`` is not."""
    text = (REPO / ".dvc" / plots_template.TEMPLATE.relative_to(".dvc")).read_text(encoding="utf-8")
    pinned = next(
        line.split("==")[1].strip()
        for line in (REPO / "constraints.txt").read_text().splitlines()
        if line.startswith("vl-convert-python==")
    )
    assert f"vl-convert-python {pinned.split('.post')[0]}," in text
    assert f"Vega-Lite {plots_template.VEGA_LITE}," in text
    assert "{plot_divs}" in text and "{scripts}" not in text and "window.vegaEmbed=" in text
    with pytest.raises(ValueError, match="plot_divs"):
        plots_template.page("const x = '{plot_divs}';", "")


def test_dvc_plots_show_draws_the_plots_dvc_yaml_defines_and_nothing_else(workspace: Path) -> None:
    """The history and the confusion table are stage outputs drawn by dvc.yaml's top-level plots only. Mutation:
    declaring them under a stage's ``plots:`` again adds a default line plot of every column (the confusion table's
    rows drawn as a line), which this catches."""
    defined = [name for entry in yaml.safe_load((workspace / "dvc.yaml").read_text())["plots"] for name in entry]
    shown = json.loads(sh(workspace, "dvc", "plots", "show", "--json").stdout)["data"]
    assert sorted(shown) == sorted(defined) and len(defined) >= 3
