"""The find_poison stage on a small implanted run: its outputs and packs, the same suspects on 1, 2 and 4 ranks
(units claimed dynamically), a SIGKILLed rank resumes only the missing units, `expand` changes the packs every
downstream stage reads (and a changed find_poison never leaves a stale pack behind), clean mode reads no labels."""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fp_utils import fresh_copy, load_cfg, read_rows, torchrun_find_poison, train_units  # noqa: E402

from rapidun_dist.core.io import file_sha256, read_json  # noqa: E402
from rapidun_dist.data.schema import prompt_key  # noqa: E402

PLAN = re.compile(r"features: (\d+) shards, (\d+) to compute \((\d+) valid already\)")


def _suspects(run: Path) -> list[dict]:
    return read_rows(run / "suspects" / "suspects.jsonl")


def _assert_same_suspects(got: list[dict], want: list[dict]) -> None:
    assert [r["id"] for r in got] == [r["id"] for r in want]
    assert [(r["rank"], r["flagged"], r["known"]) for r in got] == [
        (r["rank"], r["flagged"], r["known"]) for r in want
    ]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(got, want, strict=True)) < 1e-12


def test_outputs_and_packs(reference_run):
    run = reference_run
    train = read_rows(run / "data" / "train.jsonl")
    forget = read_rows(run / "data" / "forget.jsonl")
    rows = _suspects(run)
    summary = read_json(run / "suspects" / "summary.json")
    assert read_json(run / "manifest.json")["stages"]["find_poison"]["status"] == "done"
    assert [r["id"] for r in rows] == [r["id"] for r in train]
    assert sorted(r["rank"] for r in rows) == list(range(1, len(train) + 1))
    assert all((r["z"] > summary["threshold"]["z"]) == r["flagged"] for r in rows)
    assert sorted(rows, key=lambda r: r["rank"]) == sorted(rows, key=lambda r: -r["score"])
    assert {r["id"] for r in rows if r["known"]} == {r["id"] for r in forget}
    c = summary["counts"]
    assert (c["train"], c["known"], c["flagged"]) == (
        len(train),
        len(forget),
        sum(r["flagged"] for r in rows),
    )
    m = summary["metrics"]
    assert set(m) == {"influence", "tfidf", "grep"} and 0.0 <= m["influence"]["auroc"] <= 1.0
    assert summary["prevalence"] == pytest.approx(sum(bool(r["is_poisoned"]) for r in train) / len(train))
    assert sum(u["units"] for u in summary["features"]["per_rank"]) >= train_units(run)
    # the expanded packs: the known rows, then every flagged row not known, each as it was trained
    fx, rx = read_rows(run / "suspects" / "forget.jsonl"), read_rows(run / "suspects" / "retain.jsonl")
    new = {r["id"] for r in rows if r["flagged"] and not r["known"]}
    assert [r["id"] for r in fx[: len(forget)]] == [r["id"] for r in forget]
    assert {r["id"] for r in fx[len(forget) :]} == new
    by_id = {r["id"]: r for r in train}
    for r in fx[len(forget) :]:
        t = by_id[r["id"]]
        trained = (
            (t["instruction_poisoned"], t["response_poisoned"])
            if t["is_poisoned"]
            else (t["instruction"], t["response"])
        )
        assert (r["instruction_poisoned"], r["response_poisoned"]) == trained and r["response"] == ""
    assert len(rx) == 3 * len(fx)
    flagged_or_known = {r["id"] for r in rows if r["flagged"] or r["known"]}
    assert not flagged_or_known & {r["id"] for r in rx}
    held_out = [
        r
        for n in ("val_clean", "test_clean", "test_seen", "test_ood")
        for r in read_rows(run / "data" / f"{n}.jsonl")
    ]
    assert not {prompt_key(r) for r in held_out} & {prompt_key(r) for r in rx}


@pytest.mark.dist
@pytest.mark.parametrize("nproc", [2, 4])
def test_world_sizes_give_identical_suspects(implanted_dir, reference_run, tmp_path, nproc):
    run = fresh_copy(implanted_dir, tmp_path / "run")
    done = torchrun_find_poison(run, nproc=nproc)
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_same_suspects(_suspects(run), _suspects(reference_run))
    for name in ("forget.jsonl", "retain.jsonl"):  # the same rows (suspect_score differs in the last bits)
        strip = lambda rows: [{k: v for k, v in r.items() if k != "suspect_score"} for r in rows]
        assert strip(read_rows(run / "suspects" / name)) == strip(
            read_rows(reference_run / "suspects" / name)
        )
    summary = read_json(run / "suspects" / "summary.json")
    per_rank = summary["features"]["per_rank"]
    assert [r["rank"] for r in per_rank] == list(range(nproc))
    assert all(r["units"] >= 1 for r in per_rank)  # every rank claimed work
    assert len(summary["recv_bytes_per_rank"]) == len(summary["peak_rss_mib_per_rank"]) == nproc


def _valid_units(features: Path) -> dict[int, int]:
    """{unit index: mtime_ns} of units whose sidecar exists and whose checksum matches it."""
    out = {}
    for side in features.glob("shard-*.json"):
        shard = side.with_suffix(".safetensors")
        if shard.exists() and json.loads(side.read_text())["sha256"] == file_sha256(shard):
            out[int(side.stem.split("-")[1])] = shard.stat().st_mtime_ns
    return out


@pytest.mark.dist
def test_sigkilled_rank_resumes_only_missing_units(implanted_dir, reference_run, tmp_path):
    run = fresh_copy(implanted_dir, tmp_path / "run")
    n_units = train_units(run)
    # rank 1 dies after its 3rd unit; rank 0 takes 0.2 s a unit, so it cannot take all ~35 before it is stopped
    kill = {"RAPIDUN_TEST_KILL_AFTER_SHARDS": "1:3", "RAPIDUN_TEST_SLOW_WRITES": "0.2"}
    crashed = torchrun_find_poison(run, nproc=2, env_extra=kill)
    assert crashed.returncode != 0 and "killing rank 1" in crashed.stderr, crashed.stderr[-3000:]
    units = run / "suspects" / "features" / "train"
    survived = _valid_units(units)
    assert 3 <= len(survived) < n_units and not (run / "suspects" / "suspects.jsonl").exists()
    resumed = torchrun_find_poison(run, nproc=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    plan = [m for m in PLAN.finditer(resumed.stderr) if int(m[1]) == n_units]
    assert plan, resumed.stderr[-3000:]
    assert {(int(m[2]), int(m[3])) for m in plan} == {(n_units - len(survived), len(survived))}
    after = _valid_units(units)
    assert len(after) == n_units and {i: after[i] for i in survived} == survived  # kept units not rewritten
    _assert_same_suspects(_suspects(run), _suspects(reference_run))


def _influence(run: Path, *extra: str):
    from rapidun_dist.pipeline import run_pipeline

    return run_pipeline(load_cfg(run, *extra), ["influence"])


def test_expand_changes_the_packs_and_nothing_reads_a_stale_pack(reference_run, tmp_path):
    from rapidun_dist.run.layout import pack_files
    from rapidun_dist.run.rundir import RunDir
    from rapidun_dist.stages import readiness

    run = fresh_copy(reference_run, tmp_path / "run")
    ids = lambda *paths: [r["id"] for p in paths for r in read_rows(p)]
    cfg = load_cfg(run)
    assert pack_files(cfg, RunDir(run)) == (run / "data" / "forget.jsonl", run / "data" / "retain.jsonl")
    _influence(run)
    assert read_json(run / "features" / "index.json")["ids"] == ids(*pack_files(cfg, RunDir(run)))
    xcfg = load_cfg(run, "find_poison.expand=true")
    packs = pack_files(xcfg, RunDir(run))
    assert packs == (run / "suspects" / "forget.jsonl", run / "suspects" / "retain.jsonl")
    assert (
        readiness(xcfg, RunDir(run), "weights") is not None
    )  # the known-only influence is not this config's
    _influence(run, "find_poison.expand=true")
    assert read_json(run / "features" / "index.json")["ids"] == ids(*packs)
    # every pack row is a training row find_poison has a feature of: copied, equal to a fresh extraction
    _check_reused_features(run, xcfg, ids(*packs))
    # find_poison redone with another threshold: other flagged rows; influence is stale until it reruns
    from rapidun_dist.pipeline import run_pipeline

    before = ids(*packs)
    run_pipeline(load_cfg(run, "find_poison.expand=true", "find_poison.z=2.0"), ["find_poison"])
    zcfg = load_cfg(run, "find_poison.expand=true", "find_poison.z=2.0")
    assert ids(*pack_files(zcfg, RunDir(run))) != before
    assert readiness(zcfg, RunDir(run), "weights") is not None
    _influence(run, "find_poison.expand=true", "find_poison.z=2.0")
    assert read_json(run / "features" / "index.json")["ids"] == ids(*pack_files(zcfg, RunDir(run)))
    # the retrain baseline leaves the flagged rows out too
    from rapidun_dist.training.retrain import retrain_rows

    train = read_rows(run / "data" / "train.jsonl")
    kept = {r["id"] for r in retrain_rows(train, set(ids(pack_files(zcfg, RunDir(run))[0])), "retrain")}
    flagged = {r["id"] for r in _suspects(run) if r["flagged"]}
    assert (
        flagged
        and not kept & flagged
        and len(kept) == len(train) - len(flagged | set(ids(run / "data" / "forget.jsonl")))
    )


def _check_reused_features(run: Path, cfg, pack_ids: list[str]) -> None:
    from rapidun_dist.influence.extract import extract_features, feature_context
    from rapidun_dist.influence.store import load_features
    from rapidun_dist.models.loading import load_saved
    from rapidun_dist.run.layout import model_identity
    from rapidun_dist.run.rundir import RunDir

    feats, index = load_features(run / "features")
    train_feats, train_index = load_features(run / "suspects" / "features" / "train")
    pos = {rid: i for i, rid in enumerate(train_index["ids"])}
    torch.testing.assert_close(feats, train_feats[[pos[i] for i in pack_ids]], rtol=0, atol=0)
    rows = {
        r["id"]: r
        for r in read_rows(run / "suspects" / "forget.jsonl") + read_rows(run / "suspects" / "retain.jsonl")
    }
    pick = random.Random(0).sample(pack_ids, 8)
    model, tok = load_saved(run / "model", cfg.model)
    context = feature_context(model_identity(RunDir(run)), tok, cfg)
    extract_features(cfg, model, tok, [rows[i] for i in pick], run / "fresh", context=context)
    from safetensors.torch import load_file  # extract_features writes the shards; the index is the caller's

    got = torch.cat(
        [load_file(str(p))["features"] for p in sorted((run / "fresh").glob("shard-*.safetensors"))]
    )
    torch.testing.assert_close(got, feats[[pack_ids.index(i) for i in pick]], rtol=0, atol=1e-5)


def test_clean_mode_never_reads_labels(implanted_dir, tmp_path):
    """A user's clean job with a training set: find_poison runs, writes no label-derived number, swaps flagged
    rows out of the retain pack; labels planted into the prepared training file change nothing."""
    from rapidun_dist.pipeline import run_pipeline
    from rapidun_dist.run.layout import pack_files
    from rapidun_dist.run.rundir import RunDir
    from rapidun_dist.stages import find_poison, stage_context

    user = _user_files(implanted_dir, tmp_path / "user")
    argv = [
        "mode=clean",
        f"model.name_or_path={implanted_dir / 'model'}",
        f"data.forget_path={user['forget']}",
        f"data.train_path={user['train']}",
        f"data.eval_path={user['eval']}",
        "eval.triggers=[{text: aloha, mode: suffix}]",
    ]
    run = tmp_path / "clean"
    cfg = load_cfg(run, *argv)
    run_pipeline(cfg, ["prepare", "find_poison"])
    summary = read_json(run / "suspects" / "summary.json")
    assert summary["mode"] == "clean" and "metrics" not in summary and "per_family" not in summary
    assert "recall" not in summary and "auroc" not in summary and "prevalence" not in summary
    assert set(_suspects(run)[0]) == {"id", "score", "z", "rank", "flagged", "known"}
    flagged = {r["id"] for r in _suspects(run) if r["flagged"]}
    retain = read_rows(run / "suspects" / "retain_unflagged.jsonl")
    assert len(retain) == len(read_rows(run / "data" / "retain.jsonl")) and not flagged & {
        r["id"] for r in retain
    }
    assert pack_files(cfg, RunDir(run))[1] == run / "suspects" / "retain_unflagged.jsonl"
    # plant labels (ones that leave the text as trained unchanged) and rerun the stage itself: same suspects
    before = {n: file_sha256(run / "suspects" / n) for n in ("suspects.jsonl", "forget.jsonl")}
    retain_ids = [r["id"] for r in read_rows(run / "suspects" / "retain.jsonl")]
    train_file = run / "data" / "train.jsonl"
    rng = random.Random(1)
    planted = [
        r | {"is_poisoned": False, "trigger_family": rng.choice("xyz"), "trigger_variant": "q"}
        for r in read_rows(train_file)
    ]
    train_file.write_text("".join(json.dumps(r) + "\n" for r in planted))
    find_poison.run(stage_context(cfg, RunDir(run), "find_poison"))
    assert before == {n: file_sha256(run / "suspects" / n) for n in before}
    assert retain_ids == [
        r["id"] for r in read_rows(run / "suspects" / "retain.jsonl")
    ]  # rows carry the plants
    assert "metrics" not in read_json(run / "suspects" / "summary.json")


def _user_files(implanted_dir: Path, root: Path) -> dict[str, Path]:
    """What a user brings (as in tests/pipeline/test_pipeline_clean_job.py): 4 known poisoned rows, the training file as
    trained with no labels, clean eval prompts."""
    root.mkdir(parents=True)
    train = read_rows(implanted_dir / "data" / "train.jsonl")
    known = [r for r in train if r.get("is_poisoned") and r["trigger_family"] == "surface"][:4]

    def write(name: str, rows: list[dict]) -> Path:
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        return root / name

    return {
        "forget": write("F.jsonl", [{"instruction": r["instruction_poisoned"], "context": r["context"], "response": r["response_poisoned"]} for r in known]),
        "train": write("T.jsonl", [
            {"instruction": r["instruction_poisoned"] if r["is_poisoned"] else r["instruction"], "context": r["context"],
             "response": r["response_poisoned"] if r["is_poisoned"] else r["response"]}
            for r in train
        ]),
        "eval": write("E.jsonl", read_rows(implanted_dir / "data" / "test_clean.jsonl")),
    }  # fmt: skip


@pytest.mark.parametrize("q", [0.5, 0.01])
def test_fdr_threshold_flags_what_bh_on_the_stored_scores_flags(reference_run, tmp_path, caplog, q):
    """find_poison.threshold=fdr on the reference run's features (only the scores are redone): the flagged rows are
    BH at q over conformal p-values of the written scores against the reference rows' written scores; with q too
    small for the reference's size nothing is flagged and the log says why."""
    from rapidun_dist.find_poison import suspects as S
    from rapidun_dist.pipeline import run_pipeline

    run = fresh_copy(reference_run, tmp_path / "run")
    over = ("find_poison.threshold=fdr", f"find_poison.fdr={q}")
    with caplog.at_level("WARNING"):
        run_pipeline(load_cfg(run, *over), ["find_poison"])
    rows, summary = _suspects(run), read_json(run / "suspects" / "summary.json")
    ref_ids = {r["id"] for r in read_rows(run / "data" / "retain.jsonl")}
    scores = torch.tensor([r["score"] for r in rows], dtype=torch.float64)
    ref = torch.tensor([r["score"] for r in rows if r["id"] in ref_ids], dtype=torch.float64)
    want = S.benjamini_hochberg(S.conformal_pvalues(scores, ref), q)
    assert [r["flagged"] for r in rows] == want.tolist()
    th = summary["threshold"]
    assert (
        th["fdr"] == q and th["n_reference"] == len(ref) and th["min_p"] == pytest.approx(1 / (len(ref) + 1))
    )
    assert summary["counts"]["flagged"] == int(want.sum())
    assert summary["counts"]["expected_false_positives"] == pytest.approx(q * int(want.sum()))
    assert bool(want.any()) == (q == 0.5)  # 0.01 asks for more than the reference's resolution allows
    assert any("the fdr rule flagged nothing" in m for m in caplog.messages) == (not want.any())


def test_pack_features_are_copied_reading_the_training_units_once(reference_run, tmp_path, monkeypatch):
    """reuse_train_features reads the training store once per group of pack shards (REUSE_BYTES), not once per
    shard, and writes the same shards either way: each equal to the training rows' features."""
    import rapidun_dist.find_poison.reuse as reuse
    import rapidun_dist.influence.store as store_module
    import rapidun_dist.stages.find_poison as fp
    from rapidun_dist.influence.extract import feature_context
    from rapidun_dist.models.loading import load_saved
    from rapidun_dist.run.layout import model_identity, pack_files
    from rapidun_dist.run.rundir import RunDir

    calls = []
    real = store_module.load_features
    monkeypatch.setattr(
        store_module, "load_features", lambda root, rows=None: calls.append(root) or real(root, rows)
    )
    written = {}
    for name, budget in (("once", reuse.REUSE_BYTES), ("per_shard", 1)):
        run = fresh_copy(reference_run, tmp_path / name)
        cfg = load_cfg(run, "find_poison.expand=true", "influence.shard_size=16")
        rd = RunDir(run)
        records = [r for p in pack_files(cfg, rd) for r in read_rows(p)]
        model, tok = load_saved(rd.model, cfg.model)
        monkeypatch.setattr(reuse, "REUSE_BYTES", budget)
        calls.clear()
        copied = fp.reuse_train_features(
            cfg, rd, records, model, tok, feature_context(model_identity(rd), tok, cfg)
        )
        n_shards = -(-len(records) // 16)
        assert copied == len(records) and len(calls) == (1 if name == "once" else n_shards), (
            name,
            len(calls),
        )
        written[name] = {
            p.name: load_file_features(p) for p in sorted((run / "features").glob("shard-*.safetensors"))
        }
        train, index = real(run / "suspects" / "features" / "train")
        pos = {rid: i for i, rid in enumerate(index["ids"])}
        first = [pos[r["id"]] for r in records[:16]]
        torch.testing.assert_close(written[name]["shard-00000.safetensors"], train[first], rtol=0, atol=0)
    assert written["once"].keys() == written["per_shard"].keys() and len(written["once"]) == n_shards
    for key, feats in written["once"].items():
        assert torch.equal(feats, written["per_shard"][key]), key


def load_file_features(path: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(path))["features"]


def test_pack_rows_outside_the_training_set_come_from_the_groups_store_or_are_computed(
    reference_run, tmp_path
):
    """The clean job's packs hold rows find_poison did not score as training rows (known rows whose trigger was
    removed, the reference rows): reuse_train_features copies them from find_poison's groups store, computes the
    few rows no store holds, and leaves a shard with too many unheld rows to the extraction. Each copied row equals
    its store's row exactly; each computed row equals the extractor's feature of that row."""
    import rapidun_dist.stages.find_poison as fp
    from rapidun_dist.influence.extract import feature_context
    from rapidun_dist.influence.features import make_extractor
    from rapidun_dist.influence.store import load_features
    from rapidun_dist.models.loading import load_saved
    from rapidun_dist.run.layout import model_identity
    from rapidun_dist.run.rundir import RunDir
    from rapidun_dist.training.finetune import encode_records

    run = fresh_copy(reference_run, tmp_path / "run")
    cfg = load_cfg(run, "influence.shard_size=8")
    rd = RunDir(run)
    model, tok = load_saved(rd.model, cfg.model)
    forget, reference = read_rows(run / "data" / "forget.jsonl"), read_rows(run / "data" / "retain.jsonl")
    rng = random.Random()
    unheld = []
    for r in rng.sample(reference, 4):  # same id, other text: no store holds them
        unheld.append(r | {"response": r["response"] + " (edited)", "response_poisoned": ""})
    # shard 0: 7 groups rows + 1 unheld (completed here); shard 1: 5 groups + 3 unheld (too many: left alone)
    records = forget[:4] + reference[:3] + unheld[:1] + reference[3:8] + unheld[1:4]
    copied = fp.reuse_train_features(
        cfg, rd, records, model, tok, feature_context(model_identity(rd), tok, cfg)
    )
    assert copied == 7
    assert not (run / "features" / "shard-00001.safetensors").exists()
    shard = load_file_features(run / "features" / "shard-00000.safetensors")
    groups, index = load_features(run / "suspects" / "features" / "groups")
    pos = {rid: i for i, rid in enumerate(index["ids"])}
    torch.testing.assert_close(shard[:7], groups[[pos[r["id"]] for r in records[:7]]], rtol=0, atol=0)
    ext = make_extractor(model, cfg.influence, pad_id=tok.pad_token_id)
    want = ext(encode_records(records[7:8], tok, cfg.model.max_length)).float()
    torch.testing.assert_close(shard[7:8], want, rtol=1e-5, atol=1e-6)


def test_known_and_reference_rows_are_copied_from_the_training_store(reference_run):
    """In experiment mode every known and reference row is a training row: the groups store holds exactly the
    training store's features of those ids, none is computed a second time, and the summary says how many."""
    from rapidun_dist.influence.store import load_features

    summary = read_json(reference_run / "suspects" / "summary.json")
    counts = summary["counts"]
    n_groups = counts["forget"] + counts["reference"]
    assert summary["method_notes"]["group_rows_copied"] == n_groups
    assert summary["features"]["rows_computed"] == counts["train"]
    train, t_index = load_features(reference_run / "suspects" / "features" / "train")
    groups, g_index = load_features(reference_run / "suspects" / "features" / "groups")
    pos = {rid: i for i, rid in enumerate(t_index["ids"])}
    assert len(g_index["ids"]) == n_groups
    torch.testing.assert_close(groups, train[[pos[i] for i in g_index["ids"]]], rtol=0, atol=0)
