"""Every unlearning method as a small spec for the ONE engine and loop (DESIGN section 7)."""

from __future__ import annotations

from dataclasses import dataclass

from rapidun_dist.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class MethodSpec:
    name: str
    weights: str = "uniform"  # rapidun | self_only | uniform | loreun (recomputed from current losses)
    ascent: str = "ga"  # ga (capped CE ascent) | npo
    clean_descent: bool = True  # beta_d * CE on the clean answer of forget rows
    retain_descent: bool = True
    use_retain: bool = True  # sample retain rows at all (retain_per_forget > 0)
    fisher_gate: bool = False  # mask gradients to coordinates where forget Fisher >= retain Fisher (ZeRO 0-2)


METHODS: dict[str, MethodSpec] = {
    "rapidun": MethodSpec(name="rapidun", weights="rapidun"),
    "self_only": MethodSpec(name="self_only", weights="self_only"),
    "uniform": MethodSpec(name="uniform"),
    "ga": MethodSpec(name="ga", clean_descent=False, retain_descent=False, use_retain=False),
    "graddiff": MethodSpec(name="graddiff", clean_descent=False),
    "npo": MethodSpec(name="npo", ascent="npo", clean_descent=False),
    "loreun": MethodSpec(name="loreun", weights="loreun"),
    "fisher": MethodSpec(name="fisher", fisher_gate=True),
}
TRAINING_BASELINES = ("retrain", "retrain_oracle")


def method_spec(name: str) -> MethodSpec:
    if name not in METHODS:
        raise ConfigError(
            f"method {name!r} does not run on the unlearning engine; known: {', '.join(METHODS)}"
        )
    return METHODS[name]


def loreun_weights(ce_poisoned, *, tau: float = 1.0, w_min: float = 0.2, w_max: float = 3.0):
    """LoReUn-style dynamic forget weights from the CURRENT poisoned-answer losses (detached):
    lower loss = still remembered = harder to forget = larger weight. z-scored within the batch,
    exp(-z / tau) clipped to [w_min, w_max], mean one."""
    import torch

    ce = ce_poisoned.detach().float()
    if ce.numel() < 2 or float(ce.std()) == 0.0:
        return torch.ones_like(ce)
    z = (ce - ce.mean()) / ce.std()
    w = torch.exp(
        torch.clamp(-z / tau, min=torch.log(torch.tensor(w_min)), max=torch.log(torch.tensor(w_max)))
    )
    return w / w.mean()
