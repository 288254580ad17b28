"""Checks that run before any stage: cross-field rules of the config, the inputs it names, and the derived numbers
a user wants to see first (steps, micro-batch per rank, feature dimension, expected feature bytes).

`rapidun validate CONFIG` prints them; `rapidun run` and every launcher call `check_run` before their first
stage, so a bad combination fails in a second, not after six methods have trained.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from rapidun_dist.config import RunConfig
from rapidun_dist.config.methods import (
    INFLUENCE_METHODS,
    RETRAIN_METHODS,
    idle_knobs,
    method_rule_errors,
    run_methods,
    uses_influence,
)
from rapidun_dist.core.errors import ConfigError
from rapidun_dist.core.logging import get_logger
from rapidun_dist.training.batches import check_divisible
from rapidun_dist.training.engine import total_steps

log = get_logger("validate")


def check_rules(cfg: RunConfig, world_size: int = 1) -> None:
    """Cross-field rules (ConfigError naming the keys)."""
    u = cfg.unlearn
    check_divisible(u.batch_size, world_size=world_size, grad_accum=u.grad_accum, section="unlearn")
    for problem in method_rule_errors(cfg):  # each method's own rules, from the registry
        raise ConfigError(f"methods: {problem}")
    if u.reweight_every:
        _check_reweighting(cfg)
    if cfg.mode == "clean":
        if not cfg.data.forget_path:
            raise ConfigError("data.forget_path: required in mode clean (the rows you know are poisoned)")
        if not cfg.model.name_or_path:
            raise ConfigError("model.name_or_path: required in mode clean (the backdoored model to clean)")
        if not cfg.data.train_path and not cfg.data.eval_path:
            raise ConfigError("data.train_path / data.eval_path: mode clean needs at least one (retain rows)")
        if not run_methods(cfg):
            raise ConfigError(f"methods: none of {cfg.methods} runs in mode clean (retrain needs labels)")
    if cfg.mode == "experiment" and cfg.data.source in ("dolly", "alpaca", "json") and cfg.data.path:
        _check_file("data.path", cfg.data.path)
    if cfg.mode == "experiment" and cfg.data.source == "prepared" and not Path(cfg.data.dir).is_dir():
        raise ConfigError(f"data.dir: no such folder: {cfg.data.dir}")
    if Path(cfg.run_dir).exists() and not Path(cfg.run_dir).is_dir():
        raise ConfigError(f"run_dir: {cfg.run_dir} exists and is not a folder")


def _check_reweighting(cfg: RunConfig) -> None:
    """unlearn.reweight_every recomputes token-wise pack features inside the unlearning run."""
    i = cfg.influence
    key = f"unlearn.reweight_every={cfg.unlearn.reweight_every}"
    if i.estimator != "tokenwise":
        raise ConfigError(
            f"{key} needs influence.estimator=tokenwise (found {i.estimator}): set one of the two"
        )
    if i.contrast != "none":
        raise ConfigError(
            f"{key} with influence.contrast={i.contrast}: the refreshes compute plain features only; "
            "set influence.contrast=none or unlearn.reweight_every=0"
        )
    if not uses_influence(cfg):
        log.warning(
            f"{key}: no method in {cfg.methods} uses influence weights ({', '.join(INFLUENCE_METHODS)}): it "
            "does nothing"
        )


def _check_file(key: str, path: str) -> None:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{key}: no such file: {path}")
    try:
        with open(p, "rb") as f:
            f.read(1)
    except OSError as e:
        raise ConfigError(f"{key}: {path} cannot be read: {e}") from None


def check_inputs(cfg: RunConfig) -> dict:
    """Read the user's files (clean mode) and check the model location; returns row counts."""
    from rapidun_dist.models.loading import check_model_location

    counts = {}
    if cfg.model.name_or_path:
        check_model_location(cfg.model.name_or_path, cfg.model.gguf_file)
    if cfg.mode == "clean":
        from rapidun_dist.data.clean import read_user_rows

        for key in ("forget_path", "train_path", "eval_path"):
            path = getattr(cfg.data, key)
            if path:
                _check_file(f"data.{key}", path)
                counts[key] = len(read_user_rows(path, f"data.{key}", prefix=key))
    return counts


def _n_layers(cfg: RunConfig) -> int | None:
    """Tracked layers L = layers x target modules (tiny model, or a local config.json); None when unknown."""
    m = cfg.model
    if m.name_or_path is None:
        layers = m.tiny.num_hidden_layers
    else:
        from rapidun_dist.models.loading import resolve_path

        conf = Path(resolve_path(m.name_or_path)) / "config.json"
        if not conf.is_file():
            return None
        layers = json.loads(conf.read_text()).get("num_hidden_layers")
    return None if layers is None else layers * len(cfg.influence.target_modules)


def _pack_sizes(cfg: RunConfig, counts: dict) -> tuple[int | None, int | None]:
    d = cfg.data
    if cfg.mode == "clean":
        n = counts.get("forget_path")
        nf = None if n is None else (n if cfg.eval.triggers else n - max(1, round(d.forget_holdout * n)))
    elif d.source == "synthetic":
        held = d.n_val + d.n_test_clean + d.n_test_seen + d.n_test_ood
        nf = max(
            1, math.floor(d.forget_fraction * math.floor(d.poison_rate * (d.n_synthetic - held) + 0.5) + 0.5)
        )
    else:
        nf = None
    return nf, (None if nf is None else d.retain_ratio * nf)


def derived(cfg: RunConfig, world_size: int = 1, counts: dict | None = None) -> dict:
    """The numbers a run will use, computed from the config (and the input row counts when known)."""
    u, inf = cfg.unlearn, cfg.influence
    nf, nr = _pack_sizes(cfg, counts or {})
    f_per_batch = u.batch_size // (1 + u.retain_per_forget)
    steps = u.max_steps or (
        None if nf is None else total_steps(math.ceil(nf / f_per_batch), u.epochs, None, rounding="ceil")
    )
    layers = _n_layers(cfg)
    k = None if layers is None else layers * inf.k_in * inf.k_out
    return {
        "mode": cfg.mode,
        "methods": run_methods(cfg),
        "dropped_methods": [m for m in cfg.methods if m not in run_methods(cfg)],
        "world_size": world_size,
        "unlearn_micro_batch_per_rank": u.batch_size // (world_size * u.grad_accum),
        "forget_rows_per_batch": f_per_batch,
        "n_forget": nf,
        "n_retain": nr,
        "unlearn_steps": steps,
        "tracked_layers": layers,
        "feature_dim_K": k,
        "feature_bytes_packs": None if k is None or nf is None else (nf + nr) * k * 4,
        "inputs": counts or {},
    }


def check_run(cfg: RunConfig, *, world_size: int = 1, stages: list[str] | None = None) -> dict:
    """Every check that can run before the first stage; returns the derived numbers. Raises ConfigError/DataError.
    The batch-per-rank rule uses `world_size` only when the stages include unlearn (a find_poison or influence
    launch may use any number of ranks)."""
    check_rules(cfg, world_size if stages is None or "unlearn" in stages else 1)
    counts = check_inputs(cfg) if stages is None or "prepare" in stages else {}
    for line in idle_knobs(cfg):  # a knob of a method that is not in the run: it does nothing
        log.warning(f"{line}: it does nothing in this run")
    dropped = [m for m in cfg.methods if m in RETRAIN_METHODS and m not in run_methods(cfg)]
    if dropped:
        log.info(f"mode clean: {', '.join(dropped)} skipped (retraining needs a labelled training set)")
    return derived(cfg, world_size, counts)
