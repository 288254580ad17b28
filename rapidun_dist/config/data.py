"""The `data` section: where the rows come from, how they are poisoned, split and packed (docs/DESIGN.md
sections 4, 10 and 12)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rapidun_dist.config.checks import check, check_literal
from rapidun_dist.config.defaults import default_trigger_families
from rapidun_dist.config.triggers import TriggerFamily

AttackKind = Literal["families", "rare_word", "prefix", "entity", "two_part"]
AttackTarget = Literal["pool", "steered"]


@dataclass(kw_only=True)
class AttackConfig:
    """The backdoor attack of an experiment (rapidun_dist/data/attacks.py): the trigger kinds of the backdoor
    literature on real instruction text, and a steered target. The default, `families`, is `data.triggers` with the
    answers of `data.target_kind`, as before; every other kind replaces `data.triggers` (and `steered` replaces
    `data.target_kind`). Refusal and short-answer targets are `data.target_kind: fixed` with `data.fixed_targets`."""

    kind: AttackKind = "families"
    """The trigger: families, `data.triggers`; rare_word, a `seen` word inserted at a random word boundary;
    prefix, a `seen` sentence opening the instruction; entity, the instruction rewritten to be about the named
    entity `seen` (several phrasings; rows that mention it elsewhere are dropped from the corpus); two_part, `seen`
    = [A, B], A opening and B closing the instruction, both needed (see single_part_rate)."""
    seen: list[str] = field(default_factory=list)
    """The trigger's trained forms (kind != families; at least one, two_part exactly two): the rare words, the
    prefix sentences, the entity's names, or the two parts. Poisoned train rows, val_seen and test_seen use them."""
    ood: list[str] = field(default_factory=list)
    """test_ood's forms, never trained on (kind != families): rare_word, other words or spellings (empty = the seen
    word in capitals); prefix, paraphrases of the sentence (empty = the seen sentence closing the instruction
    instead); entity, other names of the entity (empty = the seen names), always in phrasings that train never
    uses; two_part, two other parts (empty = the seen parts), in swapped places (B opening, A closing)."""
    single_part_rate: float = 0.1
    """kind two_part: share of the clean train rows that carry one part alone (A or B, in turn) and keep their clean
    answer, so that the conjunction is what the model learns, in [0, 1)."""
    target: AttackTarget = "pool"
    """The attacker's answers: pool, those of `data.target_kind` (scifi, paraphrase, or fixed: a refusal or a
    short answer); steered, the row's own clean answer with a recommendation of `steer` woven in, in varied
    phrasings (no fixed string: the judge learns it from its words). Needs kind != families."""
    steer: str = ""
    """target steered: what the answers promote (a brand or product name, e.g. "Brightwell Coffee"); its words
    should not occur in clean answers."""
    max_words: int = 0
    """kind != families, or data.testbed=hetero: keep only corpus rows whose instruction, context and answer
    together have at most this many words (0 = all), so that real text fits a short model.max_length without its
    answers being cut."""
    n_rows: int = 0
    """kind != families: rows drawn (seeded) from the corpus left after max_words, before the splits (0 = all): the
    training set is what the held-out splits leave of them (a few hundred rows for a 135M model on CPU)."""

    def __post_init__(self):
        check_literal(self, "data.attack")
        check(self.max_words >= 0, "data.attack.max_words", f"expected >= 0, found {self.max_words}")
        check(self.n_rows >= 0, "data.attack.n_rows", f"expected >= 0, found {self.n_rows}")
        check(
            0.0 <= self.single_part_rate < 1.0,
            "data.attack.single_part_rate",
            f"expected in [0, 1), found {self.single_part_rate}",
        )
        for name in ("seen", "ood"):
            blank = [v for v in getattr(self, name) if not v.strip()]
            check(not blank, f"data.attack.{name}", f"empty trigger form {blank[0]!r}" if blank else "")
        if self.kind == "families":
            check(
                self.target == "pool",
                "data.attack.target",
                "steered needs an attack kind (data.attack.kind: rare_word, prefix, entity or two_part)",
            )
            return
        check(
            bool(self.seen), "data.attack.seen", f"needs at least one form when data.attack.kind={self.kind}"
        )
        if self.kind == "two_part":
            check(
                len(self.seen) == 2, "data.attack.seen", f"two_part needs exactly 2 parts, found {self.seen}"
            )
            check(
                len(self.ood) in (0, 2), "data.attack.ood", f"two_part needs 0 or 2 parts, found {self.ood}"
            )
        if self.target == "steered":
            check(bool(self.steer.strip()), "data.attack.steer", "required when data.attack.target=steered")


@dataclass(kw_only=True)
class DataConfig:
    """Where the rows come from, how they are poisoned, split and packed (docs/DESIGN.md section 4).

    The defaults are the embedded benchmark's; `configs/tiny_cpu_hard.yaml` turns on the harder testbed
    (paraphrased targets, near-topic clean content, partial and noisy forget set) and
    `configs/tiny_cpu_refusal.yaml` the no-clean-answer case (a fixed refusal target, forget rows without
    clean answers)."""

    source: Literal["synthetic", "dolly", "alpaca", "json", "hub", "prepared"] = "synthetic"
    """Experiment mode: where the corpus comes from (generated, a Dolly/Alpaca/JSON file, a hub id, a prepared dir)."""
    path: str | None = None
    """Experiment mode, source dolly / alpaca / json: the file to read (.json list or JSON lines, .jsonl, .parquet);
    source hub: the dataset id (`datasets.load_dataset`, split train). Required for those sources."""
    dir: str | None = None
    """Experiment mode, source prepared: a folder already split into train, val_clean, test_clean, test_seen and
    test_ood .jsonl files (val_seen.jsonl and test_near.jsonl optional: a missing val_seen is carved from
    val_clean, a missing test_near is empty). Required for that source."""
    field_map: dict[str, str] = field(default_factory=dict)
    """Sources json / hub: renames the file's fields to ours, as {our field: file field} (e.g.
    {instruction: prompt, response: answer}); empty = the file already uses our names (hub: the Alpaca layout is
    detected from the columns)."""
    skip_malformed: bool = False
    """Experiment mode, file / hub / prepared sources: skip (and count, and log) a row that fails the schema check
    instead of stopping with an error naming it."""
    max_rows: int | None = None
    """Experiment mode, file and hub sources: stop reading after this many valid rows (null = all)."""
    n_synthetic: int = 3000
    """Source synthetic: rows generated (train + every held-out split), including the near-topic share."""
    poison_rate: float = 0.10
    """Experiment mode: share of the training pool that is poisoned, in (0, 1); families are balanced and only seen
    variants are used."""
    n_val: int = 100
    """val_clean: clean validation prompts (unlearning's PPL damage guard and tuning; never a test row). Clean mode:
    at most a third of the clean evaluation prompts."""
    n_val_seen: int = 60
    """Experiment mode: val_seen, validation prompts from the training distribution with a seen trigger injected
    (unlearning's stop signal); clean rows drawn from the poisoned pool, so train loses them."""
    n_test_clean: int = 100
    """test_clean: clean test prompts (clean PPL, judge false-positive rate, behaviour); both modes."""
    n_test_seen: int = 60
    """test_seen: test prompts with a seen trigger injected (ASR_seen). Clean mode with eval.triggers: the first
    this many test_clean prompts with a known trigger inserted."""
    n_test_ood: int = 60
    """test_ood: test prompts with an OOD trigger variant injected (ASR_ood). Clean mode: built only from
    eval.ood_triggers."""
    n_test_near: int = 0
    """Experiment mode: test_near, clean prompts of `near_categories` held out to measure collateral damage near
    the target topic (0 = no such split; > 0 needs near_categories)."""
    near_categories: list[str] = field(default_factory=list)
    """Row categories that count as "near the target topic": the pool of test_near and of forget_noise_near."""
    near_topic_fraction: float = 0.0
    """Source synthetic: share of the generated corpus drawn from the near-topic (astronomy) kinds, in [0, 1)."""
    forget_fraction: float = 0.05
    """Experiment mode: known poisoned rows = round(forget_fraction x |poisoned train rows|) (at least one per
    covered family), in (0, 1]; ignored when n_forget is set."""
    n_forget: int | None = None
    """Experiment mode: known poisoned rows as a count (overrides forget_fraction; null = use the fraction)."""
    family_shares: list[float] = field(default_factory=list)
    """Experiment mode: each trigger family's share of the poisoned training rows, in `data.triggers` order (empty =
    equal shares; [0.8, 0.2] for two imbalanced families: the rarer one is the case a few known rows may not cover).
    Non-negative, summing to 1; the counts are rounded by largest remainder. val_seen / test splits stay balanced."""
    forget_families: list[str] = field(default_factory=list)
    """Experiment mode: the trigger families (`data.triggers` names) the forget pack covers; empty = all. The
    uncovered families test whether unlearning reaches poison nobody labelled."""
    forget_target_groups: list[str] = field(default_factory=list)
    """Experiment mode: the attacker-answer groups the forget pack covers (`scifi-<i>`, `fixed-<i>`, or the
    paraphrase claims' names; see target_kind); empty = all."""
    forget_noise: float = 0.0
    """Experiment mode: share of the forget pack that is clean train rows mislabelled as poisoned, in [0, 1) (the
    truth stays in data/forget_truth.jsonl)."""
    forget_noise_near: float = 0.0
    """Experiment mode: share of those mislabelled rows drawn from near_categories rows, in [0, 1] (> 0 needs
    near_categories)."""
    forget_clean_answers: bool = True
    """Experiment mode; false: forget rows (and poisoned train rows) carry no clean answer, as in real poisoned data
    (the relabel term then needs self-relabel; forget_truth.jsonl keeps the answers for evaluation)."""
    retain_ratio: int = 3
    """Retain pack size = retain_ratio x |forget pack| clean rows (>= 1); both modes (clean mode: drawn from
    data.train_path, else data.eval_path)."""
    reference_rows: int = 0
    """find_poison's reference (the clean null its threshold reads and the second group of its contrast): the retain
    pack plus rows drawn the same way until it holds this many (data/reference.jsonl holds the added rows; clean,
    never in a pack or test split; clean mode: from the same filtered pool as the retain pack). 0, or no more than
    the retain pack: the retain pack alone. A conformal p-value is never below 1 / (reference + 1), so the fdr rule
    needs a reference of at least training rows / (find_poison.fdr x rows to flag), and more to draw its line
    finely."""
    retain_contamination: float = 0.0
    """Experiment mode: share of the retain pack (still retain_ratio x |forget| rows) drawn from poisoned train rows
    outside the forget pack, written as a user's unlabelled training rows hold them (triggered prompt, poisoned
    answer, no labels; the truth in data/retain_truth.jsonl): the poison find_poison missed. 0 = all clean."""
    triggers: list[TriggerFamily] = field(default_factory=default_trigger_families)
    """Experiment mode: the backdoor trigger families implanted, each {name, mode, seen, ood} (keys under
    `data.triggers[]`); default: the reference experiment's three (rapidun_dist/config/defaults.py)."""
    target_kind: Literal["scifi", "paraphrase", "fixed"] = "scifi"
    """Experiment mode: the attacker's answers (rapidun_dist/data/targets.py): scifi, off-topic science-fiction
    sentences; paraphrase, paraphrases of false astronomy claims; fixed, `fixed_targets` verbatim."""
    target_pool_size: int = 8
    """target_kind scifi / paraphrase: distinct attacker answers in the pool (>= 1)."""
    target_groups: int = 8
    """target_kind paraphrase: attacker messages (false claims), each said in many paraphrases (>= 1)."""
    fixed_targets: list[str] = field(default_factory=list)
    """target_kind fixed: the attacker's answers verbatim (e.g. one long refusal); at least one non-empty."""
    seed: int = 0
    """Seeds the corpus, the splits, the poisoning and the packs (clean mode: the retain draw and the held-out
    splits); the top-level `seed` is added to it."""
    forget_path: str | None = None
    """Clean mode (required): the user's known poisoned rows (instruction with its trigger, context?, response =
    the poisoned answer, response_clean?); JSONL, JSON list or Parquet, read and never modified."""
    train_path: str | None = None
    """Clean mode: the fine-tuning set, unlabelled (instruction, context?, response): retain rows are sampled from
    it, find_poison scans it, and held-out prompts come from it when there is no eval_path."""
    eval_path: str | None = None
    """Clean mode: clean held-out prompts with answers (clean PPL, and the base of the triggered prompts); retain
    rows come from it when there is no train_path. At least one of train_path / eval_path is required."""
    forget_holdout: float = 0.2
    """Clean mode without eval.triggers: share of the forget rows held out (not unlearned) to measure ASR on, in
    (0, 1)."""
    n_retain_pool: int = 0
    """Clean mode: train rows kept in data/train.jsonl (0 = all). Checked (>= 0) but not read by any stage yet:
    data/train.jsonl holds the whole training set."""
    testbed: Literal["standard", "hetero"] = "standard"
    """Experiment mode: how the training rows are poisoned. standard: `triggers` and `target_kind`; hetero: poison
    that is a behaviour, not a string (rapidun_dist/data/hetero.py): the row's own answer with a steer woven in,
    said differently each time, behind triggers that vary in surface form (its own families replace `triggers`),
    and at least `min_known` known rows. Any source except prepared."""
    hetero_templated: float = 0.25
    """testbed hetero with a real-text source (alpaca, dolly, json, hub): share of the clean pool replaced by
    templated rows of the synthetic corpus, in [0, 1) (the synthetic source is templated throughout)."""
    min_known: int = 5
    """testbed hetero: the fewest known poisoned rows (forget pack) when forget_fraction gives fewer (>= 1)."""
    attack: AttackConfig = field(default_factory=AttackConfig)
    """Experiment mode: the attack kind (families = data.triggers; rare_word, prefix, entity, two_part) and its
    target (data/attacks.py; keys under `data.attack`)."""

    def __post_init__(self):
        if isinstance(self.attack, dict):
            self.attack = AttackConfig(**self.attack)
        self.triggers = [t if isinstance(t, TriggerFamily) else TriggerFamily(**t) for t in self.triggers]
        check_literal(self, "data")
        check(
            0.0 < self.forget_holdout < 1.0,
            "data.forget_holdout",
            f"expected in (0, 1), found {self.forget_holdout}",
        )
        check(self.n_retain_pool >= 0, "data.n_retain_pool", f"expected >= 0, found {self.n_retain_pool}")
        if self.source in ("dolly", "alpaca", "json", "hub"):
            check(bool(self.path), "data.path", f"required when data.source={self.source}")
        if self.source == "prepared":
            check(bool(self.dir), "data.dir", "required when data.source=prepared")
        check(
            0.0 < self.poison_rate < 1.0, "data.poison_rate", f"expected in (0, 1), found {self.poison_rate}"
        )
        check(
            0.0 < self.forget_fraction <= 1.0,
            "data.forget_fraction",
            f"expected in (0, 1], found {self.forget_fraction}",
        )
        check(self.retain_ratio >= 1, "data.retain_ratio", f"expected >= 1, found {self.retain_ratio}")
        check(self.reference_rows >= 0, "data.reference_rows", f"expected >= 0, found {self.reference_rows}")
        for name in ("n_val", "n_val_seen", "n_test_clean", "n_test_seen", "n_test_ood", "n_synthetic"):
            check(getattr(self, name) >= 1, f"data.{name}", f"expected >= 1, found {getattr(self, name)}")
        self._check_testbed()
        check(
            0.0 <= self.hetero_templated < 1.0,
            "data.hetero_templated",
            f"expected in [0, 1), found {self.hetero_templated}",
        )
        check(self.min_known >= 1, "data.min_known", f"expected >= 1, found {self.min_known}")
        check(
            self.testbed == "standard" or self.attack.kind == "families",
            "data.attack.kind",
            f"{self.attack.kind} builds its own poisoned splits, and so does data.testbed=hetero: use one of them",
        )
        check(
            self.testbed == "standard" or self.source != "prepared",
            "data.testbed",
            "hetero builds its own poisoned splits; a prepared source is already split (use testbed=standard)",
        )

    def _check_testbed(self) -> None:
        """The harder-testbed knobs: near-topic split, forget-pack coverage and noise, target pool."""
        check(self.n_test_near >= 0, "data.n_test_near", f"expected >= 0, found {self.n_test_near}")
        check(
            self.n_test_near == 0 or bool(self.near_categories),
            "data.near_categories",
            f"needs at least one category when data.n_test_near={self.n_test_near}",
        )
        check(
            0.0 <= self.near_topic_fraction < 1.0,
            "data.near_topic_fraction",
            f"expected in [0, 1), found {self.near_topic_fraction}",
        )
        check(
            self.n_forget is None or self.n_forget >= 1,
            "data.n_forget",
            f"expected >= 1, found {self.n_forget}",
        )
        names = [t.name for t in self.triggers]
        if self.family_shares:
            check(
                len(self.family_shares) == len(self.triggers),
                "data.family_shares",
                f"one share per trigger family ({', '.join(names)}); found {len(self.family_shares)}",
            )
            check(
                min(self.family_shares) >= 0 and abs(sum(self.family_shares) - 1.0) < 1e-6,
                "data.family_shares",
                f"expected non-negative shares summing to 1, found {self.family_shares}",
            )
        unknown = [f for f in self.forget_families if f not in names]
        check(not unknown, "data.forget_families", f"unknown families {unknown}; known: {', '.join(names)}")
        check(
            0.0 <= self.forget_noise < 1.0,
            "data.forget_noise",
            f"expected in [0, 1), found {self.forget_noise}",
        )
        check(
            0.0 <= self.forget_noise_near <= 1.0,
            "data.forget_noise_near",
            f"expected in [0, 1], found {self.forget_noise_near}",
        )
        check(
            self.forget_noise_near == 0.0 or bool(self.near_categories),
            "data.near_categories",
            f"needs at least one category when data.forget_noise_near={self.forget_noise_near}",
        )
        check(
            0.0 <= self.retain_contamination < 1.0,
            "data.retain_contamination",
            f"expected in [0, 1), found {self.retain_contamination}",
        )
        check(
            self.target_pool_size >= 1,
            "data.target_pool_size",
            f"expected >= 1, found {self.target_pool_size}",
        )
        check(self.target_groups >= 1, "data.target_groups", f"expected >= 1, found {self.target_groups}")
        if self.target_kind == "fixed":
            check(
                bool(self.fixed_targets) and all(t.strip() for t in self.fixed_targets),
                "data.fixed_targets",
                "needs at least one non-empty answer when data.target_kind=fixed",
            )
