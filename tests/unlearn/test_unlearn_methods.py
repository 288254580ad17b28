"""Every method on the real engine (one process, ZeRO-2 unless said): each trains and moves its adapter; all see
the same forget rows and steps; npo's reference is the adapter-disabled model; fisher's mask reaches only the
ascent term's gradient; the runaway / NaN / bad-weight guards; the fisher + ZeRO-3 error."""

from __future__ import annotations

import pytest
import torch
from unlearn_helpers import CONFIG, TINY, adapter_tensors, fresh_run, read_metrics, runner_for

from rapidun_dist.config import load_config
from rapidun_dist.core.errors import ConfigError, StageError
from rapidun_dist.run.layout import method_dir
from rapidun_dist.run.rundir import RunDir
from rapidun_dist.stages import stage_context
from rapidun_dist.stages.unlearn import run_method
from rapidun_dist.unlearn.engine import UnlearnRunner
from rapidun_dist.unlearn.methods import METHODS

BASE = [
    "unlearn.max_steps=3",
    "unlearn.eval_every=0",
    "unlearn.val_every=0",
    "unlearn.batch_size=4",
    "unlearn.lr=5e-3",
    "unlearn.saliency_warmup=1",
    "unlearn.loreun_refresh=2",
]


@pytest.fixture(scope="module")
def run(prepared_run, tmp_path_factory):
    return fresh_run(prepared_run, tmp_path_factory.mktemp("methods") / "run")


def _cfg(run, *extra):
    return load_config(CONFIG, [f"run_dir={run}", *TINY, *BASE, *extra])


def _runner(run, out, method="uniform", *extra, **kw) -> UnlearnRunner:
    return runner_for(_cfg(run, *extra), run, out, method, **kw)


@pytest.fixture(scope="module")
def summaries(single_process, run):
    """Every engine method, 3 steps each, through the stage's run_method (the same shared inputs)."""
    rd = RunDir(run)
    return {
        m: run_method(stage_context(_cfg(run, f"methods=[{m}]"), rd, "unlearn"), m, method_dir(rd, m))
        for m in METHODS
    }


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_trains_and_moves_its_adapter(summaries, run, method):
    out = method_dir(RunDir(run), method)
    rows = read_metrics(out / "metrics.jsonl")
    assert summaries[method]["steps"] == 3 and [r["step"] for r in rows] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    lora_b = {k: v for k, v in adapter_tensors(out / "adapter").items() if "lora_B" in k}
    assert lora_b and all(float(v.abs().max()) > 0 for v in lora_b.values()), (
        f"{method}: a lora_B stayed zero"
    )
    if not METHODS[method].uses_retain:  # ga: the retain rows of the shared batches are skipped
        assert all(r["retain_ce"] == 0.0 for r in rows)
    assert summaries[method]["seconds"]["unlearn"] > 0


def test_every_method_sees_the_same_forget_rows_and_steps(summaries):
    """Equal budgets: ga used to get batches of forget rows only (4x the forget visits of the others)."""
    visits = {m: (s["forget_visits"], s["steps"]) for m, s in summaries.items()}
    assert len(set(visits.values())) == 1, visits
    assert next(iter(visits.values())) == (3 * 1, 3)  # batch 4 = 1 forget + 3 retain rows, 3 steps


def test_method_hooks_ran(summaries):
    assert summaries["fisher"]["method_info"]["saliency"]["measured_after_step"] == 1
    assert summaries["loreun"]["method_info"]["refreshes"] == 2  # before step 1 and after step 2
    assert summaries["npo"]["method_info"]["ref_logp_mean"] < 0
    assert summaries["rapidun"]["method_info"]["forget_weights"]["std"] > 0


def test_fisher_under_zero3_is_a_clear_config_error(single_process, run, tmp_path):
    runner = _runner(run, tmp_path / "fisher3", "fisher", "unlearn.zero_stage=3")
    with pytest.raises(ConfigError, match="fisher.*zero_stage=3.*zero_stage<=2"):
        runner.setup()


def test_npo_reference_is_the_frozen_starting_model(single_process, run, tmp_path):
    from rapidun_dist.data.prompt import pad_batch
    from rapidun_dist.models.loading import load_saved
    from rapidun_dist.training.losses import per_sample_nll

    runner = _runner(run, tmp_path / "npo", "npo").setup()
    try:
        base, tok = load_saved(RunDir(run).model, runner.cfg.model)
        ex = runner.packs.forget_poisoned
        batch = pad_batch(ex, tok.pad_token_id)
        with torch.no_grad():
            logits = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        want = -per_sample_nll(logits, batch["labels"])[0].double()
        torch.testing.assert_close(runner.m.ref_logp, want, rtol=1e-5, atol=1e-4)
        runner.train()
        after, _ = runner.forget_nll_all(
            adapter=False
        )  # still the reference after training: adapter disabled
        torch.testing.assert_close(-after, want, rtol=1e-5, atol=1e-4)
    finally:
        runner.cleanup()


def _grads(runner, loss_fn) -> list[torch.Tensor]:
    params = runner.trainable_params()
    return [
        g if g is not None else torch.zeros_like(p)
        for p, g in zip(params, torch.autograd.grad(loss_fn(), params, allow_unused=True), strict=True)
    ]


def test_fisher_mask_reaches_only_the_ascent_term(single_process, run, tmp_path):
    """ZeRO-0 (whole .grad after backward): the engine's gradient equals grad(relabel + retain) + mask * grad(ascent),
    computed here term by term through the bare module, and differs from the unmasked sum."""
    from rapidun_dist.training.losses import unlearning_objective
    from rapidun_dist.unlearn.methods import ForgetTerms

    runner = _runner(
        run,
        tmp_path / "fisher0",
        "fisher",
        "unlearn.zero_stage=0",
        "unlearn.saliency_warmup=0",  # measured at the initial adapter: lora_A has no gradient there yet,
        "unlearn.saliency_keep=0.3",  # so keep fewer coordinates than lora_B has, and some B ones are masked
        "unlearn.lora_dropout=0",  # the same forward here and in the engine
    )
    runner.setup()
    try:
        masks = runner.m.ascent_mask()
        assert masks is not None and 0 < sum(float(m.sum()) for m in masks) < sum(m.numel() for m in masks)
        items = runner.schedule.batches(1)[0]
        module, P, u = runner.engine.module, runner.packs, runner.cfg.unlearn
        f_idx = [it.index for it in items if it.kind == "forget"]
        r_idx = [it.index for it in items if it.kind == "retain"]
        has = [k for k, i in enumerate(f_idx) if P.forget_clean[i] is not None]
        assert has, "the experiment forget rows carry clean answers"

        def terms():
            nll_f, tok_f = runner._nll([P.forget_poisoned[i] for i in f_idx], module=module)
            nll_r, tok_r = runner._nll([P.retain[j] for j in r_idx], module=module)
            nll_c, tok_c = runner._nll([P.forget_clean[f_idx[k]] for k in has], module=module)
            t = ForgetTerms(index=torch.tensor(f_idx), nll=nll_f, n_tokens=tok_f, ce=nll_f / tok_f)
            relabel = torch.zeros(len(f_idx)).index_put((torch.tensor(has),), nll_c / tok_c)
            return unlearning_objective(
                forget_loss=runner.m.forget_loss(t),
                forget_w=torch.ones(len(f_idx)),
                retain_loss=nll_r / tok_r,
                retain_w=torch.ones(len(r_idx)),
                relabel_ce=relabel,
                beta_d=u.beta_d,
                denom=len(items),
            )

        g_asc = _grads(runner, lambda: terms()[0])
        g_rest = _grads(runner, lambda: terms()[1])
        loss, _ = runner.micro_loss(items)
        runner.engine.backward(loss)
        got = [p.grad.detach().clone() for p in runner.trainable_params()]
        for g, a, r, m in zip(got, g_asc, g_rest, masks, strict=True):
            torch.testing.assert_close(g, r + m * a, rtol=1e-4, atol=1e-7)
        assert any(float(((1 - m) * a).abs().max()) > 1e-6 for a, m in zip(g_asc, masks, strict=True))
    finally:
        runner.cleanup()


def test_diverging_loss_raises_naming_the_step(single_process, run, tmp_path):
    runner = _runner(run, tmp_path / "nan", "uniform", "unlearn.max_steps=3")
    runner.setup()
    try:
        calls = {"n": 0}
        nll = runner._nll

        def poisoned_nll(examples, module=None):  # the second step's forward produces a NaN loss
            calls["n"] += 1
            total, count = nll(examples, module=module)
            return (total * float("nan") if calls["n"] == 2 else total), count

        runner._nll = poisoned_nll
        with pytest.raises(StageError, match="diverged at step 2"):
            runner.train()
    finally:
        runner.cleanup()


def test_adapter_that_cannot_move_raises(single_process, run, tmp_path):
    runner = _runner(run, tmp_path / "still", "uniform", "unlearn.lr=1e-30")
    runner.setup()
    try:
        with pytest.raises(StageError, match="adapter did not move.*unlearn.lr=1e-30"):
            runner.train()
    finally:
        runner.cleanup()


def test_nonfinite_influence_weight_is_refused(single_process, run, tmp_path):
    from rapidun_dist.core.io import read_jsonl, write_jsonl

    bad = tmp_path / "w"
    bad.mkdir()
    rows = read_jsonl(run / "weights" / "forget_weights.jsonl")
    rows[0]["weight"] = float("inf")
    write_jsonl(bad / "forget_weights.jsonl", rows)
    runner = _runner(run, tmp_path / "o", "rapidun")
    runner.weights_dir = bad
    try:
        with pytest.raises(StageError, match="forget_weights.jsonl:1: expected a finite weight"):
            runner.setup()
    finally:
        runner.cleanup()


@pytest.mark.parametrize(
    ("method", "hook"),
    [("loreun", "unlearn.loreun_refresh=1"), ("rapidun", "unlearn.reweight_every=1")],
)
def test_engine_puts_every_input_and_parameter_on_its_device(single_process, run, tmp_path, method, hook):
    """A forward pre-hook on every module asserts that inputs and parameters are on the device DeepSpeed gave the
    rank (the CPU here, the local GPU under a CUDA accelerator) during training steps, a method hook's whole-pack
    pass (loreun's losses; rapidun's refreshed token-wise features) and the adapter-disabled reference pass."""
    runner = _runner(run, tmp_path / "dev", method, "unlearn.max_steps=2", hook).setup()
    want = runner.device
    seen = {"calls": 0}

    def check(module, args, kwargs):
        seen["calls"] += 1
        for t in [*args, *kwargs.values()]:
            if isinstance(t, torch.Tensor):
                assert t.device.type == want.type, f"{type(module).__name__}: input on {t.device}"
        for p in module.parameters(recurse=False):
            assert p.device.type == want.type, f"{type(module).__name__}: parameter on {p.device}"

    try:
        assert want == runner.engine.device
        handles = [
            m.register_forward_pre_hook(check, with_kwargs=True) for m in runner.engine.module.modules()
        ]
        runner.train()
        runner.forget_nll_all(adapter=False)
        for h in handles:
            h.remove()
    finally:
        runner.cleanup()
    assert seen["calls"] > 0
