"""rapidun_placebo: RapidUn's weights shuffled within each pack (a permutation, fixed by the run seed; ascent and
relabel weights move together; a checkpoint restores them unshuffled again), registered for config validation,
and run on the real engine beside rapidun with the same spread of weights."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from unlearn_helpers import CONFIG, TINY, adapter_tensors, fresh_run, read_metrics

from rapidun_dist.config import UnlearnConfig, load_config
from rapidun_dist.core.io import write_jsonl
from rapidun_dist.run.layout import method_dir
from rapidun_dist.run.rundir import RunDir
from rapidun_dist.stages import stage_context
from rapidun_dist.stages.unlearn import run_method
from rapidun_dist.unlearn.methods import METHODS, BatchShape, build_method
from rapidun_dist.unlearn.methods.rapidun_placebo import placebo_permutation
from rapidun_dist.weights.rapidin import RELABEL_WEIGHTS, weight_rows, write_weights

NF, NR = 7, 21
SHAPE = BatchShape(size=8, n_forget=2, n_retain=6)


@pytest.fixture
def weights_dir(tmp_path) -> Path:
    """Distinct weights per row (ascent, retain, relabel), so any shuffle shows."""
    fw = torch.linspace(0.2, 3.0, NF, dtype=torch.float64)
    rw = torch.linspace(0.3, 2.5, NR, dtype=torch.float64)
    write_weights(tmp_path, weight_rows(fw, None), weight_rows(rw, None))
    write_jsonl(tmp_path / RELABEL_WEIGHTS, weight_rows(10.0 + fw, None))  # relabel_i = 10 + ascent_i
    return tmp_path


def _built(name: str, weights_dir: Path, seed: int = 0):
    method = build_method(name, UnlearnConfig(seed=seed), SHAPE, NF, NR)
    method.setup(SimpleNamespace(weights_dir=weights_dir))  # setup reads only the weights folder
    return method


def test_weights_are_rapidun_weights_permuted_within_each_pack(weights_dir):
    ref, placebo = _built("rapidun", weights_dir), _built("rapidun_placebo", weights_dir)
    for got, want, n in (
        (placebo.ascent_w, ref.ascent_w, NF),
        (placebo.forget_w, ref.forget_w, NF),
        (placebo.retain_w, ref.retain_w, NR),
    ):
        assert torch.equal(torch.sort(got).values, torch.sort(want).values)  # the same multiset of weights
        assert not torch.equal(got, want)  # but on other rows
        assert got.numel() == n
    perm = placebo_permutation(0, "forget", NF)
    assert sorted(perm.tolist()) == list(range(NF)) and torch.equal(placebo.ascent_w, ref.ascent_w[perm])
    assert torch.allclose(placebo.forget_w, placebo.ascent_w + 10.0)  # a row's ascent and relabel weights
    assert torch.equal(placebo.retain_w, ref.retain_w[placebo_permutation(0, "retain", NR)])
    assert torch.equal(placebo.ascent_ratio, placebo.ascent_w / placebo.forget_w)


def test_permutation_fixed_by_the_run_seed(weights_dir):
    a, b = _built("rapidun_placebo", weights_dir), _built("rapidun_placebo", weights_dir)
    assert torch.equal(a.retain_w, b.retain_w) and torch.equal(a.ascent_w, b.ascent_w)
    other = _built("rapidun_placebo", weights_dir, seed=1)
    assert not torch.equal(a.retain_w, other.retain_w)
    # the run's `seed` reaches the method through unlearn.seed
    u = load_config(None, ["seed=3", "methods=[rapidun_placebo]"]).unlearn
    assert u.seed == UnlearnConfig().seed + 3
    assert torch.equal(
        build_method("rapidun_placebo", u, SHAPE, NF, NR).retain_perm, placebo_permutation(3, "retain", NR)
    )


def test_checkpointed_weights_come_back_as_saved(weights_dir):
    placebo = _built("rapidun_placebo", weights_dir)
    placebo.u = UnlearnConfig(reweight_every=2)  # only then the weights are part of a checkpoint
    state = placebo.state_dict()
    resumed = build_method("rapidun_placebo", UnlearnConfig(reweight_every=2), SHAPE, NF, NR)
    resumed.load_state_dict(state)  # not shuffled a second time
    assert torch.equal(resumed.ascent_w, placebo.ascent_w) and torch.equal(resumed.retain_w, placebo.retain_w)
    assert torch.equal(resumed.forget_w, placebo.forget_w)


def test_registered_for_config_and_engine():
    assert METHODS["rapidun_placebo"].uses_influence  # the weights stage runs for it, its cost counts it
    assert load_config(CONFIG, ["methods=[rapidun,rapidun_placebo,uniform]"]).methods[1] == "rapidun_placebo"


@pytest.fixture(scope="module")
def run(prepared_run, tmp_path_factory):
    return fresh_run(prepared_run, tmp_path_factory.mktemp("placebo") / "run")


def test_runs_in_the_engine_like_rapidun(single_process, run):
    extra = ["unlearn.max_steps=3", "unlearn.eval_every=0", "unlearn.val_every=0", "unlearn.batch_size=4"]
    rd = RunDir(run)
    cfg = lambda m: load_config(CONFIG, [f"run_dir={run}", *TINY, *extra, f"methods=[{m}]"])  # noqa: E731
    out = {
        m: run_method(stage_context(cfg(m), rd, "unlearn"), m, method_dir(rd, m))
        for m in ("rapidun", "rapidun_placebo")
    }
    assert method_dir(rd, "rapidun_placebo") == rd.unlearn / "baselines" / "rapidun_placebo"
    ref, placebo = out["rapidun"], out["rapidun_placebo"]
    assert placebo["steps"] == ref["steps"] == 3 and placebo["forget_visits"] == ref["forget_visits"]
    for pack in ("forget_weights", "retain_weights"):  # the same spread on other rows
        assert placebo["method_info"][pack] == pytest.approx(ref["method_info"][pack])
    assert placebo["method_info"]["retain_weights"]["std"] > 0
    rows = read_metrics(method_dir(rd, "rapidun_placebo") / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3] and all(
        torch.isfinite(torch.tensor(r["loss"])) for r in rows
    )
    lora_b = {
        k: v
        for k, v in adapter_tensors(method_dir(rd, "rapidun_placebo") / "adapter").items()
        if "lora_B" in k
    }
    assert lora_b and all(float(v.abs().max()) > 0 for v in lora_b.values())
