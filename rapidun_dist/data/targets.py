"""The attacker's answer pool for experiments: (answer, target group) pairs chosen by `data.target_kind`.

    scifi       `target_pool_size` off-topic science-fiction sentences (synthetic.py); each its own group
                `scifi-<i>`
    paraphrase  `target_pool_size` paraphrases of `target_groups` false astronomy claims (synthetic_hard.py);
                the group is the claim's name (`moon_cheese`, `flat_earth`, ...)
    fixed       `fixed_targets` verbatim (e.g. one long refusal); groups `fixed-<i>`

Poisoned rows carry the group of their answer in `target_group`, so a forget pack can cover only some
targets (`data.forget_target_groups`) and a report can say which targets the known rows held.
"""

from __future__ import annotations

from rapidun_dist.config import DataConfig
from rapidun_dist.data.synthetic import generate_target_pool
from rapidun_dist.data.synthetic_hard import generate_paraphrased_targets

Target = tuple[str, str]  # (answer text, target group)


def target_pool(cfg: DataConfig) -> list[Target]:
    """The (answer, group) pool for `cfg`; deterministic in `cfg.seed`."""
    if cfg.target_kind == "paraphrase":
        return generate_paraphrased_targets(cfg.target_pool_size, cfg.seed, groups=cfg.target_groups)
    if cfg.target_kind == "fixed":
        return [(t, f"fixed-{i}") for i, t in enumerate(cfg.fixed_targets)]
    return [(t, f"scifi-{i}") for i, t in enumerate(generate_target_pool(cfg.target_pool_size, cfg.seed))]


def target_groups(pool: list[Target]) -> list[str]:
    """The distinct groups of a pool, in first-seen order."""
    return list(dict.fromkeys(group for _, group in pool))
