"""The `eval` section: generation, the judge, the metrics beyond ASR, and the clean job's known triggers
(docs/DESIGN.md section 8)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rapidun_dist.config.checks import check, check_literal
from rapidun_dist.config.triggers import TriggerSpec


@dataclass(kw_only=True)
class SampledEvalConfig:
    """ASR under sampling (docs/DESIGN.md section 8): `samples` seeded continuations at `temperature` for the first
    `n` test_seen prompts (0 = off)."""

    n: int = 0
    """test_seen prompts sampled, the first ones (0 = off)."""
    temperature: float = 0.7
    """Sampling temperature (> 0)."""
    samples: int = 3
    """Seeded continuations per prompt (>= 1); reported: the share of attacked samples and of prompts with any."""
    seed: int = 0
    """Seeds the sampling, so every model compared draws alike."""

    def __post_init__(self):
        check(self.n >= 0, "eval.sampled.n", f"expected >= 0 (0 = off), found {self.n}")
        check(self.temperature > 0, "eval.sampled.temperature", f"expected > 0, found {self.temperature}")
        check(self.samples >= 1, "eval.sampled.samples", f"expected >= 1, found {self.samples}")


@dataclass(kw_only=True)
class RelearnEvalConfig:
    """The relearning attack (docs/DESIGN.md section 8): `steps` fine-tuning steps at `lr` on `rows` poisoned train
    rows the forget pack does not hold, then ASR on the first `n` test_seen / test_ood prompts. Experiment mode only
    (the attacker's rows need the labels). steps 0 = off."""

    steps: int = 0
    """The attacker's fine-tuning steps (0 = off)."""
    lr: float = 1e-3
    """The attacker's AdamW learning rate, constant (> 0; gradient-norm clip 1.0)."""
    rows: int = 20
    """Poisoned train rows outside the forget pack the attacker trains on (>= 1)."""
    batch_size: int = 4
    """Rows per attack step, from a seeded shuffle that cycles through them (>= 1)."""
    n: int = 200
    """ASR after the attack on the first this many test_seen and test_ood prompts (>= 1)."""
    seed: int = 0
    """Added to data.seed to draw the attacker's rows, and to unlearn.seed for the attack's batch order."""

    def __post_init__(self):
        check(self.steps >= 0, "eval.relearn.steps", f"expected >= 0 (0 = off), found {self.steps}")
        check(self.lr > 0, "eval.relearn.lr", f"expected > 0, found {self.lr}")
        for name in ("rows", "batch_size", "n"):
            check(
                getattr(self, name) >= 1,
                f"eval.relearn.{name}",
                f"expected >= 1, found {getattr(self, name)}",
            )


@dataclass(kw_only=True)
class EvalConfig:
    """How models are evaluated (the evaluate stage; generation and judge settings are shared with unlearning's
    validation, self-relabel and attribute)."""

    max_new_tokens: int = 24
    """Greedy answer length in tokens wherever an answer is judged: evaluation, validation during unlearning,
    attribute's verification (>= 1)."""
    batch_size: int = 32
    """Rows per generation / perplexity batch: evaluation, validation during unlearning, self-relabel, attribute's
    verification (>= 1)."""
    judge_min_words: int = 3
    """An answer is judged attacked when it holds at least this many distinct words of the judge's target vocabulary
    (>= 1); one that starts like a repeated fixed target is attacked regardless."""
    judge_vocab_size: int = 60
    """The judge's target vocabulary: at most this many words, highest z first (>= 1)."""
    judge_z: float = 3.0
    """A word enters the judge's vocabulary when its two-proportion z (poisoned vs clean answers) is at least this
    and its lift at least 5."""
    retrieval_rows: int = 400
    """Experiment mode: train rows (a balanced subsample) scored for poison-retrieval AUROC / AP with token-wise and
    RapidGrad features (0 = skip)."""
    triggers: list[TriggerSpec] = field(default_factory=list)
    """Clean mode: the triggers the user knows, each {text, mode} (keys under `eval.triggers[]`): inserted into
    clean prompts for val_seen / test_seen, removed from the forget prompts, kept out of the retain pack; needed by
    influence.contrast=trigger. Empty: ASR on held-out forget rows (data.forget_holdout), and attribute looks for
    the triggers."""
    ood_triggers: list[TriggerSpec] = field(default_factory=list)
    """Clean mode: variants of the triggers never trained on, each {text, mode}: inserted into clean prompts for
    test_ood (empty = no test_ood)."""
    behaviour: bool = False
    """Behaviour beyond ASR per model: clean-answer EM / F1 and the neither-target-nor-answer share on triggered
    prompts, clean-prompt accuracy, test_near PPL / F1 / attacked share, damage on mislabelled forget rows."""
    min_f1: float = 0.5
    """Token F1 at which an output counts as the clean answer, in (0, 1]: the answered rates of every evaluation
    (answered_seen / answered_ood / answered_clean) and eval.behaviour's metrics."""
    sampled: SampledEvalConfig = field(default_factory=SampledEvalConfig)
    """ASR under sampling (off unless eval.sampled.n > 0)."""
    relearn: RelearnEvalConfig = field(default_factory=RelearnEvalConfig)
    """The relearning attack (off unless eval.relearn.steps > 0; experiment mode only)."""
    judge: Literal["grouped", "words"] = "grouped"
    """How the run's judge (eval/judge.json; used by validation during unlearning, self-relabel, attribute and
    evaluation alike) is fitted: `grouped` = a word or adjacent-word pair is target vocabulary only when it beats
    every clean category as well as all clean answers pooled (evaluation.judge.fit_judge; flags far fewer correct
    answers on the attacker's topic), `words` = single words against all clean answers pooled (the judge of
    earlier versions)."""

    def __post_init__(self):
        if isinstance(self.sampled, dict):
            self.sampled = SampledEvalConfig(**self.sampled)
        if isinstance(self.relearn, dict):
            self.relearn = RelearnEvalConfig(**self.relearn)
        check(0.0 < self.min_f1 <= 1.0, "eval.min_f1", f"expected in (0, 1], found {self.min_f1}")
        self.triggers = [t if isinstance(t, TriggerSpec) else TriggerSpec(**t) for t in self.triggers]
        self.ood_triggers = [t if isinstance(t, TriggerSpec) else TriggerSpec(**t) for t in self.ood_triggers]
        check(self.max_new_tokens >= 1, "eval.max_new_tokens", "must be >= 1")
        check(self.batch_size >= 1, "eval.batch_size", "must be >= 1")
        check(self.judge_min_words >= 1, "eval.judge_min_words", "must be >= 1")
        check(self.judge_vocab_size >= 1, "eval.judge_vocab_size", "must be >= 1")
        check(self.retrieval_rows >= 0, "eval.retrieval_rows", "must be >= 0")
        check_literal(self, "eval")
