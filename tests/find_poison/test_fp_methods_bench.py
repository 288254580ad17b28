"""benchmarks/find_poison_methods.py (issue 22): the side-by-side table reads every scorer's numbers from the
stage's summary as they are, reuses BASE's default run, and runs a method as a fork of BASE on real ranks."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location(
        "bench_fp_methods", REPO / "benchmarks" / "find_poison_methods.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


FM = _module()


def test_unknown_method_and_missing_base_are_refused(tmp_path):
    with pytest.raises(SystemExit):
        FM.parse([str(tmp_path), str(tmp_path / "out"), "--methods", "tokenwise,nope"])
    with pytest.raises(SystemExit):
        FM.parse([str(tmp_path), str(tmp_path / "out")])  # no config.yaml: not a run dir


def test_table_of_the_default_run_and_a_forked_method(reference_run, tmp_path, capsys):
    out = tmp_path / "out"
    rc = FM.main(
        [str(reference_run), str(out), "--methods", "tokenwise,repsim", "--ranks", "1", "--no-publish"]
    )
    assert rc == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    base = json.loads((reference_run / "suspects" / "summary.json").read_text())
    assert not (out / "tokenwise").exists()  # BASE's own default run is read, not run again
    tok = line["rows"]["tokenwise"]
    m = base["metrics"][base["scorer"]]
    assert (tok["auprc"], tok["recall"], tok["flagged"]) == (m["ap"], m["recall"], m["n_flagged"])
    assert tok["epoch_share"] == pytest.approx(base["cost_seconds"] / base["epoch_seconds"])
    forked = json.loads((out / "repsim" / "suspects" / "summary.json").read_text())
    assert forked["method"] == "repsim" and forked["counts"]["known"] == base["counts"]["known"]
    assert line["rows"]["repsim"]["auprc"] == forked["metrics"]["repsim"]["ap"]
    assert line["rows"]["tfidf"]["auprc"] == base["metrics"]["tfidf"]["ap"]
    assert line["n_poisoned"] == base["n_poisoned"] and 0 < line["prevalence"] < 1
    # the other threshold rules on the same scores; the run's own rule recomputed gives the stage's numbers
    assert {"tokenwise@fdr", "tokenwise@known"} <= set(line["rows"])
    assert "tokenwise@z" not in line["rows"] and "repsim@known" not in line["rows"]
    again = FM.rethreshold(reference_run, base, "z")
    assert (again["n_flagged"], again["recall"], again["precision"]) == (
        m["n_flagged"],
        m["recall"],
        m["precision"],
    )
    assert line["rows"]["tokenwise@known"]["auprc"] == tok["auprc"]
    text = (out / "results_section.md").read_text()
    assert (
        text.startswith("## ") and "| tokenwise (default) |" in text and "| repsim (middle layer) |" in text
    )
    assert str(tmp_path) not in text  # the command shows BASE / OUT, not this machine's folders
    # a second call reads the fork it made
    assert FM.main([str(reference_run), str(out), "--methods", "repsim", "--ranks", "1"]) == 0
    assert "done before" in capsys.readouterr().err
