"""Budgets that adapt: the stop rule on scripted validation points, the engine stopping on a scripted signal and
restoring its best adapter on clean-PPL damage, the fixed fallback when val_seen is empty, and no decision
reading a test split (the ASR curve reads test prompts for its plot only and changes nothing)."""

from __future__ import annotations

import shutil

import pytest
from unlearn_helpers import CONFIG, TINY, fresh_run, read_metrics, write_val_seen

from rapidun_dist.config import load_config
from rapidun_dist.run.layout import method_dir
from rapidun_dist.run.rundir import RunDir
from rapidun_dist.stages import stage_context
from rapidun_dist.stages.unlearn import run_method
from rapidun_dist.unlearn.budget import StopRule, ValPoint
from rapidun_dist.unlearn.engine import UnlearnRunner

BASE = ["unlearn.eval_every=0", "unlearn.batch_size=4", "unlearn.lr=5e-3", "unlearn.lora_dropout=0"]


def _rule(budget="adaptive", signal=True, max_ppl=1.10):
    return StopRule(budget=budget, stop_asr=0.05, max_ppl_ratio=max_ppl, has_signal=signal)


def test_plateau_stops_only_after_the_asr_has_come_down_and_restores_the_best():
    rule = StopRule(budget="adaptive", stop_asr=0.02, max_ppl_ratio=1.1, has_signal=True, patience=2)
    flat = [0.9, 0.9, 0.9, 0.9]  # a memorised backdoor sits flat first: no plateau stop before it moves
    for i, asr in enumerate(flat, start=1):
        assert not rule.observe(ValPoint(4 * i, asr, 2.0, 1.0)).stop
    assert not rule.observe(ValPoint(20, 0.5, 2.0, 1.01)).stop
    assert not rule.observe(ValPoint(24, 0.2, 2.0, 1.02)).stop  # still improving
    assert not rule.observe(ValPoint(28, 0.25, 2.0, 1.02)).stop  # one point without improvement
    d = rule.observe(ValPoint(32, 0.2, 2.0, 1.03))  # two: the best before them (0.2, step 24) is not beaten
    assert d.stop and d.reason == "plateau" and "below 0.2000" in d.detail and "at step 32" in d.detail
    assert d.restore_step is None  # a tie counts as the later best: this adapter is kept
    rule2 = StopRule(budget="adaptive", stop_asr=0.02, max_ppl_ratio=1.1, has_signal=True, patience=2)
    for step, asr in ((4, 0.9), (8, 0.3), (12, 0.4), (16, 0.35)):
        d = rule2.observe(ValPoint(step, asr, 2.0, 1.0))
    assert d.stop and d.restore_step == 8
    fixed = StopRule(budget="fixed", stop_asr=0.02, max_ppl_ratio=1.1, has_signal=True, patience=1)
    assert not any(
        fixed.observe(ValPoint(4 * i, a, 2.0, 1.0)).stop for i, a in enumerate([0.9, 0.3, 0.4, 0.5], 1)
    )
    off = _rule()  # patience 0: never a plateau stop
    assert not any(
        off.observe(ValPoint(4 * i, a, 2.0, 1.0)).stop for i, a in enumerate([0.9, 0.3, 0.4, 0.5], 1)
    )


def test_rule_stops_when_the_backdoor_is_gone_not_at_step_zero():
    r = _rule()
    assert not r.observe(ValPoint(0, 0.0, 2.0, 1.0)).stop  # no decision on the starting model
    assert not r.observe(ValPoint(4, 0.5, 2.0, 1.01)).stop
    d = r.observe(ValPoint(8, 0.03, 2.1, 1.04))
    assert d.stop and d.reason == "backdoor_gone" and "step 8" in d.detail and d.restore_step is None


def test_rule_with_stop_confirm_needs_that_many_readings_in_a_row():
    r = StopRule(budget="adaptive", stop_asr=0.02, max_ppl_ratio=1.1, has_signal=True, confirm=2)
    assert not r.observe(ValPoint(0, 0.0, 2.0, 1.0)).stop  # step 0 is no reading
    assert not r.observe(ValPoint(5, 0.0, 2.0, 1.0)).stop  # one reading at 0 is not yet two
    assert not r.observe(ValPoint(10, 0.05, 2.0, 1.0)).stop  # a lucky draw: the next one is above
    assert not r.observe(ValPoint(15, 0.0167, 2.0, 1.0)).stop  # the run starts again
    d = r.observe(ValPoint(20, 0.02, 2.0, 1.0))
    assert (
        d.stop
        and d.reason == "backdoor_gone"
        and "2 validations in a row" in d.detail
        and "step 20" in d.detail
    )
    one = StopRule(budget="adaptive", stop_asr=0.02, max_ppl_ratio=1.1, has_signal=True)  # the default: 1
    assert one.observe(ValPoint(5, 0.0167, 2.0, 1.0)).stop


def test_rule_fixed_budget_ignores_the_signal_but_keeps_the_damage_guard():
    r = _rule(budget="fixed")
    assert not r.observe(ValPoint(4, 0.0, 2.0, 1.01)).stop
    d = r.observe(ValPoint(8, 0.0, 2.5, 1.25))
    assert d.stop and d.reason == "ppl_damage" and d.restore_step == 4


def test_rule_restores_the_best_point_within_the_limit():
    r = _rule()
    for p in (ValPoint(2, 0.6, 2.0, 1.02), ValPoint(4, 0.2, 2.1, 1.05), ValPoint(6, 0.3, 2.15, 1.07)):
        assert not r.observe(p).stop
    d = r.observe(ValPoint(8, 0.1, 2.4, 1.2))
    assert d.stop and d.restore_step == 4  # lowest ASR among the points within the limit
    nosig = _rule(signal=False)
    for p in (ValPoint(2, None, 2.0, 1.02), ValPoint(4, None, 2.1, 1.05)):
        nosig.observe(p)
    assert nosig.observe(ValPoint(6, None, 3.0, 1.5)).restore_step == 4  # the latest within the limit
    first = _rule()
    d = first.observe(ValPoint(2, 0.9, 3.0, 1.5))
    assert d.stop and d.restore_step is None and "no earlier point" in d.detail


def test_rule_mode_names_the_fallback_and_round_trips_its_state():
    assert _rule(signal=False).mode.startswith("fixed (fallback")
    r = _rule()
    r.observe(ValPoint(2, 0.4, 2.0, 1.01))
    again = _rule()
    again.load_state(r.state())
    assert again.points == r.points and again.best == r.best


class ScriptedValidator:
    """A Validator whose measurements are scripted: asr[k] / ppl[k] at the k-th call (ppl[0] = the start)."""

    def __init__(self, asr, ppl):
        self.asr_seq, self.ppl_seq, self.signal = list(asr), list(ppl), "judge"

    def asr(self, model):
        return self.asr_seq.pop(0)

    def ppl(self, model):
        return self.ppl_seq.pop(0)

    def describe(self):
        return {"signal": self.signal, "n_seen": 1, "n_clean": 1}


def _runner(run, out, validator, *extra) -> UnlearnRunner:
    rd = RunDir(run)
    cfg = load_config(CONFIG, [f"run_dir={run}", *TINY, *BASE, *extra])
    return UnlearnRunner(
        cfg=cfg,
        method="uniform",
        model_dir=rd.model,
        data_dir=rd.data,
        weights_dir=rd.weights,
        out_dir=out,
        validator=validator,
    )


@pytest.fixture(scope="module")
def run(prepared_run, tmp_path_factory):
    return fresh_run(prepared_run, tmp_path_factory.mktemp("budget") / "run")


def test_engine_stops_on_a_scripted_signal_and_records_why(single_process, run, tmp_path):
    v = ScriptedValidator(asr=[0.9, 0.4, 0.0], ppl=[2.0, 2.0, 2.02, 2.04])
    runner = _runner(
        run, tmp_path / "a", v, "unlearn.max_steps=12", "unlearn.val_every=2", "unlearn.stop_asr=0.02"
    )
    runner.setup()
    try:
        runner.train()
        summary = runner.summary()
    finally:
        runner.cleanup()
    rows = read_metrics(tmp_path / "a" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]  # the third validation (step 6) says it is gone
    assert rows[-1]["stop"]["reason"] == "backdoor_gone" and rows[-1]["val_asr"] == 0.0
    assert summary["stop"]["step"] == 6 and summary["budget"] == "adaptive" and summary["max_steps"] == 12
    assert [p["step"] for p in summary["validation"]["points"]] == [2, 4, 6]
    assert summary["validation"]["points"][1]["ppl_ratio"] == pytest.approx(1.01)


def test_engine_damage_stop_restores_the_best_adapter(single_process, run, tmp_path):
    v = ScriptedValidator(asr=[0.9, 0.5, 0.6], ppl=[2.0, 2.04, 2.1, 2.6])
    runner = _runner(
        run, tmp_path / "b", v, "unlearn.max_steps=12", "unlearn.val_every=2", "unlearn.max_ppl_ratio=1.08"
    )
    runner.setup()
    try:
        runner.train()
        restored = runner.adapter_norm()
        summary = runner.summary()
    finally:
        runner.cleanup()
    rows = read_metrics(tmp_path / "b" / "metrics.jsonl")
    assert len(rows) == 6 and rows[-1]["stop"]["reason"] == "ppl_damage"
    assert summary["stop"]["restored_step"] == 4  # the lower ASR of the two points within 1.08
    assert restored == pytest.approx(rows[3]["adapter_norm"], rel=1e-6) and restored != pytest.approx(
        rows[-1]["adapter_norm"]
    )


def test_empty_val_seen_falls_back_to_the_fixed_budget_and_says_so(
    single_process, prepared_run, tmp_path, capsys
):
    """A data directory without triggered validation prompts (a prepared source that has no val_seen)."""
    run = fresh_run(prepared_run, tmp_path / "run")
    assert (run / "data" / "val_seen.jsonl").read_text() != ""  # experiment mode carves one
    (run / "data" / "val_seen.jsonl").write_text("")
    rd = RunDir(run)
    cfg = load_config(CONFIG, [f"run_dir={run}", *TINY, *BASE, "unlearn.max_steps=4", "unlearn.val_every=2"])
    s = run_method(stage_context(cfg, rd, "unlearn"), "uniform", method_dir(rd, "uniform"))
    assert s["budget"].startswith("fixed (fallback") and s["stop"]["reason"] == "budget_exhausted"
    assert s["validation"]["signal"] is None and len(s["validation"]["points"]) == 2
    assert s["seconds"]["validation"] > 0 and s["steps"] == 4
    assert "val_seen.jsonl is empty" in capsys.readouterr().err


def _unreadable_tests(run):
    """Replace every test split by a folder: any read of one raises IsADirectoryError."""
    for split in ("test_seen", "test_ood", "test_clean"):
        path = run / "data" / f"{split}.jsonl"
        path.unlink()
        path.mkdir()


def test_decisions_read_no_test_split_and_the_curve_changes_nothing(single_process, prepared_run, tmp_path):
    """Adaptive run with a real val_seen (judge) on a run dir whose test splits cannot be read: it completes. The
    same run with the ASR curve on (which does read test prompts, in an intact copy) logs the same steps, losses
    and stop: the curve drives no decision."""
    steps = [
        "unlearn.max_steps=6",
        "unlearn.val_every=2",
        "unlearn.stop_asr=0.5",
        "unlearn.max_ppl_ratio=1.5",
    ]
    blind = fresh_run(prepared_run, tmp_path / "blind")
    write_val_seen(blind)
    shutil.rmtree(blind / "eval", ignore_errors=True)
    _unreadable_tests(blind)
    rd = RunDir(blind)
    cfg = load_config(CONFIG, [f"run_dir={blind}", *TINY, *BASE, *steps])
    a = run_method(stage_context(cfg, rd, "unlearn"), "uniform", method_dir(rd, "uniform"))
    with pytest.raises(IsADirectoryError):  # the sabotage bites: a reader of test splits would fail here
        run_method(
            stage_context(
                load_config(CONFIG, [f"run_dir={blind}", *TINY, *BASE, *steps, "unlearn.eval_every=2"]),
                rd,
                "unlearn",
            ),
            "uniform",
            method_dir(rd, "uniform"),
        )
    seen = fresh_run(prepared_run, tmp_path / "seen")
    write_val_seen(seen)
    rd2 = RunDir(seen)
    b = run_method(
        stage_context(
            load_config(CONFIG, [f"run_dir={seen}", *TINY, *BASE, *steps, "unlearn.eval_every=1"]),
            rd2,
            "unlearn",
        ),
        "uniform",
        method_dir(rd2, "uniform"),
    )
    assert a["validation"]["signal"] == "judge" and a["budget"] == "adaptive"
    ra, rb = (
        read_metrics(method_dir(rd, "uniform") / "metrics.jsonl"),
        read_metrics(method_dir(rd2, "uniform") / "metrics.jsonl"),
    )
    assert any("asr_seen" in r for r in rb) and not any("asr_seen" in r for r in ra)
    assert [r["loss"] for r in ra] == pytest.approx([r["loss"] for r in rb], rel=1e-6)
    assert a["stop"] == b["stop"] and [p["asr"] for p in a["validation"]["points"]] == [
        p["asr"] for p in b["validation"]["points"]
    ]


def test_wall_time_cap_stops_the_loop_with_its_reason(single_process, prepared_run, tmp_path):
    """unlearn.max_seconds: the first step that ends past the cap is the last one, any budget; without a cap the
    same run spends its whole step budget."""
    run = fresh_run(prepared_run, tmp_path / "run")
    rd = RunDir(run)
    base = [
        f"run_dir={run}",
        *TINY,
        *BASE,
        "unlearn.max_steps=4",
        "unlearn.val_every=0",
        "unlearn.budget=fixed",
    ]
    capped = load_config(CONFIG, [*base, "unlearn.max_seconds=1e-6"])
    s = run_method(stage_context(capped, rd, "unlearn"), "uniform", method_dir(rd, "uniform"))
    assert s["stop"]["reason"] == "time_budget" and s["stop"]["step"] == 1 and s["steps"] == 1
    assert "unlearn.max_seconds=1e-06" in s["stop"]["detail"]
    free = load_config(CONFIG, base)
    s = run_method(stage_context(free, rd, "unlearn"), "uniform", method_dir(rd, "uniform") / "free")
    assert s["stop"]["reason"] == "budget_exhausted" and s["steps"] == 4
