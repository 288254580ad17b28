"""Spec files: every one under benchmarks/specs loads and each cell's config loads; the contamination study's
commands are the issue's; bad specs are refused naming the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from rapidun_dist.cli.experiments.spec import load_spec, shell_join
from rapidun_dist.config import load_config
from rapidun_dist.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
SPECS = sorted((REPO / "benchmarks" / "specs").glob("*.yaml"))


def test_there_are_specs():
    assert any(p.stem == "contamination" for p in SPECS)


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_every_spec_and_each_cell_config_loads(path, monkeypatch):
    monkeypatch.chdir(REPO)  # a spec's config path is relative to the repository root
    spec = load_spec(path)
    for cell in spec.cells:
        cfg = load_config(spec.config, spec.overrides_of(cell, spec.seeds[0], "runs/x"))
        assert cfg.methods == list(cell.methods) and cfg.seed == spec.seeds[0]


def test_contamination_cells_are_the_issue_commands():
    spec = load_spec(REPO / "benchmarks" / "specs" / "contamination.yaml")
    assert spec.seeds == tuple(range(8)) and spec.reference == "uniform"
    base = 'rapidun run configs/tiny_cpu.yaml seed=S "methods=[rapidun,uniform]" data.retain_contamination='
    assert [spec.command(c) for c in spec.cells] == [
        base + "0",
        base + "0.1",
        base.replace("rapidun,uniform", "rapidun,rapidun_placebo,uniform") + "0.3",
    ]
    assert spec.pairs_of(spec.cell("contam30")) == [
        ("rapidun", "uniform"),
        ("rapidun_placebo", "uniform"),
        ("rapidun_placebo", "rapidun"),
    ]
    assert spec.pairs_of(spec.cell("clean")) == [("rapidun", "uniform")]


GOOD = {"title": "t", "config": "c.yaml", "seeds": [0], "methods": ["rapidun"], "cells": {"a": {}}}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": 1}, r"unknown key\(s\) \['colour'\]"),
        ({"title": None}, "title: expected a non-empty string"),
        ({"seeds": []}, "seeds: expected a non-empty list"),
        ({"seeds": [1, 1]}, "lists a seed twice"),
        ({"methods": ["nope"]}, r"methods: unknown method\(s\) \['nope'\]"),
        ({"cells": {}}, "expected at least one cell"),
        ({"cells": {"a b": {}}}, "must be letters, digits"),
        ({"cells": {"a": {"overrides": ["seed=3"]}}}, "cells.a.overrides: 'seed=3': the runner sets"),
        ({"cells": {"a": {"overrides": ["run_dir=x"]}}}, "the runner sets"),
        ({"cells": {"a": {"label": 3}}}, "cells.a.label"),
        ({"reference": "nope"}, "reference: 'nope' is not a method"),
        ({"table": {"pairs": [["rapidun", "ga"]]}}, r"table.pairs: \[rapidun, ga\]"),
        ({"table": {"paired": []}}, "table.paired: expected a non-empty list"),
        ({"table": {"columns": ["asr_seen"]}}, "table.columns: expected a mapping"),
    ],
)
def test_bad_specs_are_refused(tmp_path, change, message):
    import yaml

    raw = GOOD | change
    if raw.get("title") is None:
        del raw["title"]
        message = "`title` is required"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=message) as err:
        load_spec(path)
    assert str(path) in str(err.value)


def test_shell_join_quotes_what_a_shell_would_expand():
    assert shell_join(
        ["rapidun", "run", "c.yaml", "methods=[a,b]", "x=1", "eval.triggers=[{text: a b}]"]
    ) == ('rapidun run c.yaml "methods=[a,b]" x=1 "eval.triggers=[{text: a b}]"')
    assert shell_join(['a="b"']) == "'a=\"b\"'"
