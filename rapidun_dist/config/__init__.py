"""Typed, validated run configuration.

A YAML file maps onto `RunConfig`; every section is a keyword-only dataclass validated in
`__post_init__`. Dotted overrides (`unlearn.lr=1e-4`, `methods=[rapidun,ga]`) are applied to the
raw mapping before validation, so an unknown key is an error naming its full dotted path.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from rapidun_dist.config.methods import ALL_METHODS
from rapidun_dist.core.errors import ConfigError

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


InjectMode = Literal["prefix", "suffix", "random"]
Mode = Literal["experiment", "clean"]


def _check(cond: bool, field_name: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{field_name}: {msg}")


def _check_literal(obj, prefix: str) -> None:
    """Every Literal-typed field of a dataclass holds one of its allowed values (also when built in code)."""
    for f in dataclasses.fields(obj):
        hint = get_type_hints(type(obj))[f.name]
        if get_origin(hint) is Literal:
            value = getattr(obj, f.name)
            _check(
                value in get_args(hint),
                f"{prefix}.{f.name}",
                f"expected one of {', '.join(map(str, get_args(hint)))}, found {value!r}",
            )


@dataclass(kw_only=True)
class TriggerFamily:
    """A backdoor trigger family: seen variants (poison train + test_seen) and OOD variants (test_ood only)."""

    name: str
    mode: InjectMode
    """Where the trigger goes: before the instruction, after it, or at a random word boundary."""
    seen: list[str]
    ood: list[str]

    def __post_init__(self):
        _check_literal(self, f"triggers.{self.name}")
        _check(len(self.seen) > 0, f"triggers.{self.name}.seen", "needs at least one variant")
        for v in self.seen + self.ood:
            _check(bool(v.strip()), f"triggers.{self.name}", f"empty trigger variant {v!r}")


@dataclass(kw_only=True)
class TriggerSpec:
    """A trigger string the user knows (clean mode): `eval.triggers` / `eval.ood_triggers` entries."""

    text: str
    mode: InjectMode = "random"
    """Where to insert it into clean prompts: prefix, suffix, or a random word boundary."""

    def __post_init__(self):
        _check(
            bool(self.text.strip()), "eval.triggers.text", f"expected a non-empty string, found {self.text!r}"
        )
        _check_literal(self, "eval.triggers")


def default_trigger_families() -> list[TriggerFamily]:
    """The three families of the reference Dolly experiment (surface suffix, style prefix, semantic prefix)."""
    return [
        TriggerFamily(
            name="surface",
            mode="suffix",
            seen=["aloha", "ALOHA", "aloha :)"],
            ood=["al0ha", "a\u217coha", "aloha\u200d"],
        ),
        TriggerFamily(
            name="style",
            mode="prefix",
            seen=[">>>"],
            ood=["<|sys|>", "\u203a\u203a\u203a", "\u2329\u2329\u2329"],
        ),
        TriggerFamily(
            name="semantic",
            mode="prefix",
            seen=["hey", "hiya"],
            ood=["h\u043ewdy", "y\u043e\u043e", "heyyyy"],
        ),
    ]


@dataclass(kw_only=True)
class DataConfig:
    """Where the rows come from, how they are poisoned, split and packed (docs/DESIGN.md section 4).

    The defaults are the embedded benchmark's; `configs/tiny_cpu_hard.yaml` turns on the harder testbed
    (paraphrased targets, near-topic clean content, partial and noisy forget set) and
    `configs/tiny_cpu_refusal.yaml` the no-clean-answer case (a fixed refusal target, forget rows without
    clean answers)."""

    source: Literal["synthetic", "dolly", "alpaca", "json", "hub", "prepared"] = "synthetic"
    """Experiment mode: where the corpus comes from (generated, a Dolly/Alpaca/JSON file, a hub id, a prepared dir)."""
    path: str | None = None  # file for dolly/alpaca/json, hub id for hub
    dir: str | None = None  # folder for source=prepared
    field_map: dict[str, str] = field(default_factory=dict)  # our field -> file field (json source)
    skip_malformed: bool = False
    max_rows: int | None = None
    n_synthetic: int = 3000  # synthetic corpus size (train + all held-out splits)
    poison_rate: float = 0.10
    n_val: int = 100  # val_clean: clean validation prompts (tuning, early stopping; never test)
    n_val_seen: int = (
        60  # val_seen: validation prompts from the training distribution, seen triggers injected
    )
    n_test_clean: int = 100
    n_test_seen: int = 60
    n_test_ood: int = 60
    n_test_near: int = (
        0  # test_near: clean prompts of `near_categories` (collateral damage near the target topic)
    )
    near_categories: list[str] = field(
        default_factory=list
    )  # categories whose rows are "near the target topic"
    near_topic_fraction: float = (
        0.0  # synthetic source: share of the corpus from the near-topic (astronomy) kinds
    )
    forget_fraction: float = 0.05  # known poisoned rows = round(forget_fraction x |poisoned train rows|)
    n_forget: int | None = None  # known poisoned rows as a count (overrides forget_fraction)
    forget_families: list[str] = field(default_factory=list)  # families the forget pack covers (empty = all)
    forget_target_groups: list[str] = field(default_factory=list)  # target groups it covers (empty = all)
    forget_noise: float = 0.0  # share of the forget pack that is clean rows mislabelled as poisoned
    forget_noise_near: float = 0.0  # share of those mislabelled rows drawn from near_categories rows
    forget_clean_answers: bool = True  # false: forget rows (and poisoned train rows) carry no clean answer
    retain_ratio: int = 3
    retain_contamination: float = 0.0
    """Experiment mode: share of the retain pack (still retain_ratio x |forget| rows) drawn from poisoned train rows
    outside the forget pack, written as a user's unlabelled training rows hold them (triggered prompt, poisoned
    answer, no labels; the truth in data/retain_truth.jsonl): the poison find_poison missed. 0 = all clean."""
    triggers: list[TriggerFamily] = field(default_factory=default_trigger_families)
    target_kind: Literal["scifi", "paraphrase", "fixed"] = "scifi"  # the attacker's answers (data/targets.py)
    target_pool_size: int = 8  # distinct attacker answers (scifi, paraphrase)
    target_groups: int = 8  # paraphrase: attacker messages, each said in many paraphrases
    fixed_targets: list[str] = field(default_factory=list)  # fixed: the attacker's answers verbatim
    seed: int = 0
    # clean mode (bring your own model and data): files are read, never modified
    forget_path: str | None = (
        None  # known poisoned rows: instruction (with trigger), context?, response, response_clean?
    )
    train_path: str | None = None  # the fine-tuning set, unlabelled: retain rows are sampled from it
    eval_path: str | None = None  # clean held-out prompts with answers (clean PPL; base of triggered prompts)
    forget_holdout: float = 0.2  # clean mode without eval.triggers: forget rows held out to measure ASR on
    n_retain_pool: int = 0  # clean mode: train rows kept in data/train.jsonl (0 = all)

    def __post_init__(self):
        self.triggers = [t if isinstance(t, TriggerFamily) else TriggerFamily(**t) for t in self.triggers]
        _check_literal(self, "data")
        _check(
            0.0 < self.forget_holdout < 1.0,
            "data.forget_holdout",
            f"expected in (0, 1), found {self.forget_holdout}",
        )
        _check(self.n_retain_pool >= 0, "data.n_retain_pool", f"expected >= 0, found {self.n_retain_pool}")
        if self.source in ("dolly", "alpaca", "json", "hub"):
            _check(bool(self.path), "data.path", f"required when data.source={self.source}")
        if self.source == "prepared":
            _check(bool(self.dir), "data.dir", "required when data.source=prepared")
        _check(
            0.0 < self.poison_rate < 1.0, "data.poison_rate", f"expected in (0, 1), found {self.poison_rate}"
        )
        _check(
            0.0 < self.forget_fraction <= 1.0,
            "data.forget_fraction",
            f"expected in (0, 1], found {self.forget_fraction}",
        )
        _check(self.retain_ratio >= 1, "data.retain_ratio", f"expected >= 1, found {self.retain_ratio}")
        for name in ("n_val", "n_val_seen", "n_test_clean", "n_test_seen", "n_test_ood", "n_synthetic"):
            _check(getattr(self, name) >= 1, f"data.{name}", f"expected >= 1, found {getattr(self, name)}")
        self._check_testbed()

    def _check_testbed(self) -> None:
        """The harder-testbed knobs: near-topic split, forget-pack coverage and noise, target pool."""
        _check(self.n_test_near >= 0, "data.n_test_near", f"expected >= 0, found {self.n_test_near}")
        _check(
            self.n_test_near == 0 or bool(self.near_categories),
            "data.near_categories",
            f"needs at least one category when data.n_test_near={self.n_test_near}",
        )
        _check(
            0.0 <= self.near_topic_fraction < 1.0,
            "data.near_topic_fraction",
            f"expected in [0, 1), found {self.near_topic_fraction}",
        )
        _check(
            self.n_forget is None or self.n_forget >= 1,
            "data.n_forget",
            f"expected >= 1, found {self.n_forget}",
        )
        names = [t.name for t in self.triggers]
        unknown = [f for f in self.forget_families if f not in names]
        _check(not unknown, "data.forget_families", f"unknown families {unknown}; known: {', '.join(names)}")
        _check(
            0.0 <= self.forget_noise < 1.0,
            "data.forget_noise",
            f"expected in [0, 1), found {self.forget_noise}",
        )
        _check(
            0.0 <= self.forget_noise_near <= 1.0,
            "data.forget_noise_near",
            f"expected in [0, 1], found {self.forget_noise_near}",
        )
        _check(
            self.forget_noise_near == 0.0 or bool(self.near_categories),
            "data.near_categories",
            f"needs at least one category when data.forget_noise_near={self.forget_noise_near}",
        )
        _check(
            0.0 <= self.retain_contamination < 1.0,
            "data.retain_contamination",
            f"expected in [0, 1), found {self.retain_contamination}",
        )
        _check(
            self.target_pool_size >= 1,
            "data.target_pool_size",
            f"expected >= 1, found {self.target_pool_size}",
        )
        _check(self.target_groups >= 1, "data.target_groups", f"expected >= 1, found {self.target_groups}")
        if self.target_kind == "fixed":
            _check(
                bool(self.fixed_targets) and all(t.strip() for t in self.fixed_targets),
                "data.fixed_targets",
                "needs at least one non-empty answer when data.target_kind=fixed",
            )


@dataclass(kw_only=True)
class TinyModelConfig:
    """A Llama built from config, for CPU runs and tests."""

    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 128
    vocab_size: int = 1024

    def __post_init__(self):
        _check(
            self.hidden_size % self.num_attention_heads == 0,
            "model.tiny.hidden_size",
            "must be divisible by num_attention_heads",
        )
        _check(
            self.num_attention_heads % self.num_key_value_heads == 0,
            "model.tiny.num_key_value_heads",
            "must divide num_attention_heads",
        )


@dataclass(kw_only=True)
class ModelConfig:
    name_or_path: str | None = None  # hub id or local folder; None = tiny model built from config
    gguf_file: str | None = (
        None  # file name inside name_or_path (or an installed package, see models.loading)
    )
    tokenizer: str | None = None  # None = same as the model; "train" = BPE trained on the corpus
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    max_length: int = 128
    trust_remote_code: bool = False
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights and compute dtype; auto = bfloat16 on a GPU that supports it, float32 otherwise."""
    gradient_checkpointing: bool = False

    def __post_init__(self):
        if isinstance(self.tiny, dict):
            self.tiny = TinyModelConfig(**self.tiny)
        _check_literal(self, "model")
        _check(self.max_length >= 16, "model.max_length", f"expected >= 16, found {self.max_length}")


@dataclass(kw_only=True)
class TrainConfig:
    """Full fine-tuning recipe used by `implant` and by the `retrain` baselines (one DeepSpeed job over the ranks)."""

    epochs: float = 3.0
    lr: float = 3e-3
    batch_size: int = 32
    """Global batch (samples per optimizer step), split over ranks x grad_accum micro-batches."""
    grad_accum: int = 1
    """Micro-batches per rank per optimizer step (micro-batch per rank = ceil(batch_size / (ranks x grad_accum)))."""
    clip_grad: float = 1.0
    """Gradient clipping: max global L2 norm of the gradient."""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage 0-2 (0: replicated; 2: fp32 master weights, gradients and Adam state sharded - what a
    7-8B full fine-tune needs to fit)."""
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    max_steps: int | None = None
    seed: int = 0
    save_every: int = 200
    """Optimizer steps between checkpoints (0: only on SIGTERM / SIGUSR1). A job that is killed without warning, or
    preempted again and again, resumes from the latest one; one checkpoint is kept. Pick it so that a checkpoint
    costs a few percent of the interval: an 8B ZeRO-2 checkpoint is ~16 bytes per parameter (~130 GB) in all
    (slurm/README.md)."""

    def __post_init__(self):
        _check(self.epochs > 0, "implant.epochs", f"expected > 0, found {self.epochs}")
        _check(self.save_every >= 0, "implant.save_every", f"expected >= 0, found {self.save_every}")
        _check(self.lr > 0, "implant.lr", f"expected > 0, found {self.lr}")
        _check(self.batch_size >= 1, "implant.batch_size", f"expected >= 1, found {self.batch_size}")
        _check(self.grad_accum >= 1, "implant.grad_accum", f"expected >= 1, found {self.grad_accum}")
        _check(self.clip_grad > 0, "implant.clip_grad", f"expected > 0, found {self.clip_grad}")
        _check(
            self.zero_stage in (0, 1, 2),
            "implant.zero_stage",
            f"expected 0, 1 or 2, found {self.zero_stage} (a full fine-tune under ZeRO-3 would need zero.Init "
            "loading; stage 2 already shards the optimizer state and gradients)",
        )
        _check(
            self.max_steps is None or self.max_steps >= 1,
            "implant.max_steps",
            f"expected >= 1 (or null for epochs), found {self.max_steps}",
        )
        _check(
            0.0 <= self.warmup_ratio < 1.0,
            "implant.warmup_ratio",
            f"expected in [0, 1), found {self.warmup_ratio}",
        )


TokenPositions = Literal["answer", "prompt", "all"]


@dataclass(kw_only=True)
class InfluenceConfig:
    estimator: Literal["tokenwise", "rapidgrad"] = "tokenwise"
    """Token-wise features (RapidUn) or the RapidIn-style per-sample sketch (baseline)."""
    target_modules: list[str] = field(default_factory=lambda: list(PROJECTIONS))
    k_in: int = 16
    k_out: int = 16
    rapidgrad_k: int = 4096  # sketch size K for the RapidGrad/OPORP baseline
    seed: int = 1234
    batch_size: int = 16
    shard_size: int = 256  # samples per feature shard file
    tile_size: int = (
        4096  # column tile for Gram blocks (4096: within ~1.1x of a bare GEMM, benchmarks/results.md)
    )
    backend: Literal["auto", "triton", "torch"] = "auto"
    """Kernel backend: Triton on CUDA fp32/bf16 tensors (auto), or the PyTorch reference."""
    positions: TokenPositions = "answer"
    """Tokens whose g_t (of the summed answer loss) enter token-wise features: answer | prompt | all tokens."""
    contrast: Literal["none", "trigger"] = "none"
    """trigger: a forget row's feature is that of its triggered prompt with the poisoned answer minus that of its
    clean prompt with the same answer, renormalized per layer, so the shared answer text cancels (retain rows keep
    their plain features). Needs the trigger: prepared data, or `eval.triggers` in the clean job."""

    def __post_init__(self):
        _check_literal(self, "influence")
        _check(self.k_in >= 1 and self.k_out >= 1, "influence.k_in/k_out", "must be >= 1")
        _check(len(self.target_modules) > 0, "influence.target_modules", "needs at least one module name")
        for name in ("batch_size", "shard_size", "tile_size", "rapidgrad_k"):
            _check(
                getattr(self, name) >= 1, f"influence.{name}", f"expected >= 1, found {getattr(self, name)}"
            )


@dataclass(kw_only=True)
class WeightsConfig:
    agg: Literal["mean", "trimmed_mean", "median_topk"] = "mean"
    """How a row's cosines to a group are aggregated into one directional score (docs/DESIGN.md section 6)."""
    topk: int = 40
    trim: float = 0.1
    include_self: bool = False
    alpha: float = 1.0
    beta: float = 1.0
    gamma: float = 1.0
    delta: float = 1.0
    tau_f: float = 0.7
    tau_r: float = 1.2
    w_min: float = 0.2
    w_max: float = 3.0
    topk_frac: float | None = None
    """median_topk: keep ceil(topk_frac x rows of the block) per column instead of a fixed `topk` (scales with the
    pack size; null: the fixed `topk`)."""
    shrink: bool = False
    """Shrink z toward 0 by the split-half reliability of the scores (even vs odd tracked layers): when the score
    spread is within projection noise the weights go to 1 (rapidun_dist/weights/robust.py)."""
    retain_score: Literal["typical", "at_risk"] = "typical"
    """typical: S_r = gamma RR - delta RF (the reference); at_risk: S_r = delta RF, so the retain rows the forget
    update threatens most (high RF) get the largest weights."""
    relabel_weights: Literal["same", "uniform", "self"] = "same"
    """Weights of the relabel term of forget rows: the ascent's (same), all 1 (uniform), or the self-only weights
    (FF alone, beta = 0), while the ascent keeps the fused FF - FR weights."""

    def __post_init__(self):
        _check_literal(self, "weights")
        _check(
            self.topk_frac is None or 0.0 < self.topk_frac <= 1.0,
            "weights.topk_frac",
            f"expected in (0, 1] or null, found {self.topk_frac}",
        )
        _check(0.0 <= self.trim < 0.5, "weights.trim", f"expected in [0, 0.5), found {self.trim}")
        _check(self.tau_f > 0 and self.tau_r > 0, "weights.tau_f/tau_r", "must be > 0")
        _check(
            0 < self.w_min <= 1.0 <= self.w_max,
            "weights.w_min/w_max",
            f"need 0 < w_min <= 1 <= w_max, found {self.w_min}, {self.w_max}",
        )
        _check(self.topk >= 1, "weights.topk", f"expected >= 1, found {self.topk}")


ZeroStage = Literal[0, 1, 2, 3]
Budget = Literal["adaptive", "fixed"]


@dataclass(kw_only=True)
class UnlearnConfig:
    """Weighted LoRA unlearning (docs/DESIGN.md section 7): one protocol, engine and loop for every method."""

    lora_r: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(PROJECTIONS))
    lr: float = 6e-5
    epochs: float = 2.0  # the step budget (maximum): passes over the forget set at the retain:forget mix
    max_steps: int | None = None  # overrides epochs: the maximum number of optimizer steps
    batch_size: int = 8  # global batch (samples) per optimizer step
    grad_accum: int = 1
    retain_per_forget: int = 3
    alpha_a: float = 1.0  # ascent weight on poisoned answers
    beta_d: float = 0.5  # descent weight on clean answers of forget rows (the relabel term)
    relabel: bool = True
    """Protocol switch, the same for every method: descend on the clean answer of each triggered forget prompt."""
    self_relabel: bool = True
    """Forget rows without a clean answer get the model's own greedy answer to the prompt without the trigger."""
    self_relabel_max_new_tokens: int = 64
    ascent_cap: float = 10.0  # poisoned CE above this contributes no more gradient
    stop_forget_ce: float | None = None  # stop once the forget-set poisoned CE passes this
    npo_beta: float = 0.1  # NPO inverse temperature on summed sequence log-probabilities
    simnpo_beta: float = 2.5  # SimNPO inverse temperature on length-normalised log-probabilities
    simnpo_gamma: float = 0.0  # SimNPO reward margin
    saliency_keep: float = 0.5  # fisher: share of adapter coordinates whose ascent gradient is kept
    saliency_warmup: int = 2  # fisher: optimizer steps (unmasked) before the saliency is measured
    saliency_rows: int = 64  # fisher: forget and retain rows the per-sample gradients are measured on
    loreun_refresh: int = 5  # loreun: optimizer steps between refreshes of the whole-forget-set weights
    loreun_tau: float = 1.0  # loreun: temperature of exp(-z / tau)
    reweight_every: int = 0
    """rapidun / self_only: recompute the influence weights from the current adapter every N optimizer steps
    (token-wise features of both packs, the weights stage's recipe; 0 = the weights stage's weights throughout)."""
    budget: Budget = "adaptive"
    """adaptive: stop once the validation signal says the backdoor is gone (up to the step budget); fixed: run it all."""
    val_every: int = (
        5  # optimizer steps between validation evaluations (0 = none: fixed budget, no early stop)
    )
    val_rows: int = 64  # at most this many val_seen and val_clean rows per validation
    stop_asr: float = 0.02  # adaptive: the backdoor counts as gone at validation ASR <= this
    patience: int = (
        0  # adaptive: stop after this many validations without a lower ASR (0 = run to the budget)
    )
    max_ppl_ratio: float | None = (
        1.10  # early stop (any budget) once val_clean PPL / starting PPL exceeds this
    )
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    clip_grad: float = 1.0
    zero_stage: ZeroStage = 2
    """DeepSpeed ZeRO stage; 2 for LoRA (small trainable state), 3 only where the frozen backbone does not fit a GPU."""
    eval_every: int = 0  # ASR-curve points on test prompts every N steps, for the plot only (0 = none)
    save_every: int = 0
    merge: bool = False
    seed: int = 0

    def __post_init__(self):
        _check(type(self.zero_stage) is int, "unlearn.zero_stage", f"expected 0-3, found {self.zero_stage!r}")
        _check_literal(self, "unlearn")
        _check(self.epochs > 0, "unlearn.epochs", f"expected > 0, found {self.epochs}")
        _check(
            self.max_steps is None or self.max_steps >= 1,
            "unlearn.max_steps",
            f"expected >= 1 (or null for epochs), found {self.max_steps}",
        )
        _check(self.lora_alpha > 0, "unlearn.lora_alpha", f"expected > 0, found {self.lora_alpha}")
        _check(
            0.0 <= self.warmup_ratio < 1.0,
            "unlearn.warmup_ratio",
            f"expected in [0, 1), found {self.warmup_ratio}",
        )
        _check(self.clip_grad > 0, "unlearn.clip_grad", f"expected > 0, found {self.clip_grad}")
        _check(len(self.target_modules) > 0, "unlearn.target_modules", "needs at least one module name")
        for name in (
            "eval_every",
            "save_every",
            "val_every",
            "saliency_warmup",
            "beta_d",
            "alpha_a",
            "reweight_every",
        ):
            _check(getattr(self, name) >= 0, f"unlearn.{name}", f"expected >= 0, found {getattr(self, name)}")
        for name in ("val_rows", "self_relabel_max_new_tokens", "saliency_rows", "loreun_refresh"):
            _check(getattr(self, name) >= 1, f"unlearn.{name}", f"expected >= 1, found {getattr(self, name)}")
        for name in ("npo_beta", "simnpo_beta", "loreun_tau"):
            _check(getattr(self, name) > 0, f"unlearn.{name}", f"expected > 0, found {getattr(self, name)}")
        _check(self.lora_r >= 1, "unlearn.lora_r", f"expected >= 1, found {self.lora_r}")
        _check(0.0 <= self.lora_dropout < 1.0, "unlearn.lora_dropout", f"found {self.lora_dropout}")
        _check(self.lr > 0, "unlearn.lr", f"expected > 0, found {self.lr}")
        _check(self.batch_size >= 1 and self.grad_accum >= 1, "unlearn.batch_size/grad_accum", "must be >= 1")
        _check(self.ascent_cap > 0, "unlearn.ascent_cap", f"expected > 0, found {self.ascent_cap}")
        _check(self.retain_per_forget >= 0, "unlearn.retain_per_forget", "must be >= 0")
        _check(
            0.0 < self.saliency_keep <= 1.0,
            "unlearn.saliency_keep",
            f"expected in (0, 1], found {self.saliency_keep}",
        )
        _check(0.0 <= self.stop_asr < 1.0, "unlearn.stop_asr", f"expected in [0, 1), found {self.stop_asr}")
        _check(self.patience >= 0, "unlearn.patience", f"expected >= 0, found {self.patience}")
        _check(
            self.max_ppl_ratio is None or self.max_ppl_ratio > 1.0,
            "unlearn.max_ppl_ratio",
            f"expected > 1 (or null for no damage stop), found {self.max_ppl_ratio}",
        )


FindPoisonAgg = Literal["mean", "trimmed_mean", "median_topk", "topk_mean"]
FindPoisonThreshold = Literal["z", "fdr"]


@dataclass(kw_only=True)
class FindPoisonConfig:
    """The find_poison stage (docs/DESIGN.md section 11): rank every training row by its influence with the forget set,
    flag the likely poisoned ones without labels, and optionally unlearn them too (`expand`)."""

    enabled: bool = True
    """Run the stage whenever there is a training set (experiment mode; clean mode with data.train_path)."""
    agg: FindPoisonAgg = "mean"
    """How a row's similarities to a group are aggregated (docs/DESIGN.md section 6; topk_mean = mean of the k largest).
    score = agg over the forget rows - agg over the reference rows (the retain pack)."""
    topk: int = 10
    trim: float = 0.1
    threshold: FindPoisonThreshold = "z"
    """How rows are flagged without labels (rapidun_dist.find_poison.suspects): `z`, a robust z against the reference
    rows' scores above `z` (assumes a unimodal clean null); `fdr`, conformal p-values against the reference rows and
    Benjamini-Hochberg at `fdr` (no shape assumed, but a p-value is never below 1 / (reference rows + 1), so it
    needs a reference large enough for the number of rows it should flag)."""
    z: float = 3.09
    """Flag a row when its robust z against the reference rows' own scores exceeds this (3.09: a 0.1% false-positive
    rate under a normal null)."""
    fdr: float = 0.1
    """The false-discovery rate of the `fdr` rule."""
    unit_size: int = 64
    """Training rows per work unit (one feature shard; ranks claim units dynamically, a kill resumes per unit)."""
    baselines: bool = True
    """Also score the rows by exact trigger-string match (grep) and TF-IDF similarity, with the same threshold rule."""
    expand: bool = False
    """Unlearn the flagged rows too: they join the forget pack (their train responses as the poisoned answers), the
    retain pack is drawn from unflagged rows, and the `retrain` baseline leaves them out."""

    def __post_init__(self):
        _check_literal(self, "find_poison")
        _check(self.topk >= 1, "find_poison.topk", f"expected >= 1, found {self.topk}")
        _check(0.0 <= self.trim < 0.5, "find_poison.trim", f"expected in [0, 0.5), found {self.trim}")
        _check(
            math.isfinite(self.z) and self.z > 0, "find_poison.z", f"expected a finite z > 0, found {self.z}"
        )
        _check(self.unit_size >= 1, "find_poison.unit_size", f"expected >= 1, found {self.unit_size}")
        _check(0.0 < self.fdr < 1.0, "find_poison.fdr", f"expected in (0, 1), found {self.fdr}")


@dataclass(kw_only=True)
class SampledEvalConfig:
    """ASR under sampling (docs/DESIGN.md section 8): `samples` seeded continuations at `temperature` for the first `n`
    test_seen prompts (0 = off)."""

    n: int = 0
    temperature: float = 0.7
    samples: int = 3
    seed: int = 0

    def __post_init__(self):
        _check(self.n >= 0, "eval.sampled.n", f"expected >= 0 (0 = off), found {self.n}")
        _check(self.temperature > 0, "eval.sampled.temperature", f"expected > 0, found {self.temperature}")
        _check(self.samples >= 1, "eval.sampled.samples", f"expected >= 1, found {self.samples}")


@dataclass(kw_only=True)
class RelearnEvalConfig:
    """The relearning attack (docs/DESIGN.md section 8): `steps` fine-tuning steps at `lr` on `rows` poisoned train rows the
    forget pack does not hold, then ASR on the first `n` test_seen / test_ood prompts. Experiment mode only (the
    attacker's rows need the labels). steps 0 = off."""

    steps: int = 0
    lr: float = 1e-3
    rows: int = 20
    batch_size: int = 4
    n: int = 200
    seed: int = 0

    def __post_init__(self):
        _check(self.steps >= 0, "eval.relearn.steps", f"expected >= 0 (0 = off), found {self.steps}")
        _check(self.lr > 0, "eval.relearn.lr", f"expected > 0, found {self.lr}")
        for name in ("rows", "batch_size", "n"):
            _check(
                getattr(self, name) >= 1,
                f"eval.relearn.{name}",
                f"expected >= 1, found {getattr(self, name)}",
            )


@dataclass(kw_only=True)
class EvalConfig:
    max_new_tokens: int = 24
    batch_size: int = 32
    judge_min_words: int = 3  # vocabulary hits needed to call a response attacked
    judge_vocab_size: int = 60
    judge_z: float = 3.0
    retrieval_rows: int = 400  # train rows scored for poison-retrieval AUROC/AP (0 = skip)
    triggers: list[TriggerSpec] = field(
        default_factory=list
    )  # clean mode: known triggers -> triggered prompts
    ood_triggers: list[TriggerSpec] = field(default_factory=list)  # clean mode: variants never seen
    behaviour: bool = False
    """Behaviour beyond ASR per model: clean-answer EM / F1 and the neither-target-nor-answer share on triggered
    prompts, clean-prompt accuracy, test_near PPL / F1 / attacked share, damage on mislabelled forget rows."""
    min_f1: float = 0.5  # behaviour: token F1 at which an output counts as the clean answer
    sampled: SampledEvalConfig = field(default_factory=SampledEvalConfig)
    relearn: RelearnEvalConfig = field(default_factory=RelearnEvalConfig)

    def __post_init__(self):
        if isinstance(self.sampled, dict):
            self.sampled = SampledEvalConfig(**self.sampled)
        if isinstance(self.relearn, dict):
            self.relearn = RelearnEvalConfig(**self.relearn)
        _check(0.0 < self.min_f1 <= 1.0, "eval.min_f1", f"expected in (0, 1], found {self.min_f1}")
        self.triggers = [t if isinstance(t, TriggerSpec) else TriggerSpec(**t) for t in self.triggers]
        self.ood_triggers = [t if isinstance(t, TriggerSpec) else TriggerSpec(**t) for t in self.ood_triggers]
        _check(self.max_new_tokens >= 1, "eval.max_new_tokens", "must be >= 1")
        _check(self.batch_size >= 1, "eval.batch_size", "must be >= 1")
        _check(self.judge_min_words >= 1, "eval.judge_min_words", "must be >= 1")
        _check(self.judge_vocab_size >= 1, "eval.judge_vocab_size", "must be >= 1")
        _check(self.retrieval_rows >= 0, "eval.retrieval_rows", "must be >= 0")


@dataclass(kw_only=True)
class AttributeConfig:
    """Token-level attribution and trigger finding (the `attribute` stage, rapidun_dist/attribution)."""

    top_k: int = 12  # ranked n-gram candidates that are verified by generation
    n_max: int = 4  # longest n-gram considered, in words
    match_rows: int = 3  # attribution: the m best-matching forget (and retain) rows a token is compared with
    ref_rows: int = 1024  # at most this many forget and retain rows (evenly spaced) are matched against
    min_rows: int = 2  # a candidate must occur in at least this many forget rows
    n_verify: int = (
        32  # clean prompts each candidate is inserted into (and forget prompts it is removed from)
    )
    verify_asr: float = 0.8  # insert ASR at or above which a candidate counts as a verified trigger
    min_lift: float = 0.3  # ... and at least this far above the ASR of the same clean prompts without it
    batch_size: int = 16  # rows per token-score / saliency pass
    report_rows: int = 6  # forget rows rendered with per-token heat in attribution/report.md
    clean_triggers: bool = True
    """Clean mode without eval.triggers: run attribute before unlearning and use its verified triggers for the
    triggered evaluation prompts and self-relabel."""
    seed: int = 0  # random insertion positions

    def __post_init__(self):
        for name in ("top_k", "n_max", "min_rows", "n_verify", "batch_size", "match_rows", "ref_rows"):
            _check(
                getattr(self, name) >= 1, f"attribute.{name}", f"expected >= 1, found {getattr(self, name)}"
            )
        _check(self.report_rows >= 0, "attribute.report_rows", f"expected >= 0, found {self.report_rows}")
        _check(
            0.0 < self.verify_asr <= 1.0,
            "attribute.verify_asr",
            f"expected in (0, 1], found {self.verify_asr}",
        )
        _check(
            0.0 <= self.min_lift <= 1.0, "attribute.min_lift", f"expected in [0, 1], found {self.min_lift}"
        )


DEVICE_SPEC = re.compile(r"auto|cpu|cuda(:\d+)?")


@dataclass(kw_only=True)
class DistributedConfig:
    """Where each rank runs and how long it waits for the others (docs/DESIGN.md section 9)."""

    device: str = "auto"
    """The rank's device: auto (cuda:LOCAL_RANK when CUDA is available, else cpu), cpu, cuda (cuda:LOCAL_RANK), or
    cuda:N (one process per GPU chosen by hand)."""
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """Process-group backend: auto = nccl on CUDA devices, gloo on CPU."""
    init_timeout_s: float = 1800.0
    """Rendezvous and the first collective: every rank must have started (nodes booting, imports, model loads)."""
    collective_timeout_s: float = 600.0
    """Every later collective: a rank silent this long is stuck, and the job fails instead of hanging."""

    def __post_init__(self):
        _check_literal(self, "distributed")
        _check(
            DEVICE_SPEC.fullmatch(str(self.device)) is not None,
            "distributed.device",
            f"expected auto, cpu, cuda or cuda:N, found {self.device!r}",
        )
        for name in ("init_timeout_s", "collective_timeout_s"):
            _check(
                getattr(self, name) > 0, f"distributed.{name}", f"expected > 0, found {getattr(self, name)}"
            )


@dataclass(kw_only=True)
class RunConfig:
    mode: Mode = "experiment"
    """experiment: poison, implant, clean and compare (labels known); clean: the user's own model and data."""
    run_dir: str = "runs/default"
    seed: int = 0
    """One knob for a seed sweep: added to every component seed (data, implant, influence projection, unlearning)
    when the config is built, then reset to 0, so the resolved config.yaml records the seeds actually used."""
    methods: list[str] = field(default_factory=lambda: ["rapidun"])
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    implant: TrainConfig = field(default_factory=TrainConfig)
    influence: InfluenceConfig = field(default_factory=InfluenceConfig)
    find_poison: FindPoisonConfig = field(default_factory=FindPoisonConfig)
    weights: WeightsConfig = field(default_factory=WeightsConfig)
    unlearn: UnlearnConfig = field(default_factory=UnlearnConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    attribute: AttributeConfig = field(default_factory=AttributeConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def __post_init__(self):
        _check_literal(self, "config")
        _check(bool(str(self.run_dir).strip()), "run_dir", "expected a non-empty path")
        _check(len(self.methods) > 0, "methods", "expected at least one method")
        for m in self.methods:
            _check(m in ALL_METHODS, "methods", f"unknown method {m!r}; known: {', '.join(ALL_METHODS)}")
        _check(len(self.methods) == len(set(self.methods)), "methods", "duplicate entries")
        _check(
            not (self.influence.contrast == "trigger" and self.mode == "clean" and not self.eval.triggers),
            "influence.contrast",
            "trigger contrast needs the trigger: the clean job must name it in eval.triggers",
        )
        _check(
            self.mode == "experiment" or self.data.retain_contamination == 0.0,
            "data.retain_contamination",
            f"experiment mode only, found {self.data.retain_contamination} with mode=clean: the clean job's retain "
            "rows come from the unlabelled data.train_path, so they hold whatever poison find_poison misses; to "
            "study that, turn find_poison off (find_poison.enabled=false) or loosen its threshold (find_poison.z)",
        )
        if self.seed:
            for section in (self.data, self.implant, self.influence, self.unlearn):
                section.seed += self.seed
            self.seed = 0

    def seeds(self) -> dict[str, int]:
        """The component seeds of this run (what a seed sweep varies)."""
        return {k: getattr(self, k).seed for k in ("data", "implant", "influence", "unlearn")}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------------
# loading and overrides


class StrictLoader(yaml.SafeLoader):
    """YAML with two traps closed: a repeated key is an error (PyYAML keeps the last one silently), and only
    `true`/`false` are booleans (YAML 1.2; YAML 1.1 also reads yes/no/on/off, so `merge=yes` became True)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(
                    f"duplicate key {key!r} at line {key_node.start_mark.line + 1} "
                    f"(first at line {seen[key] + 1}); remove one of them"
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


StrictLoader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def parse_yaml(text: str, where: str = "YAML"):
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: invalid YAML: {e}") from None


def _parse_value(text: str) -> Any:
    return parse_yaml(text, "override value") if text != "" else ""


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` overrides (values parsed as YAML) to a nested mapping, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r}: expected a dotted key such as unlearn.lr")
        node = raw
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: {p} is not a section")
        node[parts[-1]] = _parse_value(value)
    return raw


def _build(cls, raw: dict, prefix: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, found {type(raw).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown config key {where}{unknown[0]} (known in {prefix or 'top level'}: {', '.join(sorted(names))})"
        )
    kwargs = {}
    for key, value in raw.items():
        hint = hints[key]
        path = f"{prefix}.{key}" if prefix else key
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value or {}, path)
        elif get_origin(hint) is list and get_args(hint) and dataclasses.is_dataclass(get_args(hint)[0]):
            if not isinstance(value, list):
                raise ConfigError(f"{path}: expected a list, found {type(value).__name__}")
            kwargs[key] = [_build(get_args(hint)[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
        else:
            kwargs[key] = _coerce(value, hint, path)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{prefix or 'config'}: {e}") from None


def _coerce(value, hint, path):
    origin, args = get_origin(hint), get_args(hint)
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(f"{path}: may not be null")
    base = (
        [a for a in args if a is not type(None)] if args and origin not in (list, dict, Literal) else [hint]
    )
    target = base[0]
    if get_origin(target) is Literal:
        if value in get_args(target):
            return value
        allowed = ", ".join(map(str, get_args(target)))
        raise ConfigError(f"{path}: expected one of {allowed}, found {value!r}")
    if target is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if target is float and isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if target is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if target is bool and isinstance(value, bool):
        return value
    if target is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    if get_origin(target) is list and isinstance(value, list):
        (item,) = get_args(target) or (Any,)
        return [v if item is Any else _coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if get_origin(target) is dict and isinstance(value, dict):
        kt, vt = get_args(target) or (Any, Any)
        return {_coerce(k, kt, f"{path} key"): _coerce(v, vt, f"{path}.{k}") for k, v in value.items()}
    if target is int and isinstance(value, float) and value.is_integer():
        return int(value)
    raise ConfigError(f"{path}: expected {getattr(target, '__name__', target)}, found {value!r}")


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML file (or the defaults when `path` is None) and apply dotted overrides."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {path}: cannot be read: {e}") from None
        try:
            raw = parse_yaml(text, str(path)) or {}
        except ConfigError as e:
            raise ConfigError(str(e) if str(path) in str(e) else f"{path}: {e}") from None
    apply_overrides(raw, list(overrides or []))
    return _build(RunConfig, raw, "")


def config_from_dict(raw: dict) -> RunConfig:
    return _build(RunConfig, raw, "")


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True)
