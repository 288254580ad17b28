"""The stages, one module each, in pipeline order, and the rules that tie them to the run directory.

    experiment mode: prepare -> implant -> find_poison -> influence -> weights -> unlearn -> evaluate
    clean mode:      prepare ->            find_poison -> influence -> weights -> unlearn -> evaluate
    optional:        attribute (after weights; by name, or by default in the clean job without eval.triggers)

(find_poison where there is a training set to search and `find_poison.enabled`: always in experiment mode, with
`data.train_path` in clean mode).

`fingerprint` hashes the config keys a stage and its upstream stages depend on, and the upstream stages'
recorded output hashes (redoing an upstream stage invalidates everything after it). `readiness` says why a stage
cannot run yet (an upstream stage is missing, failed, done for another config, or its outputs changed on disk);
the CLI and every launcher call it before running anything.
"""

from __future__ import annotations

import hashlib
import json

from rapidun_dist.core.errors import StageError
from rapidun_dist.stages import (
    attribute,
    evaluate,
    find_poison,
    implant,
    influence,
    prepare,
    unlearn,
    weights,
)
from rapidun_dist.stages.base import Stage, StageContext

ORDER: tuple[Stage, ...] = (
    prepare.STAGE,
    implant.STAGE,
    find_poison.STAGE,
    influence.STAGE,
    weights.STAGE,
    attribute.STAGE,
    unlearn.STAGE,
    evaluate.STAGE,
)
STAGES: dict[str, Stage] = {s.name: s for s in ORDER}
STAGE_NAMES: tuple[str, ...] = tuple(STAGES)


def get_stage(name: str) -> Stage:
    if name not in STAGES:
        raise StageError(f"unknown stage {name!r}; stages: {', '.join(STAGE_NAMES)}")
    return STAGES[name]


def pipeline_stages(mode: str, cfg_dict: dict | None = None) -> list[Stage]:
    """The stages of a run in `mode` ("experiment" | "clean"), in order; with the config (as a dict) only those
    that apply to it (`Stage.applies`)."""
    return [
        s for s in ORDER if mode in s.modes and (cfg_dict is None or s.applies is None or s.applies(cfg_dict))
    ]


def default_stages(cfg) -> list[Stage]:
    """The stages `rapidun run` runs without --stages: the mode's, optional ones only when they apply."""
    cfg_dict = cfg.to_dict()
    return [s for s in pipeline_stages(cfg.mode, cfg_dict) if s.when is None or s.when(cfg_dict)]


_ABSENT = object()  # a key the config dict does not hold (made before the key existed)


def _lookup(cfg_dict: dict, dotted: str, default=None):
    node = cfg_dict
    for part in dotted.split("."):
        node = node.get(part, default) if isinstance(node, dict) else default
    return node


# Config keys added after run directories were made, with the value that behaves as before they existed. A key at
# that value is left out of every fingerprint, so adding it does not make existing runs stale (a run directory made
# before the key resumes, and its completed stages are not redone); any other value changes the fingerprint.
FINGERPRINT_NEUTRAL: dict[str, object] = {
    "influence.decision_tokens": 2,  # only read with influence.positions=decision
    "data.family_shares": [],  # equal shares, as before the key
    "data.reference_rows": 0,  # find_poison's reference = the retain pack, as before the key
    "find_poison.candidates_margin": 0.0,  # stage 1 keeps find_poison.candidates, as before the key
}


def _hashed(key: str, value):
    """`value` of config key `key` as fingerprints hash it: FINGERPRINT_NEUTRAL keys at their neutral value dropped."""
    if not isinstance(value, dict):
        return value
    return {
        k: _hashed(f"{key}.{k}", v)
        for k, v in value.items()
        if not (f"{key}.{k}" in FINGERPRINT_NEUTRAL and v == FINGERPRINT_NEUTRAL[f"{key}.{k}"])
    }


def fingerprint(stage: str, cfg_dict: dict, manifest_stages: dict) -> str:
    """Hash of the config keys of `stage` and of every earlier stage of the run's mode, and of the earlier
    stages' recorded outputs."""
    mode = cfg_dict.get("mode", "experiment")
    names = [s.name for s in pipeline_stages(mode, cfg_dict)]
    if stage not in names:
        raise StageError(
            f"stage {stage!r} is not part of a {mode!r} run with this config (its stages: {', '.join(names)})"
        )
    h = hashlib.sha256(json.dumps({"mode": mode}).encode())
    for name in names[: names.index(stage) + 1]:
        if name != stage and STAGES[name].when is not None and not STAGES[name].when(cfg_dict):
            continue  # an optional stage later stages do not read in this config: neither its keys nor outputs
        for key in STAGES[name].config_keys:
            value = _lookup(cfg_dict, key, _ABSENT)
            if key in FINGERPRINT_NEUTRAL and (value is _ABSENT or value == FINGERPRINT_NEUTRAL[key]):
                continue
            value = None if value is _ABSENT else value
            h.update(json.dumps({key: _hashed(key, value)}, sort_keys=True, default=str).encode())
        if name != stage and name in manifest_stages:
            h.update(json.dumps(manifest_stages[name].get("outputs", {}), sort_keys=True).encode())
    return h.hexdigest()[:16]


def stage_context(cfg, rd, stage: str, *, world_size: int = 1, rank: int = 0) -> StageContext:
    """The context the driver runs `stage` with: its fingerprint read once from the run directory's manifest."""
    done = rd.manifest()["stages"]
    return StageContext(
        cfg=cfg,
        rd=rd,
        stage=stage,
        fingerprint=fingerprint(stage, cfg.to_dict(), done),
        rekey=lambda cfg_dict: fingerprint(stage, cfg_dict, done),
        world_size=world_size,
        rank=rank,
    )


def readiness(cfg, rd, stage: str) -> str | None:
    """Why `stage` cannot run in `rd` for `cfg` (None when every upstream stage it needs is done and current)."""
    st = get_stage(stage)
    if cfg.mode not in st.modes:
        return f"stage {stage!r} does not run in mode {cfg.mode!r}"
    cfg_dict = cfg.to_dict()
    if st.applies is not None and not st.applies(cfg_dict):
        return f"stage {stage!r} does not apply to this config: {st.doc}"
    present = {s.name for s in pipeline_stages(cfg.mode, cfg_dict)}
    for up in (u for u in st.upstream(cfg) if u in present):
        rec = rd.record(up)
        if rec is None:
            return f"{rd.root}: stage {up!r} has not run (needed by {stage!r}); run `rapidun run CONFIG --stages {up}`"
        if rec.get("status") != "done":
            return f"{rd.root}: stage {up!r} is {rec.get('status')!r} (needed by {stage!r}): {rec.get('error', '')}"
        if not rd.is_done(up, fingerprint(up, cfg_dict, rd.manifest()["stages"])):
            return (
                f"{rd.root}: stage {up!r} was done for another config or its outputs changed on disk (needed by "
                f"{stage!r}); rerun it with this config: `rapidun run CONFIG --stages {up}`"
            )
    return None


def check_ready(cfg, rd, stage: str) -> None:
    """Raise StageError when `stage` cannot run yet (see `readiness`)."""
    problem = readiness(cfg, rd, stage)
    if problem:
        raise StageError(problem)
