"""benchmarks/results.py: RESULTS.md's summary is made from the sections' headline tables, never by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import REPO, load_benchmark

results = load_benchmark("results")


def section(title: str, rows: list[str], note: str = "Some prose.") -> str:
    return f"# {title}\n\n{note}\n\n| a | b |\n| --- | --- |\n| 1 | 2 |\n\n{results.headline_table(rows)}\n"


@pytest.fixture
def results_md(tmp_path: Path) -> Path:
    path = tmp_path / "RESULTS.md"
    path.write_text(
        "# Summary: written by hand\n\n- input path 2,434,561 images/s\n\n"
        + section("Speed", [results.headline_row("speed-up", [1.5, 1.25, 2.0], 2, "×", "≥ 1.2", True)])
        + "\n# No headline\n\nJust a table.\n\n| x | y |\n| --- | --- |\n| 3 | 4 |\n\n"
        + section("Serving", [results.headline_row("p50 (ms)", None, target="≤ 20")])
        + "\n# Summary: a second hand-written one\n\nvalidation share 58–85 %\n"
    )
    return path


def test_the_summary_is_the_sections_headline_rows(results_md: Path) -> None:
    assert results.main(["--path", str(results_md), "--check"]) == 1  # hand-written summaries
    assert results.main(["--path", str(results_md)]) == 0
    text = results_md.read_text()
    assert text.startswith("# Summary\n") and text.count("# Summary") == 1
    assert "2,434,561" not in text and "58–85" not in text  # the hand-written claims are gone
    top = text.split("\n# ", 1)[0]
    assert "| Speed | speed-up | 1.50× | 1.25–2.00× | 3 | ≥ 1.2 | ✅ |" in top
    assert "| Serving | p50 (ms) | not re-measured yet | — | — | ≤ 20 | — |" in top
    assert "Sections without headline rows: No headline." in top
    assert "| 1 | 2 |" not in top  # only headline tables are copied
    assert [title for title, _ in results.sections(text)] == ["Speed", "No headline", "Serving"]
    assert results.main(["--path", str(results_md), "--check"]) == 0


def test_a_changed_section_changes_the_summary_and_a_hand_edit_is_caught(results_md: Path) -> None:
    results.write_summary(results_md)
    results.write_section(
        "Speed",
        results.headline_table([results.headline_row("speed-up", [0.9, 1.0, 1.1], 2, "×", "≥ 1.2", False)]),
        results_md,
    )
    text = results_md.read_text()
    assert "| Speed | speed-up | 1.00× | 0.90–1.10× | 3 | ≥ 1.2 | ❌ |" in text
    assert "1.50×" not in text
    results_md.write_text(text.replace("| 1.00× |", "| 1.40× |", 1))  # the summary edited by hand
    assert results.main(["--path", str(results_md), "--check"]) == 1


def test_the_committed_results_summary_is_the_generated_one() -> None:
    text = (REPO / "benchmarks/RESULTS.md").read_text()
    assert results.with_summary(text) == text, "run `python benchmarks/results.py` to regenerate the summary"


def test_paired_ratios_need_pairs() -> None:
    assert results.paired([2.0, 3.0], [1.0, 2.0]) == [2.0, 1.5]
    with pytest.raises(ValueError, match="as many A as B"):
        results.paired([1.0], [1.0, 2.0])
