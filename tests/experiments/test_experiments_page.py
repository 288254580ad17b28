"""The results page: generated from benchmarks/results/ (the committed page is what `render` writes), one section
per key in page.yaml's order; a published section replaces the current one and the replaced one is archived."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
from exp_helpers import complete_spec

from rapidun_dist.cli.experiments.page import (
    ARCHIVE_HEAD,
    publish,
    render_page,
    replace_results,
    sections,
    write_page,
)
from rapidun_dist.cli.experiments.results import collect, results_path, section
from rapidun_dist.core.errors import DataError
from rapidun_dist.core.io import read_json

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks"


def test_the_committed_page_is_the_rendered_one():
    """benchmarks/results.md is generated: edit benchmarks/results/ and run `python -m rapidun_dist.cli.experiments
    render`, never the page."""
    assert (BENCH / "results.md").read_text(encoding="utf-8") == render_page(BENCH)


def test_the_committed_page_holds_one_section_per_study_and_the_archive_is_history():
    parts = sections(BENCH)
    order = list(parts)
    assert (
        order[:4] == ["real_model", "real_model_entity", "real_model_tune", "contamination"]
        and len(parts) >= 20
    )  # the real model first
    titles = [t.split("\n", 1)[0] for t in parts.values()]
    assert all(t.startswith("## ") for t in titles)
    page = (BENCH / "results.md").read_text(encoding="utf-8")
    assert not re.search(r"(^|[\s`'(=])/(work|home|root|tmp)/", page, re.M)  # no machine path on the page
    archive = (BENCH / "results_archive.md").read_text(encoding="utf-8")
    assert archive.startswith(ARCHIVE_HEAD)
    # what moved to the archive is not on the page: the first contamination write-up and the 57k run it superseded
    for old in ("## Where the weights should pay: a retain pack that holds poison, 8 seeds (issue 21), 2026-12-07",
                "## Alpaca-57k stress run through the real stages (CPU, 2 ranks), 2026-12-01 16:24 UTC"):  # fmt: skip
        assert old in archive and old not in page


def _bench(tmp_path: Path) -> Path:
    bench = tmp_path / "b"
    (bench / "results" / "sections").mkdir(parents=True)
    (bench / "results" / "page.yaml").write_text("intro: Hello.\norder: [second, first]\n")
    (bench / "results" / "sections" / "first.md").write_text("## First study\n\nnumbers 1\n")
    (bench / "results" / "sections" / "second.md").write_text("## Second: the study\n\nnumbers 2\n")
    (bench / "results" / "sections" / "zeta.md").write_text("## First study\n\nnumbers 3\n")
    return bench


def test_render_orders_sections_and_links_them(tmp_path):
    bench = _bench(tmp_path)
    page = render_page(bench)
    assert page.index("## Second: the study") < page.index("## First study") < page.index("numbers 3")
    assert "- [Second: the study](#second-the-study)" in page and "- [First study](#first-study-1)" in page
    assert "Hello." in page and "(do not edit here" in page
    (bench / "results" / "sections" / "bad.md").write_text("no title\n")
    with pytest.raises(DataError, match="bad.md: a section starts with its '## ' title line"):
        render_page(bench)


def test_publish_replaces_the_section_and_archives_the_old_one(tmp_path):
    bench = _bench(tmp_path)
    page = publish("first", "\n## First study, again\n\nnumbers 4\n", bench)
    text = page.read_text()
    assert "numbers 4" in text and "numbers 1" not in text
    archive = (bench / "results_archive.md").read_text()
    assert archive.startswith(ARCHIVE_HEAD) and archive.endswith("## First study\n\nnumbers 1\n")
    publish("fresh", "body only", bench, title="A new study")
    assert "## A new study\n\nbody only" in (bench / "results.md").read_text()
    assert archive == (bench / "results_archive.md").read_text()  # a new key archives nothing
    with pytest.raises(DataError, match="must be letters"):
        publish("a/b", "## x", bench)
    with pytest.raises(DataError, match="starts with its '## ' title line"):
        publish("first", "no title", bench)


def test_collected_results_join_the_page_and_a_changed_table_archives_the_old(spec, bench, tmp_path):
    out = tmp_path / "out"
    complete_spec(spec, out, random.Random(0))
    res = collect(spec, out)
    path = replace_results(bench, results_path(spec), res)
    assert not (bench / "results_archive.md").exists()
    replace_results(bench, path, res)  # the same table again: nothing archived
    assert not (bench / "results_archive.md").exists()
    assert section(res) in write_page(bench).read_text()
    changed = res | {"notes": "A new reading."}
    replace_results(bench, path, changed)
    assert section(res) in (bench / "results_archive.md").read_text()
    assert "A new reading." in write_page(bench).read_text()
    with pytest.raises(DataError, match="is a spec's results"):
        publish("mini", "## x", bench)


def test_the_command_line_collects_renders_publishes_and_forks(spec, bench, tmp_path, monkeypatch):
    import io

    from rapidun_dist.cli.experiments.__main__ import main

    out = tmp_path / "out"
    complete_spec(spec, out, random.Random(1))
    assert main(["collect", str(spec.path), "--out", str(out)]) == 0
    page = (bench / "results.md").read_text()
    assert "## A small study" in page and "--out OUT`" in page and str(out) not in page
    monkeypatch.setattr("sys.stdin", io.StringIO("## Hand-kept\n\nnumbers\n"))
    assert main(["publish", "hand", "--bench", str(bench)]) == 0
    assert "## Hand-kept" in (bench / "results.md").read_text()
    assert main(["render", "--bench", str(bench)]) == 0
    assert main(["fork", str(out / "a" / "s0"), str(tmp_path / "f"), "--stages", "prepare,implant,attribute",
                 "--only-done"]) == 0  # fmt: skip
    assert list(read_json(tmp_path / "f" / "manifest.json")["stages"]) == [
        "prepare",
        "implant",
    ]  # attribute: not run
    assert main(["fork", str(out / "a" / "s0"), str(tmp_path / "f"), "--stages", "prepare"]) == 2  # exists
    incomplete = ["collect", str(spec.path), "--out", str(tmp_path / "empty")]
    assert main(incomplete) == 2  # an error message, no traceback


def test_shown_command_hides_the_machines_folders():
    from rapidun_dist.cli.experiments.page import shown_command

    argv = ["/tmp/x/out", "--seeds", "0,1", "--runs=/tmp/x/runs", "--other=/tmp/x/outer", "k=/tmp/x/out"]
    got = shown_command("python b.py", argv, {"/tmp/x/out": "OUT", "/tmp/x/runs": "RUNS"})
    assert got == "python b.py OUT --seeds 0,1 --runs=RUNS --other=/tmp/x/outer k=/tmp/x/out"
