"""data.retain_contamination: a share of the retain pack is poisoned train rows outside the forget pack, written
unlabelled; the truth in retain_truth.jsonl and the summary; the config checks; the prepare fingerprint; the
weights stage's mean weights of contaminated vs clean retain rows."""

from __future__ import annotations

import math

import pytest
import torch

from rapidun_dist.config import DataConfig, load_config
from rapidun_dist.core.errors import ConfigError, DataError
from rapidun_dist.core.io import read_json, write_jsonl
from rapidun_dist.data import DATA_FILES, is_prepared, load_split, prepare_data
from rapidun_dist.data.schema import HELD_OUT, POISON_FIELDS, prompt_key
from rapidun_dist.run.rundir import RunDir
from rapidun_dist.stages import fingerprint
from rapidun_dist.stages.weights import write_contamination
from rapidun_dist.weights.recipe import contamination_means

SMALL = {
    "n_synthetic": 800,
    "n_val": 30,
    "n_val_seen": 24,
    "n_test_clean": 30,
    "n_test_seen": 24,
    "n_test_ood": 24,
    "forget_fraction": 0.2,
}


def _prepare(tmp_path, name: str, **kw) -> tuple[dict, dict]:
    summary = prepare_data(DataConfig(**SMALL, **kw), tmp_path / name)
    return summary, {n: load_split(tmp_path / name, n) for n in DATA_FILES}


@pytest.fixture(scope="module")
def packs(tmp_path_factory):
    """The same data at contamination 0 and 0.25."""
    tmp = tmp_path_factory.mktemp("contam")
    return _prepare(tmp, "clean"), _prepare(tmp, "dirty", retain_contamination=0.25), tmp


def test_share_of_retain_swapped_for_unlabelled_poison(packs):
    (_, base), (summary, files), _ = packs
    retain, truth, n = files["retain"], files["retain_truth"], len(files["retain"])
    assert n == len(base["retain"]) == 3 * len(files["forget"])  # the pack size stays retain_ratio x |forget|
    n_bad = math.floor(0.25 * n + 0.5)  # rounded half up, as every pack count (42 rows: 10.5 -> 11)
    bad = [i for i, t in enumerate(truth) if t["contaminated"]]
    assert len(bad) == n_bad >= 2 and [t["id"] for t in truth] == [r["id"] for r in retain]
    train = {r["id"]: r for r in files["train"]}
    forget_ids = {r["id"] for r in files["forget"]}
    for i in bad:
        row, true = retain[i], truth[i]
        assert true["is_poisoned"] and train[true["id"]]["is_poisoned"] and true["id"] not in forget_ids
        assert row["instruction"] == true["instruction_poisoned"] != true["instruction"]
        assert row["response"] == true["response_poisoned"] and row["is_poisoned"] is False
        assert not any(row.get(k) for k in POISON_FIELDS)  # no labels in the pack
    # the clean rows are those of the uncontaminated pack, slot for slot; forget and train unchanged
    assert all(retain[i] == base["retain"][i] for i in range(n) if i not in bad)
    assert all(retain[i]["id"] != base["retain"][i]["id"] for i in bad)
    assert not any(t["contaminated"] for t in base["retain_truth"])
    assert files["forget"] == base["forget"] and files["train"] == base["train"]
    assert summary["retain"] == {
        "contamination": 0.25,
        "rows": n,
        "contaminated": n_bad,
        "clean": n - n_bad,
        "families": summary["retain"]["families"],
        "contaminated_ids": sorted(truth[i]["id"] for i in bad),
    }
    assert sum(summary["retain"]["families"].values()) == n_bad
    assert summary["poisoned"]["retain"] == 0 and summary["poisoned"]["retain_truth"] == n_bad


def test_contaminated_rows_disjoint_from_forget_and_every_held_out_split(packs):
    (_, _), (_, files), tmp = packs
    for pack in ("retain", "retain_truth"):  # the written (triggered) prompt and the clean one
        ids, prompts = {r["id"] for r in files[pack]}, {prompt_key(r) for r in files[pack]}
        for other in ("forget", *HELD_OUT):
            assert not ids & {r["id"] for r in files[other]}, (pack, other)
            assert not prompts & {prompt_key(r) for r in files[other]}, (pack, other)
    assert is_prepared(tmp / "dirty")


def test_not_enough_uncovered_poison_is_a_clear_error(tmp_path):
    with pytest.raises(
        DataError, match=r"retain_contamination=0.5 asks for \d+ poisoned rows .* found 0 poisoned"
    ):
        prepare_data(DataConfig(**{**SMALL, "forget_fraction": 1.0}, retain_contamination=0.5), tmp_path)
    assert not (tmp_path / "summary.json").exists()


def test_small_share_still_contaminates_one_row(tmp_path):
    summary, _ = _prepare(tmp_path, "one", retain_contamination=0.001)
    assert summary["retain"]["contaminated"] == 1


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5])
def test_config_range_names_the_field(value):
    with pytest.raises(ConfigError, match=rf"data.retain_contamination: expected in \[0, 1\), found {value}"):
        DataConfig(retain_contamination=value)


def test_clean_mode_rejects_the_knob():
    with pytest.raises(
        ConfigError, match="data.retain_contamination: experiment mode only.*find_poison.enabled"
    ):
        load_config(None, ["mode=clean", "data.retain_contamination=0.1"])


def test_prepare_fingerprint_changes_only_with_a_nonzero_share():
    fp = lambda *o: fingerprint("prepare", load_config(None, list(o)).to_dict(), {})  # noqa: E731
    assert fp() == fp("data.retain_contamination=0") == fp("data.retain_contamination=0.0")
    assert fp("data.retain_contamination=0.1") not in (fp(), fp("data.retain_contamination=0.2"))


def test_weights_stage_mean_weights_of_contaminated_rows(tmp_path):
    r_ids = ["a", "b", "c", "d", "e"]
    rw = torch.tensor([0.5, 2.0, 1.0, 3.0, 0.25], dtype=torch.float64)
    assert contamination_means(r_ids, rw, {"b", "d"}) == {
        "n_contaminated": 2,
        "n_clean": 3,
        "mean_contaminated": 2.5,
        "mean_clean": 1.75 / 3,
    }
    rd = RunDir(tmp_path / "run")
    rd.data.mkdir(parents=True)
    rd.weights.mkdir(parents=True)
    truth = [{"id": i, "contaminated": i in ("b", "d")} for i in r_ids]
    write_jsonl(rd.data / "retain_truth.jsonl", truth)
    paths = write_contamination(rd, r_ids, {"rapidun": rw, "self_only": torch.ones(5)})
    assert paths == [rd.weights / "contamination.json"]
    saved = read_json(paths[0])
    assert saved["rapidun"]["mean_contaminated"] == 2.5 and saved["self_only"]["mean_clean"] == 1.0
    write_jsonl(rd.data / "retain_truth.jsonl", [dict(t, contaminated=False) for t in truth])
    assert write_contamination(rd, r_ids, {"rapidun": rw}) == [] and not paths[0].exists()  # stale file gone
