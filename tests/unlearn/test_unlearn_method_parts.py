"""The methods' own pieces without an engine: the registry, LoReUn's whole-set weights, the saliency mask, the
per-group scaling of the published baselines, and the one fisher + ZeRO-3 rule shared with validate.py."""

from __future__ import annotations

import math

import pytest
import torch

from rapidun_dist.config import ALL_METHODS, UnlearnConfig, load_config
from rapidun_dist.config.methods import METHOD_SPECS, RETRAIN_METHODS
from rapidun_dist.core.errors import ConfigError
from rapidun_dist.unlearn.methods import (
    METHODS,
    BatchShape,
    ForgetTerms,
    build_method,
    check_zero_stage,
)
from rapidun_dist.unlearn.methods.fisher import saliency_masks
from rapidun_dist.unlearn.methods.loreun import LoReUn, loreun_weights
from rapidun_dist.validate import check_rules

SHAPE = BatchShape(size=8, n_forget=2, n_retain=6)


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(torch.seed() % (1 << 31))


def test_registry_is_one_module_per_method_and_matches_the_config():
    assert set(METHODS) | set(RETRAIN_METHODS) == set(ALL_METHODS) and not set(METHODS) & set(RETRAIN_METHODS)
    for name, cls in METHODS.items():
        assert cls.name == name and cls.__module__ == f"rapidun_dist.unlearn.methods.{name}"
        spec = METHOD_SPECS[name]  # the class carries what the registry declares, nothing of its own
        assert (cls.doc, cls.uses_influence, cls.ascent, cls.uses_retain, cls.zero3) == (
            spec.doc,
            spec.uses_influence,
            spec.ascent,
            spec.uses_retain,
            spec.zero3,
        )
    assert METHODS["self_only"].weights_subdir == "self_only" and not METHODS["fisher"].zero3


def test_a_method_class_outside_the_registry_is_refused():
    from rapidun_dist.unlearn.methods.base import Method

    with pytest.raises(TypeError, match="not in the method registry"):

        class Mystery(Method):  # noqa: F841
            name = "mystery"


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_validate_and_engine_refuse_the_same_method_zero_combinations(method, stage):
    cfg = load_config(None, [f"methods=[{method}]", f"unlearn.zero_stage={stage}"])
    try:
        check_zero_stage(method, stage)
        engine_ok = True
    except ConfigError:
        engine_ok = False
    try:
        check_rules(cfg)
        rules_ok = True
    except ConfigError as e:
        rules_ok = False
        assert "zero_stage=3" in str(e) and "zero_stage<=2" in str(e)
    assert engine_ok == rules_ok == (stage < 3 or METHODS[method].zero3)


def test_loreun_weights_are_a_softmax_over_the_whole_set_clipped_mean_one():
    gen = _gen()
    ce = torch.rand(26, generator=gen, dtype=torch.float64) * 4
    tau = 0.5 + torch.rand((), generator=gen).item()
    w = loreun_weights(ce, tau=tau)
    assert math.isclose(float(w.mean()), 1.0, rel_tol=1e-12)
    assert float(w.min()) >= 0.2 - 1e-12 and float(w.max()) <= 3.0 + 1e-12
    order = torch.argsort(ce)
    assert torch.all(w[order][:-1] >= w[order][1:] - 1e-12)  # lower loss, larger weight
    raw = 26 * torch.softmax(-ce / tau, 0)
    inside = (w > 0.2 + 1e-9) & (
        w < 3.0 - 1e-9
    )  # unclipped rows (by their final weight) keep their softmax ratios
    if int(inside.sum()) >= 2:
        i, j = torch.nonzero(inside).flatten()[:2].tolist()
        assert math.isclose(float(w[i] / w[j]), float(raw[i] / raw[j]), rel_tol=1e-9)


class _FakeCtx:
    """MethodContext stand-in: the current per-row CE of the whole forget set is scripted."""

    def __init__(self, ce):
        self.ce, self.calls = ce, 0

    def forget_nll_all(self, *, adapter=True):
        self.calls += 1
        return self.ce * 10.0, torch.full_like(self.ce, 10.0)


def test_loreun_refreshes_from_the_whole_forget_set_not_the_micro_batch():
    """Two forget rows of a micro-batch get their weights from all 26 rows' losses (the old code z-scored inside the
    micro-batch: always (1.61, 0.39) for two rows whatever the losses), and only every loreun_refresh steps."""
    gen = _gen()
    u = UnlearnConfig(loreun_refresh=3, loreun_tau=1.0)
    m = LoReUn(u, SHAPE, 26, 78)
    ctx = _FakeCtx(torch.rand(26, generator=gen, dtype=torch.float64) * 3)
    m.setup(ctx)
    torch.testing.assert_close(m.forget_w.double(), loreun_weights(ctx.ce, tau=1.0), rtol=1e-6, atol=1e-6)
    pair = [3, 17]
    assert m.forget_w[pair].tolist() != pytest.approx([1.61, 0.39], abs=1e-2)
    before, ctx.ce = m.forget_w.clone(), torch.rand(26, generator=gen, dtype=torch.float64) * 3
    for step in (1, 2):
        m.after_step(ctx, step)
    assert torch.equal(m.forget_w, before) and ctx.calls == 1
    m.after_step(ctx, 3)
    assert ctx.calls == 2 and not torch.equal(m.forget_w, before)
    fresh = LoReUn(u, SHAPE, 26, 78)
    fresh.load_state_dict(m.state_dict())
    assert torch.equal(fresh.forget_w, m.forget_w)


def test_saliency_mask_keeps_exactly_the_top_share_by_fisher_ratio():
    gen = _gen()
    shapes = [(4, 16), (16, 4), (3, 5)]
    ff = [torch.rand(s, generator=gen) ** 3 for s in shapes]
    fr = [torch.rand(s, generator=gen) ** 3 + 1e-3 for s in shapes]
    keep = 0.1 + 0.8 * torch.rand((), generator=gen).item()
    masks = saliency_masks(ff, fr, keep)
    ratio = torch.cat(
        [
            (f.double() / (r.double() + 1e-8 * float(torch.cat([x.flatten() for x in fr]).mean()))).flatten()
            for f, r in zip(ff, fr, strict=True)
        ]
    )
    k = math.ceil(keep * ratio.numel())
    flat = torch.cat([m.flatten() for m in masks])
    assert [tuple(m.shape) for m in masks] == shapes and int(flat.sum()) == k
    kept, dropped = ratio[flat.bool()], ratio[~flat.bool()]
    assert float(kept.min()) >= float(dropped.max())


def test_published_baselines_use_per_group_means_and_uniform_the_batch_mix():
    gen = _gen()
    u = UnlearnConfig(ascent_cap=100.0)
    ce = torch.rand(2, generator=gen, dtype=torch.float64) * 3 + 0.5
    nll = ce * 7
    t = ForgetTerms(index=torch.tensor([0, 1]), nll=nll, n_tokens=torch.tensor([7, 7]), ce=ce)
    uni, ga, gd = (build_method(n, u, SHAPE, 2, 6) for n in ("uniform", "ga", "graddiff"))
    torch.testing.assert_close(uni.forget_loss(t), -ce)
    torch.testing.assert_close(ga.forget_loss(t), -4.0 * ce)  # |B| / |F_B| = 8 / 2: the mean over forget rows
    torch.testing.assert_close(gd.retain_loss(ce), 8 / 6 * ce)
    assert not ga.uses_retain and not METHODS["relabel_only"].ascent
    assert torch.equal(build_method("relabel_only", u, SHAPE, 2, 6).forget_loss(t), torch.zeros_like(ce))


def test_a_method_knob_without_its_method_is_reported_and_every_knob_is_a_real_key():
    from rapidun_dist.config.methods import idle_knobs

    for spec in METHOD_SPECS.values():
        for key in spec.knobs:
            section, name = key.split(".")
            assert section == "unlearn" and hasattr(UnlearnConfig(), name), key
    cfg = load_config(
        None, ["methods=[rapidun,uniform]", "unlearn.npo_beta=0.3", "unlearn.saliency_keep=0.5"]
    )
    assert idle_knobs(cfg) == ["unlearn.npo_beta=0.3 is read only by npo, not in methods"]  # 0.5: the default
    assert idle_knobs(load_config(None, ["methods=[npo]", "unlearn.npo_beta=0.3"])) == []
