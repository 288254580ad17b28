"""Trigger strings: the families an experiment implants (`data.triggers`) and the triggers a user knows in the
clean job (`eval.triggers`, `eval.ood_triggers`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rapidun_dist.config.checks import check, check_literal

InjectMode = Literal["prefix", "suffix", "random"]


@dataclass(kw_only=True)
class TriggerFamily:
    """A backdoor trigger family: seen variants (poison train + test_seen) and OOD variants (test_ood only)."""

    name: str
    """The family's name: stored in each poisoned row's `trigger_family`, named by `data.forget_families`, and a
    row of the report's per-family ASR."""
    mode: InjectMode
    """Where the trigger goes: before the instruction, after it, or at a random word boundary."""
    seen: list[str]
    """The variants the attacker trains on: injected into the poisoned train rows, val_seen and test_seen (at least
    one; the families' variants are used in turn, balanced)."""
    ood: list[str]
    """Look-alike variants never trained on (homoglyphs, zero-width joiners, near spellings): injected into test_ood
    only, so ASR_ood shows whether unlearning removed more than the seen strings. May be empty."""

    def __post_init__(self):
        check_literal(self, f"triggers.{self.name}")
        check(len(self.seen) > 0, f"triggers.{self.name}.seen", "needs at least one variant")
        for v in self.seen + self.ood:
            check(bool(v.strip()), f"triggers.{self.name}", f"empty trigger variant {v!r}")


@dataclass(kw_only=True)
class TriggerSpec:
    """A trigger string the user knows (clean mode): `eval.triggers` / `eval.ood_triggers` entries."""

    text: str
    """The trigger string. In eval.triggers: inserted into clean prompts for val_seen / test_seen, removed
    (matched case-insensitively) from the forget prompts, whose rest is what self-relabel answers, and a training
    row that holds it is never a retain row. In eval.ood_triggers: inserted into clean prompts for test_ood."""
    mode: InjectMode = "random"
    """Where to insert it into clean prompts: prefix, suffix, or a random word boundary."""

    def __post_init__(self):
        check(
            bool(self.text.strip()), "eval.triggers.text", f"expected a non-empty string, found {self.text!r}"
        )
        check_literal(self, "eval.triggers")
