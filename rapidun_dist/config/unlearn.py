"""The `unlearn` section: weighted LoRA unlearning, one protocol and engine for every method (docs/DESIGN.md
section 7). Method-only knobs say which method reads them (the registry: rapidun_dist/config/methods.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rapidun_dist.config.checks import check, check_literal
from rapidun_dist.config.model import PROJECTIONS

ZeroStage = Literal[0, 1, 2, 3]
Budget = Literal["adaptive", "fixed"]


@dataclass(kw_only=True)
class UnlearnConfig:
    """Weighted LoRA unlearning (docs/DESIGN.md section 7): one protocol, engine and loop for every method."""

    lora_r: int = 16
    """LoRA rank of the adapters (>= 1)."""
    lora_alpha: int = 16
    """LoRA scale numerator: the adapter's update is scaled by lora_alpha / lora_r (> 0)."""
    lora_dropout: float = 0.05
    """Dropout on the adapters' input, in [0, 1). Above 0 each rank draws its own masks, so results then depend on
    the world size."""
    target_modules: list[str] = field(default_factory=lambda: list(PROJECTIONS))
    """Linear layers that get LoRA adapters, matched by name (default: the seven projections); the backbone stays
    frozen."""
    lr: float = 6e-5
    """AdamW peak learning rate of the adapters (> 0): linear warmup, then a cosine to 0 over the step budget."""
    epochs: float = 2.0
    """The step budget (maximum): passes over the forget set at the retain:forget mix (> 0); steps =
    ceil(ceil(|forget| / forget rows per batch) x epochs). An adaptive budget may stop earlier."""
    max_steps: int | None = None
    """Overrides epochs: the maximum number of optimizer steps (>= 1; null = from epochs)."""
    batch_size: int = 8
    """Global batch (samples) per optimizer step: batch_size / (1 + retain_per_forget) forget rows, the rest retain
    rows. Must be a multiple of 1 + retain_per_forget and of ranks x grad_accum (`rapidun validate` checks)."""
    grad_accum: int = 1
    """Micro-batches per rank per optimizer step (micro-batch = batch_size / (ranks x grad_accum)); the global
    batches do not change with it, so a resumed run may change it."""
    retain_per_forget: int = 3
    """Retain rows per forget row in every global batch (>= 0)."""
    alpha_a: float = 1.0
    """Weight of every method's forgetting term on the poisoned answers (ascent, NPO, SimNPO; >= 0)."""
    beta_d: float = 0.5
    """Weight of the relabel term: descent on the clean answer of each forget row, on its triggered prompt (>= 0;
    0 turns the term off like `relabel: false`)."""
    relabel: bool = True
    """Protocol switch, the same for every method: descend on the clean answer of each triggered forget prompt."""
    self_relabel: bool = True
    """Forget rows without a clean answer get the model's own greedy answer to the prompt without the trigger."""
    self_relabel_max_new_tokens: int = 64
    """Self-relabel: the longest greedy answer generated, in tokens (>= 1)."""
    ascent_cap: float = 10.0
    """Poisoned CE above this contributes no more gradient: the ascent term is -min(CE, ascent_cap) (> 0)."""
    stop_forget_ce: float | None = None
    """Stop once a step's forget-batch poisoned CE reaches this (null = off); any budget."""
    npo_beta: float = 0.1
    """npo only: inverse temperature on summed sequence log-probabilities (> 0)."""
    simnpo_beta: float = 2.5
    """simnpo only: inverse temperature on length-normalised log-probabilities (> 0)."""
    simnpo_gamma: float = 0.0
    """simnpo only: the reward margin gamma in -(2 / beta) log sigmoid(beta CE - gamma)."""
    saliency_keep: float = 0.5
    """fisher only: share of adapter coordinates whose ascent gradient is kept (the top by forget / retain
    Fisher ratio), in (0, 1]."""
    saliency_warmup: int = 2
    """fisher only: optimizer steps (unmasked) before the saliency is measured (>= 0)."""
    saliency_rows: int = 64
    """fisher only: at most this many forget and retain rows the per-sample gradients are measured on (>= 1)."""
    loreun_refresh: int = 5
    """loreun only: optimizer steps between refreshes of the whole-forget-set weights (>= 1)."""
    loreun_tau: float = 1.0
    """loreun only: temperature of softmax(-CE / tau) over the forget set's poisoned-answer losses (> 0)."""
    reweight_every: int = 0
    """rapidun / self_only: recompute the influence weights from the current adapter every N optimizer steps
    (token-wise features of both packs, the weights stage's recipe; 0 = the weights stage's weights throughout).
    Needs influence.estimator=tokenwise and influence.contrast=none."""
    budget: Budget = "adaptive"
    """adaptive: stop once the validation signal says the backdoor is gone (up to the step budget); fixed: run it all."""
    val_every: int = 5
    """Optimizer steps between validations (and one at the last step); 0 = none: no stop signal and no damage
    guard, so the budget is fixed."""
    val_rows: int = 64
    """At most this many val_seen and val_clean rows (the first ones) per validation (>= 1)."""
    stop_asr: float = 0.02
    """budget adaptive: the backdoor counts as gone (stop) at validation ASR <= this, in [0, 1)."""
    stop_confirm: int = 1
    """budget adaptive: the backdoor counts as gone after this many validations in a row at ASR <= stop_asr (>= 1).
    One reading on n prompts passes at floor(stop_asr x n) hits: with 60 prompts and 0.02 one hit passes, which a
    true ASR of 4% gives 30% of the time; 2 asks for a second, later reading."""
    patience: int = 0
    """budget adaptive: once the ASR is below its first value, stop after this many validations without a new best,
    restoring the best adapter (0 = off: run to the budget)."""
    max_ppl_ratio: float | None = 1.10
    """Damage guard, any budget: stop once val_clean PPL / the starting model's exceeds this, restoring the best
    earlier adapter within the limit (> 1; null = no damage stop)."""
    warmup_ratio: float = 0.0
    """Share of the step budget with a linear learning-rate warmup, in [0, 1)."""
    weight_decay: float = 0.0
    """AdamW (decoupled) weight decay of the adapters."""
    clip_grad: float = 1.0
    """Gradient clipping: max global L2 norm of the adapters' gradient (> 0)."""
    zero_stage: ZeroStage = 2
    """DeepSpeed ZeRO stage; 2 for LoRA (small trainable state), 3 only where the frozen backbone does not fit a GPU."""
    eval_every: int = 0
    """ASR-curve points on the first 64 test_seen / test_ood prompts every N steps, for the plot only (never a
    decision; 0 = none)."""
    save_every: int = 0
    """Optimizer steps between checkpoints of the trainable state (0: only on SIGTERM / SIGUSR1); a rerun resumes
    from the latest one."""
    merge: bool = False
    """Also save the model with the adapter merged in (`merged/` beside `adapter/`)."""
    seed: int = 0
    """Seeds the batch schedule, the LoRA initialisation, the placebo's permutation and the relearn attack's
    batches; the top-level `seed` is added to it."""
    max_seconds: float | None = None
    """Wall-time cap of one method's step loop in seconds (steps, hooks and validation; null = none): the loop stops
    at the first step that ends past it (reason `time_budget`), any budget. Counted per launch: a resumed run starts
    its clock again. With `max_steps`, the adaptive budget's cap is in steps and seconds, not in passes over the
    (possibly few) known rows."""

    def __post_init__(self):
        check(type(self.zero_stage) is int, "unlearn.zero_stage", f"expected 0-3, found {self.zero_stage!r}")
        check_literal(self, "unlearn")
        check(self.epochs > 0, "unlearn.epochs", f"expected > 0, found {self.epochs}")
        check(
            self.max_steps is None or self.max_steps >= 1,
            "unlearn.max_steps",
            f"expected >= 1 (or null for epochs), found {self.max_steps}",
        )
        check(self.lora_alpha > 0, "unlearn.lora_alpha", f"expected > 0, found {self.lora_alpha}")
        check(
            0.0 <= self.warmup_ratio < 1.0,
            "unlearn.warmup_ratio",
            f"expected in [0, 1), found {self.warmup_ratio}",
        )
        check(self.stop_confirm >= 1, "unlearn.stop_confirm", f"expected >= 1, found {self.stop_confirm}")
        check(self.clip_grad > 0, "unlearn.clip_grad", f"expected > 0, found {self.clip_grad}")
        check(
            self.max_seconds is None or self.max_seconds > 0,
            "unlearn.max_seconds",
            f"expected > 0 seconds (or null for no cap), found {self.max_seconds}",
        )
        check(len(self.target_modules) > 0, "unlearn.target_modules", "needs at least one module name")
        for name in (
            "eval_every",
            "save_every",
            "val_every",
            "saliency_warmup",
            "beta_d",
            "alpha_a",
            "reweight_every",
        ):
            check(getattr(self, name) >= 0, f"unlearn.{name}", f"expected >= 0, found {getattr(self, name)}")
        for name in ("val_rows", "self_relabel_max_new_tokens", "saliency_rows", "loreun_refresh"):
            check(getattr(self, name) >= 1, f"unlearn.{name}", f"expected >= 1, found {getattr(self, name)}")
        for name in ("npo_beta", "simnpo_beta", "loreun_tau"):
            check(getattr(self, name) > 0, f"unlearn.{name}", f"expected > 0, found {getattr(self, name)}")
        check(self.lora_r >= 1, "unlearn.lora_r", f"expected >= 1, found {self.lora_r}")
        check(0.0 <= self.lora_dropout < 1.0, "unlearn.lora_dropout", f"found {self.lora_dropout}")
        check(self.lr > 0, "unlearn.lr", f"expected > 0, found {self.lr}")
        check(self.batch_size >= 1 and self.grad_accum >= 1, "unlearn.batch_size/grad_accum", "must be >= 1")
        check(self.ascent_cap > 0, "unlearn.ascent_cap", f"expected > 0, found {self.ascent_cap}")
        check(self.retain_per_forget >= 0, "unlearn.retain_per_forget", "must be >= 0")
        check(
            self.batch_size % (1 + self.retain_per_forget) == 0,
            "unlearn.batch_size",
            f"{self.batch_size} must be a multiple of 1 + unlearn.retain_per_forget = {1 + self.retain_per_forget} "
            "(each global batch holds forget rows and retain_per_forget x as many retain rows)",
        )
        check(
            0.0 < self.saliency_keep <= 1.0,
            "unlearn.saliency_keep",
            f"expected in (0, 1], found {self.saliency_keep}",
        )
        check(0.0 <= self.stop_asr < 1.0, "unlearn.stop_asr", f"expected in [0, 1), found {self.stop_asr}")
        check(self.patience >= 0, "unlearn.patience", f"expected >= 0, found {self.patience}")
        check(
            self.max_ppl_ratio is None or self.max_ppl_ratio > 1.0,
            "unlearn.max_ppl_ratio",
            f"expected > 1 (or null for no damage stop), found {self.max_ppl_ratio}",
        )
