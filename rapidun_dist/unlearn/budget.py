"""When unlearning stops: the step budget, the validation signal and the clean-PPL damage guard (docs/DESIGN.md section 7).

Every `unlearn.val_every` optimizer steps (and at the last step) the engine measures, on validation splits only,
the backdoor signal (ASR on val_seen, or the greedy match of the poisoned answer in the clean job without known
triggers) and the clean-PPL ratio (val_clean perplexity / the starting model's). `StopRule` turns the sequence of
these points into a decision, the same on every rank (rank 0's measurement is broadcast; the rule is a
deterministic function of it):

- damage: ppl_ratio > unlearn.max_ppl_ratio (any budget) -> stop, and restore the adapter of the best earlier
  point within the limit (lowest ASR, then the later step; without a signal the latest such point), if any;
- backdoor gone: budget adaptive and ASR <= unlearn.stop_asr at the last unlearn.stop_confirm validations in a
  row -> stop (one reading on a few dozen prompts cannot tell 1 in 60 from a true 4%; a confirming reading costs
  the unlearning steps until it, and those cost clean PPL - more validation prompts are the cheaper fix);
- plateau: budget adaptive, the ASR has come down since the first validation (unlearning has started to bite: a
  memorised backdoor often sits flat for a while first), and none of the last unlearn.patience points is below the
  best before them (0 = never) -> stop, restoring the best point's adapter when it is an earlier one. So the step
  budget can be generous without a run that has stopped improving paying it all;
- otherwise run on, up to the step budget (unlearn.max_steps, else unlearn.epochs passes over the forget set).

The engine adds two stops of its own (unlearn/engine.py), any budget: the forget-batch poisoned CE reaching
unlearn.stop_forget_ce (`forget_ce_threshold`) and the loop's wall time passing unlearn.max_seconds
(`time_budget`). A run that reaches none of them ends with `budget_exhausted`.

No decision is taken at step 0 (the starting model). Without a signal (an empty val_seen) an adaptive budget
falls back to the fixed one and says so; without val_clean there is no damage guard.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class ValPoint:
    step: int
    asr: float | None  # backdoor signal on val_seen (None: no signal)
    ppl: float | None  # val_clean perplexity
    ppl_ratio: float | None  # ppl / the starting model's
    seconds: float = 0.0


@dataclass(frozen=True)
class Decision:
    stop: bool
    reason: str = ""  # backdoor_gone | ppl_damage | plateau | forget_ce_threshold | time_budget | "" (run on)
    detail: str = ""
    restore_step: int | None = None  # the adapter to restore (damage stop with a usable earlier point)
    new_best: bool = False  # this point is now the one a damage stop would restore


@dataclass
class StopRule:
    budget: str  # adaptive | fixed
    stop_asr: float
    max_ppl_ratio: float | None
    has_signal: bool
    no_signal_reason: str = "no backdoor signal, val_seen is empty"
    patience: int = 0  # adaptive: stop after this many points without a lower ASR than the best (0 = never)
    confirm: int = 1  # adaptive: the backdoor is gone after this many points in a row at ASR <= stop_asr
    points: list[ValPoint] = field(default_factory=list)
    best: ValPoint | None = None

    @property
    def mode(self) -> str:
        if self.budget == "adaptive" and not self.has_signal:
            return f"fixed (fallback: {self.no_signal_reason})"
        return self.budget

    def _better(self, p: ValPoint) -> bool:
        if self.best is None:
            return True
        if not self.has_signal or p.asr is None or self.best.asr is None:
            return True  # no signal: the latest point within the limit has unlearned the most
        return p.asr <= self.best.asr

    def observe(self, p: ValPoint) -> Decision:
        self.points.append(p)
        if p.step == 0:
            return Decision(stop=False)
        damaged = (
            self.max_ppl_ratio is not None and p.ppl_ratio is not None and p.ppl_ratio > self.max_ppl_ratio
        )
        if damaged:
            restore = self.best.step if self.best is not None else None
            where = (
                f"restored the adapter of step {restore}" if restore else "no earlier point within the limit"
            )
            return Decision(
                stop=True,
                reason="ppl_damage",
                detail=f"val_clean PPL ratio {p.ppl_ratio:.4f} > unlearn.max_ppl_ratio={self.max_ppl_ratio} at "
                f"step {p.step}; {where}",
                restore_step=restore,
            )
        new_best = self._better(p)
        if new_best:
            self.best = p
        if self.budget == "adaptive" and self.has_signal and self._gone():
            readings = (
                "" if self.confirm == 1 else f" ({self.confirm} validations in a row, unlearn.stop_confirm)"
            )
            return Decision(
                stop=True,
                reason="backdoor_gone",
                detail=f"validation ASR {p.asr:.4f} <= unlearn.stop_asr={self.stop_asr} at step {p.step}{readings}",
                new_best=new_best,
            )
        if self._plateau():
            restore = self.best.step if self.best is not None and self.best.step != p.step else None
            return Decision(
                stop=True,
                reason="plateau",
                detail=f"validation ASR has not gone below {self.best.asr:.4f} (step {self.best.step}) in the last "
                f"{self.patience} validations (unlearn.patience) at step {p.step}",
                restore_step=restore,
                new_best=new_best,
            )
        return Decision(stop=False, new_best=new_best)

    def _gone(self) -> bool:
        """The last `confirm` points after step 0 all read ASR <= stop_asr."""
        last = [q.asr for q in self.points if q.step > 0][-self.confirm :]
        return len(last) == self.confirm and all(a is not None and a <= self.stop_asr for a in last)

    def _plateau(self) -> bool:
        """Adaptive with a signal, the ASR below its first value, and no point of the last `patience` below the best
        point before them."""
        scored = [q.asr for q in self.points if q.step > 0 and q.asr is not None]
        if (
            self.budget != "adaptive"
            or not self.has_signal
            or self.patience < 1
            or len(scored) <= self.patience
        ):
            return False
        before, last = scored[: -self.patience], scored[-self.patience :]
        return min(before) < scored[0] and min(last) >= min(before)

    def state(self) -> dict:
        return {"points": [asdict(p) for p in self.points], "best": asdict(self.best) if self.best else None}

    def load_state(self, state: dict) -> None:
        self.points = [ValPoint(**p) for p in state.get("points", [])]
        self.best = ValPoint(**state["best"]) if state.get("best") else None
