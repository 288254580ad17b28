"""Typed, validated run configuration.

A YAML file maps onto `RunConfig`; every section is a keyword-only dataclass validated in
`__post_init__`. Dotted overrides (`unlearn.lr=1e-4`, `methods=[rapidun,ga]`) are applied to the
raw mapping before validation, so an unknown key is an error naming its full dotted path.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from rapidun_dist.errors import ConfigError

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ALL_METHODS = (
    "rapidun",
    "uniform",
    "self_only",
    "ga",
    "graddiff",
    "npo",
    "fisher",
    "loreun",
    "retrain",
    "retrain_oracle",
)


def _check(cond: bool, field_name: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{field_name}: {msg}")


@dataclass(kw_only=True)
class TriggerFamily:
    """A backdoor trigger family: seen variants (poison train + test_seen) and OOD variants (test_ood only)."""

    name: str
    mode: str  # prefix | suffix | random
    seen: list[str]
    ood: list[str]

    def __post_init__(self):
        _check(
            self.mode in ("prefix", "suffix", "random"),
            f"triggers.{self.name}.mode",
            f"expected prefix|suffix|random, found {self.mode!r}",
        )
        _check(len(self.seen) > 0, f"triggers.{self.name}.seen", "needs at least one variant")


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
    source: str = "synthetic"  # synthetic | dolly | alpaca | json | hub | prepared
    path: str | None = None  # file for dolly/alpaca/json, hub id for hub
    dir: str | None = None  # folder for source=prepared
    field_map: dict[str, str] = field(default_factory=dict)  # our field -> file field (json source)
    skip_malformed: bool = False
    max_rows: int | None = None
    n_synthetic: int = 3000  # synthetic corpus size (train + all test splits)
    poison_rate: float = 0.10
    n_val: int = 100
    n_test_clean: int = 100
    n_test_seen: int = 60
    n_test_ood: int = 60
    forget_fraction: float = 0.05
    retain_ratio: int = 3
    triggers: list[TriggerFamily] = field(default_factory=default_trigger_families)
    target_pool_size: int = 8
    seed: int = 0

    def __post_init__(self):
        self.triggers = [t if isinstance(t, TriggerFamily) else TriggerFamily(**t) for t in self.triggers]
        _check(
            self.source in ("synthetic", "dolly", "alpaca", "json", "hub", "prepared"),
            "data.source",
            f"expected synthetic|dolly|alpaca|json|hub|prepared, found {self.source!r}",
        )
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
        for name in ("n_val", "n_test_clean", "n_test_seen", "n_test_ood", "n_synthetic"):
            _check(getattr(self, name) >= 1, f"data.{name}", f"expected >= 1, found {getattr(self, name)}")


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
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    gradient_checkpointing: bool = False

    def __post_init__(self):
        if isinstance(self.tiny, dict):
            self.tiny = TinyModelConfig(**self.tiny)
        _check(
            self.dtype in ("auto", "float32", "bfloat16", "float16"), "model.dtype", f"found {self.dtype!r}"
        )
        _check(self.max_length >= 16, "model.max_length", f"expected >= 16, found {self.max_length}")


@dataclass(kw_only=True)
class TrainConfig:
    """Full fine-tuning recipe used by `implant` and by the `retrain` baselines."""

    epochs: float = 3.0
    lr: float = 3e-3
    batch_size: int = 32
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    max_steps: int | None = None
    seed: int = 0

    def __post_init__(self):
        _check(self.epochs > 0, "implant.epochs", f"expected > 0, found {self.epochs}")
        _check(self.lr > 0, "implant.lr", f"expected > 0, found {self.lr}")
        _check(self.batch_size >= 1, "implant.batch_size", f"expected >= 1, found {self.batch_size}")


TokenPositions = Literal["answer", "prompt", "all"]


@dataclass(kw_only=True)
class InfluenceConfig:
    estimator: str = "tokenwise"  # tokenwise | rapidgrad
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
    backend: str = "auto"  # kernel backend: auto | triton | torch
    positions: TokenPositions = "answer"
    """Tokens whose g_t (of the summed answer loss) enter token-wise features: answer | prompt | all tokens."""

    def __post_init__(self):
        _check(
            self.estimator in ("tokenwise", "rapidgrad"), "influence.estimator", f"found {self.estimator!r}"
        )
        _check(
            self.positions in get_args(TokenPositions),
            "influence.positions",
            f"expected answer|prompt|all, found {self.positions!r}",
        )
        _check(self.k_in >= 1 and self.k_out >= 1, "influence.k_in/k_out", "must be >= 1")
        _check(len(self.target_modules) > 0, "influence.target_modules", "needs at least one module name")
        _check(self.backend in ("auto", "triton", "torch"), "influence.backend", f"found {self.backend!r}")


@dataclass(kw_only=True)
class WeightsConfig:
    agg: str = "mean"  # mean | trimmed_mean | median_topk
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

    def __post_init__(self):
        _check(self.agg in ("mean", "trimmed_mean", "median_topk"), "weights.agg", f"found {self.agg!r}")
        _check(0.0 <= self.trim < 0.5, "weights.trim", f"expected in [0, 0.5), found {self.trim}")
        _check(self.tau_f > 0 and self.tau_r > 0, "weights.tau_f/tau_r", "must be > 0")
        _check(
            0 < self.w_min <= 1.0 <= self.w_max,
            "weights.w_min/w_max",
            f"need 0 < w_min <= 1 <= w_max, found {self.w_min}, {self.w_max}",
        )
        _check(self.topk >= 1, "weights.topk", f"expected >= 1, found {self.topk}")


@dataclass(kw_only=True)
class UnlearnConfig:
    lora_r: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(PROJECTIONS))
    lr: float = 6e-5
    epochs: float = 2.0
    max_steps: int | None = None
    batch_size: int = 8  # global batch (samples) per optimizer step
    grad_accum: int = 1
    retain_per_forget: int = 3
    alpha_a: float = 1.0  # ascent weight on poisoned answers
    beta_d: float = 0.5  # descent weight on clean answers of forget rows
    ascent_cap: float = 10.0  # poisoned CE above this contributes no more gradient
    stop_forget_ce: float | None = None  # stop once the forget-set poisoned CE passes this
    npo_beta: float = 0.1
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    clip_grad: float = 1.0
    zero_stage: int = 0
    eval_every: int = 0  # 0 = only at the end; N = ASR curve every N steps
    save_every: int = 0
    merge: bool = False
    seed: int = 0

    def __post_init__(self):
        _check(
            self.zero_stage in (0, 1, 2, 3), "unlearn.zero_stage", f"expected 0-3, found {self.zero_stage}"
        )
        _check(self.lora_r >= 1, "unlearn.lora_r", f"expected >= 1, found {self.lora_r}")
        _check(0.0 <= self.lora_dropout < 1.0, "unlearn.lora_dropout", f"found {self.lora_dropout}")
        _check(self.lr > 0, "unlearn.lr", f"expected > 0, found {self.lr}")
        _check(self.batch_size >= 1 and self.grad_accum >= 1, "unlearn.batch_size/grad_accum", "must be >= 1")
        _check(self.ascent_cap > 0, "unlearn.ascent_cap", f"expected > 0, found {self.ascent_cap}")
        _check(self.retain_per_forget >= 0, "unlearn.retain_per_forget", "must be >= 0")


@dataclass(kw_only=True)
class EvalConfig:
    max_new_tokens: int = 24
    batch_size: int = 32
    judge_min_words: int = 3  # vocabulary hits needed to call a response attacked
    judge_vocab_size: int = 60
    judge_z: float = 3.0
    retrieval_rows: int = 400  # train rows scored for poison-retrieval AUROC/AP (0 = skip)

    def __post_init__(self):
        _check(self.max_new_tokens >= 1, "eval.max_new_tokens", "must be >= 1")
        _check(self.judge_min_words >= 1, "eval.judge_min_words", "must be >= 1")


@dataclass(kw_only=True)
class RunConfig:
    run_dir: str = "runs/default"
    seed: int = 0
    methods: list[str] = field(default_factory=lambda: ["rapidun"])
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    implant: TrainConfig = field(default_factory=TrainConfig)
    influence: InfluenceConfig = field(default_factory=InfluenceConfig)
    weights: WeightsConfig = field(default_factory=WeightsConfig)
    unlearn: UnlearnConfig = field(default_factory=UnlearnConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self):
        for m in self.methods:
            _check(m in ALL_METHODS, "methods", f"unknown method {m!r}; known: {', '.join(ALL_METHODS)}")
        _check(len(self.methods) == len(set(self.methods)), "methods", "duplicate entries")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------------
# loading and overrides


def _parse_value(text: str) -> Any:
    return yaml.safe_load(text) if text != "" else ""


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` overrides (values parsed as YAML) to a nested mapping, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
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
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: expected one of {'|'.join(map(str, args))}, found {value!r}")
        return value
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(f"{path}: may not be null")
    base = (
        [a for a in args if a is not type(None)]
        if args and origin is not list and origin is not dict
        else [hint]
    )
    target = base[0]
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
        return list(value)
    if get_origin(target) is dict and isinstance(value, dict):
        return dict(value)
    if target is int and isinstance(value, float) and value.is_integer():
        return int(value)
    raise ConfigError(f"{path}: expected {getattr(target, '__name__', target)}, found {value!r}")


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML file (or the defaults when `path` is None) and apply dotted overrides."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from None
    apply_overrides(raw, list(overrides or []))
    return _build(RunConfig, raw, "")


def config_from_dict(raw: dict) -> RunConfig:
    return _build(RunConfig, raw, "")


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True)
