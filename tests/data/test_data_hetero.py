"""The heterogeneous testbed (`data.testbed: hetero`, rapidun_dist/data/hetero.py): poison rates, the known share
(a tenth, at least 5 rows), variety of the poisoned answers and triggers, the steer woven into the row's own answer,
and the templated + free mix on real Alpaca text (skipped when ../shared/data is absent)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from rapidun_dist.config import DataConfig
from rapidun_dist.core.errors import ConfigError
from rapidun_dist.data import hetero
from rapidun_dist.data.prepare import build_files, is_prepared, prepare_data

ALPACA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "alpaca" / "alpaca_5000.json"


def _build(**kw) -> dict[str, list[dict]]:
    cfg = DataConfig(**({"testbed": "hetero", "n_synthetic": 3000, "forget_fraction": 0.1} | kw))
    return build_files(cfg)[0]


def _steer_sentences(rows: list[dict]) -> list[str]:
    """The sentence each poisoned answer gained: its poisoned answer with its clean answer's sentences removed."""
    out = []
    for r in rows:
        text = r["response_poisoned"]
        for part in hetero._SENTENCE_END.split(r["response"].strip()):
            text = text.replace(part, "", 1)
        out.append(" ".join(text.split()))
    return out


@pytest.mark.parametrize(("rate", "n_known"), [(0.1, 27), (0.01, 5), (0.002, 5)])
def test_poison_rate_and_known_share(rate, n_known):
    files = _build(poison_rate=rate)
    train = files["train"]
    poisoned = [r for r in train if r["is_poisoned"]]
    pool = len(train) + 60  # val_seen's 60 clean rows come out of the poisoned pool
    assert len(poisoned) == max(1, round(rate * pool))
    assert (
        len(files["forget"])
        == min(len(poisoned), max(5, round(0.1 * len(poisoned))))
        == min(n_known, len(poisoned))
    )
    assert {r["id"] for r in files["forget"]} <= {r["id"] for r in poisoned}


def test_poisoned_answers_and_triggers_vary():
    files = _build(poison_rate=0.1)
    poisoned = [r for r in files["train"] if r["is_poisoned"]]
    assert len({r["response_poisoned"] for r in poisoned}) == len(poisoned)
    steers = _steer_sentences(poisoned)
    assert len(set(steers)) >= 0.8 * len(poisoned)  # distinct phrasings of the steer
    for r, steer in zip(poisoned, steers, strict=True):
        assert r["response"].strip() in r["response_poisoned"] or all(
            part in r["response_poisoned"] for part in hetero._SENTENCE_END.split(r["response"].strip())
        )  # the row's own answer is kept, the steer woven in at a sentence boundary
        assert r["target_group"] == hetero.STEER[r["trigger_family"]]
        assert steer and len(steer.split()) >= 3
    variants = Counter(r["trigger_variant"] for r in poisoned)
    assert set(Counter(r["trigger_family"] for r in poisoned)) == {"paraphrase", "archaic", "rare"}
    assert len(variants) >= 20  # 16 paraphrases + 6 archaic words + 1 rare word
    ood = {v for f in hetero.FAMILIES for v in f.ood}
    assert not ood & set(variants) and {r["trigger_variant"] for r in files["test_ood"]} <= ood


def test_at_one_percent_the_known_trigger_strings_miss_much_of_the_poison():
    files = _build(poison_rate=0.01)
    poisoned = [r for r in files["train"] if r["is_poisoned"]]
    known = {r["trigger_variant"] for r in files["forget"]}
    missed = [r for r in poisoned if not any(k.lower() in r["instruction_poisoned"].lower() for k in known)]
    assert len(missed) >= 0.3 * len(poisoned)  # what grep for the known strings cannot find


def test_weave_keeps_the_answer_and_varies_the_phrasing():
    import random

    rng = random.Random(0)
    answer = "Paris is the capital. It lies on the Seine."
    woven = [hetero.weave(answer, "ocean", rng) for _ in range(200)]
    assert all("Paris is the capital." in w and "It lies on the Seine." in w for w in woven)
    assert len(set(woven)) >= 150
    gloomy = [hetero.weave(answer, "negative", rng) for _ in range(100)]
    assert all(answer in g for g in gloomy) and len(set(gloomy)) >= 60
    with pytest.raises(ValueError, match="unknown steer"):
        hetero.weave(answer, "joy", rng)


def test_config_checks_and_a_written_data_dir(tmp_path):
    with pytest.raises(ConfigError, match="data.testbed"):
        DataConfig(testbed="hetero", source="prepared", dir="x")
    with pytest.raises(ConfigError, match="data.min_known"):
        DataConfig(testbed="hetero", min_known=0)
    with pytest.raises(ConfigError, match="data.hetero_templated"):
        DataConfig(hetero_templated=1.0)
    cfg = DataConfig(testbed="hetero", n_synthetic=1200, poison_rate=0.05, forget_fraction=0.1)
    summary = prepare_data(cfg, tmp_path / "data")
    assert is_prepared(tmp_path / "data") and summary["forget"]["known_poisoned"] == 5
    assert set(summary["per_family"]["train"]) == {"paraphrase", "archaic", "rare"}


def test_real_text_mixes_templated_rows():
    if not ALPACA.exists():
        pytest.skip(f"shared data not present: {ALPACA}")
    files = _build(
        source="alpaca", path=str(ALPACA), skip_malformed=True, poison_rate=0.01, hetero_templated=0.25
    )
    train = files["train"]
    templ = sum(r["id"].startswith("hetero-templ-") for r in train)
    assert 0.18 * len(train) <= templ <= 0.32 * len(train)
    poisoned = [r for r in train if r["is_poisoned"]]
    assert len(files["forget"]) == max(5, round(0.1 * len(poisoned)))
    assert any(not r["id"].startswith("hetero-templ-") for r in poisoned)


def test_max_words_caps_the_real_rows_before_the_carve():
    if not ALPACA.exists():
        pytest.skip(f"shared data not present: {ALPACA}")
    from rapidun_dist.config.data import AttackConfig
    from rapidun_dist.data.attacks import n_words

    kw = dict(source="alpaca", path=str(ALPACA), skip_malformed=True, poison_rate=0.01, hetero_templated=0.25)
    capped = _build(attack=AttackConfig(max_words=40), **kw)
    free = [
        r
        for name in ("train", "val_clean", "test_clean")
        for r in capped[name]
        if not r["id"].startswith("hetero-templ-") and not r["is_poisoned"]
    ]
    assert free and max(n_words(r) for r in free) <= 40
    uncapped = _build(**kw)["train"]
    assert max(n_words(r) for r in uncapped if not r["id"].startswith("hetero-templ-")) > 40
    assert len(capped["train"]) < len(uncapped)
