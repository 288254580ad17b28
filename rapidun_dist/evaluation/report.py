"""The evaluation report: report.json (machine), report.md (a person) and PNG plots, in `run/eval/`.

Inputs the evaluate stage puts into the report dict (everything but `before`/`methods` is optional):

    {"mode": "experiment" | "clean",
     "asr_source": "test_seen/test_ood (experiment)" | "prompts built from eval.triggers" | ...,
     "config": {"run_dir", "methods", "seed", ...},
     "before":  ENTRY,                                     (the model before unlearning)
     "methods": {"<method>": ENTRY},
     "retrain": ENTRY, "retrain_oracle": ENTRY,            (baselines; may also sit under "methods")
     "judge": Judge.to_dict() | {"fit": "grouped" | "words",   (vocab, z_scores, targets, min_words, z, ...;
               "reference": judge.reference_rates(...)},      the judge on the reference answers)
     "retrieval": {"auroc", "ap"} | {"<scores>": {"auroc", "ap"}},
     "find_poison": suspects/summary.json,                 (scalars, and {"<scorer>": {metric: value}} tables)
     "triggers": [{"text", "mode", "score", "insert_asr", "remove_asr"}, ...],   (attribution, best first)
     "protocol": {"label": "relabel on", "seed": 0, ...}, (read by compare.py)
     "stage_seconds": {stage: wall seconds}, "stage_overhead_seconds": {stage: {"imports" | "report": s}}}

    ENTRY = {"asr_seen", "asr_ood", "clean_ppl", "judge_fpr",          (fractions; PPL a float; None = missing)
             "n_seen", "n_ood", "n_clean",                             (sample sizes of those numbers)
             "answered_seen", "answered_ood", "other_seen", "other_ood", (shares of the triggered prompts with a
             "n_scored_seen", "n_scored_ood",                           known clean answer: answered, neither
                                                                        target nor answer; n_scored 0 = unscored)
             "answered_clean", "other_clean", "n_scored_clean",        (the same shares on clean prompts)
             "clean_f1", "clean_rougeL",                               (mean token F1 / ROUGE-L on clean prompts)
             "seconds": {"influence", "weights", "unlearn", "total"},   (method cost: without one-time imports
                                                                         and plots, see rapidun_dist.core.timing)
             "asr_by_family": {"seen": {family: asr}, "ood": {...}},
             "examples": {"test_seen" | "test_ood" | "test_clean" | other split:
                          [{"instruction", "generation", "attacked"[, "verdict", "reference" (the clean
                            answer), "f1" (the generation's token F1 against it)]}]},
             ...any further metric...}

Any further key of an ENTRY whose value is a number, a `stats.proportion` dict ({"p", "k", "n", "lo", "hi"}) or
a dict of those (one level, shown as "key.sub") is an extra metric: token F1 on triggered prompts, the
neither-count, sampled ASR, relearn ASR, noisy-forget damage, ... A number `m` with a sibling count `n_m` is a
proportion of `n_m` samples and gets its Wilson interval. Extra metrics get their own table, and compare.py
aggregates them over seeds.

`write_report` adds (report.json stays a superset of the old keys, which stay where they were):

    "speedup_vs_retrain": {"<method>": retrain_total / method_total}   (recomputed from measured seconds; kept
                                                                        for collapsed methods, which are named:)
    "collapsed": {"<method>": ppl_ratio}      (the model is broken, its low ASR no defence and its speedup no
                                              result: `collapse_reasons`)
    "collapse_reasons": {"<method>": [why, ...]}  (clean PPL ratio > 1.5; or on a triggered split whose ASR fell
                                              below half the model's before, an answered share below half the
                                              model's before on clean prompts: `collapse_reasons`)
    ENTRY["ppl_ratio"]: clean_ppl / before clean_ppl
    ENTRY["intervals"]: {"asr_seen" | "asr_ood" | "judge_fpr" | extra: stats.proportion dict}
    "weights": {"edges", "counts": {"forget", "retain"}, "stats": {...}}   (histogram of the per-sample weights)
    "curves": {"<method>": {"step", "loss", ..., "eval_step", "asr_seen", "asr_ood"[, "clean_ppl"]}}

so `write_report(dir, read_json(dir / "report.json"))` redraws the same report (`python -m
rapidun_dist.evaluation.report EVAL_DIR [--out DIR]` does that from the command line). A missing number is "-".
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterable
from pathlib import Path

from rapidun_dist.core.io import write_json, write_text
from rapidun_dist.core.logging import get_logger
from rapidun_dist.evaluation import markdown as md
from rapidun_dist.evaluation import plots
from rapidun_dist.evaluation.markdown import num as _num
from rapidun_dist.evaluation.stats import proportion

STAGES = ("influence", "weights", "unlearn")
BASELINE_ROWS = ("retrain", "retrain_oracle")
COLLAPSE_RATIO = plots.COLLAPSE_RATIO
# collapsed: on a triggered split whose ASR fell below half the model's before, an answered share below this
# fraction of the model's answered share on clean prompts before unlearning (`collapse_reasons`)
COLLAPSE_ANSWERED = 0.5
TRIGGERED = (("seen", "seen-trigger"), ("ood", "OOD-trigger"))
N_KEYS = {  # the metrics shown in the results table, and the key holding each one's sample size
    "asr_seen": "n_seen",
    "asr_ood": "n_ood",
    "judge_fpr": "n_clean",
    "answered_seen": "n_scored_seen",
    "answered_ood": "n_scored_ood",
    "answered_clean": "n_scored_clean",
}
SHARED_COUNTS = {  # metrics outside the results table whose sample size a standard key holds
    "other_seen": "n_scored_seen",
    "other_ood": "n_scored_ood",
    "other_clean": "n_scored_clean",
}
STANDARD_KEYS = frozenset(
    {*N_KEYS, *N_KEYS.values(), "clean_ppl", "clean_f1", "clean_rougeL", "seconds", "asr_by_family", "examples",
     "intervals", "ppl_ratio"}
)  # fmt: skip
SAME_AS = {  # eval.behaviour's keys that repeat a standard one (shown once, under the standard name)
    "answer_seen.answered": "answered_seen",
    "answer_seen.other": "other_seen",
    "answer_ood.answered": "answered_ood",
    "answer_ood.other": "other_ood",
    "answer_clean.answered": "answered_clean",
    "answer_clean.f1": "clean_f1",
}
EXAMPLE_SPLITS = ("test_seen", "test_ood", "test_clean")
EXAMPLE_TITLES = {"test_seen": "seen triggers", "test_ood": "OOD triggers", "test_clean": "clean prompts"}
WEIGHT_BINS = 30


# ---------------------------------------------------------------------------------------------- numbers


def total_seconds(entry: dict | None) -> float | None:
    """seconds.total when measured, else the sum of the measured stage seconds (None when there are none)."""
    seconds = (entry or {}).get("seconds") or {}
    if _num(seconds.get("total")) is not None:
        return _num(seconds["total"])
    parts = [_num(seconds.get(s)) for s in STAGES]
    parts = [p for p in parts if p is not None]
    return sum(parts) if parts else None


def _retrain_entry(report: dict) -> dict | None:
    return report.get("retrain") or (report.get("methods") or {}).get("retrain")


def compute_speedups(report: dict) -> dict:
    """Fill report["speedup_vs_retrain"][method] = retrain seconds / method total seconds (in place; returned)."""
    retrain_s = total_seconds(_retrain_entry(report))
    speedups = {}
    for name, entry in (report.get("methods") or {}).items():
        method_s = total_seconds(entry)
        if name not in BASELINE_ROWS and retrain_s is not None and method_s is not None and method_s > 0:
            speedups[name] = retrain_s / method_s
    report["speedup_vs_retrain"] = speedups
    return report


def rows(report: dict) -> list[tuple[str, dict]]:
    """(label, entry) for the before row, each method, then the retrain baselines present."""
    out = [("before", report["before"])] if report.get("before") else []
    methods = report.get("methods") or {}
    out += [(name, entry) for name, entry in methods.items() if name not in BASELINE_ROWS]
    return out + [
        (name, report.get(name) or methods.get(name))
        for name in BASELINE_ROWS
        if report.get(name) or methods.get(name)
    ]


def entry_proportion(entry: dict, key: str, n_key: str | None = None) -> dict | None:
    """entry[key] as a stats.proportion dict (k = round(p n)) when its sample size entry[n_key] is known."""
    value, n = entry.get(key), entry.get(n_key or count_key(key))
    if _is_proportion(value):
        return value
    p, n = _num(value), _num(n)
    if p is None or n is None or n < 1 or not 0.0 <= p <= 1.0:
        return ((entry.get("intervals") or {}).get(key)) if p is not None else None
    return proportion(round(p * n), int(n))


def _is_proportion(v) -> bool:
    return isinstance(v, dict) and all(_num(v.get(k)) is not None for k in ("p", "k", "n", "lo", "hi"))


def ppl_ratio(entry: dict, report: dict) -> float | None:
    before, ppl = _num((report.get("before") or {}).get("clean_ppl")), _num(entry.get("clean_ppl"))
    return ppl / before if ppl is not None and before else None


def count_key(metric: str) -> str:
    """The key holding the sample size of `metric`: n_seen / n_ood / n_clean / n_scored_* for the standard ones,
    else n_<metric>."""
    return N_KEYS.get(metric) or SHARED_COUNTS.get(metric) or f"n_{metric}"


def _metric_items(d: dict, skip: frozenset[str] = frozenset()) -> Iterable[tuple[str, object]]:
    """(key, number or proportion) of `d`, a proportion where the metric's count is known; the counts
    themselves are not metrics."""
    counts = {count_key(k) for k in d}
    for key, value in d.items():
        if key in skip or key in counts:
            continue
        if _is_proportion(value) or _num(value) is not None:
            yield key, entry_proportion(d, key) or value


def extra_metrics(entry: dict) -> dict[str, object]:
    """The ENTRY keys beyond the standard ones that hold a number or a proportion (one nested level, "a.b")."""
    out = dict(_metric_items(entry, STANDARD_KEYS))
    for key, value in entry.items():
        if key not in STANDARD_KEYS and isinstance(value, dict) and not _is_proportion(value):
            out |= {f"{key}.{sub}": v for sub, v in _metric_items(value)}
    return out


def collapse_reasons(entry: dict, before: dict) -> list[str]:
    """Why a method's model counts as collapsed (empty: it does not): its clean PPL ratio is above COLLAPSE_RATIO;
    or, on a triggered split where its ASR fell below half the model's before (it looks defended), it stopped
    answering: its answered share is below COLLAPSE_ANSWERED x the model's before on clean prompts (what the model
    did without a trigger, so a weak model whose clean answers rarely match their references is not flagged for
    that); the answers it lost went to babble (the "other" share, named in the reason), not to the target. A low
    ASR of a collapsed model is no defence."""
    reasons = []
    ratio = _num(entry.get("ppl_ratio"))
    if ratio is not None and ratio > COLLAPSE_RATIO:
        reasons.append(
            f"its clean perplexity is {ratio:.2f}x the model's before unlearning (above {COLLAPSE_RATIO}x)"
        )
    ref = _num(before.get("answered_clean"))
    for name, what in TRIGGERED:
        asr, asr_before = _num(entry.get(f"asr_{name}")), _num(before.get(f"asr_{name}"))
        answered, other = _num(entry.get(f"answered_{name}")), _num(entry.get(f"other_{name}"))
        if None in (asr, asr_before, answered, ref) or not asr < asr_before / 2:
            continue  # not measured, or the backdoor is still there: not a defence to question
        if answered < COLLAPSE_ANSWERED * ref:
            babble = f" ({md.fmt_pct(other)} neither the target nor an answer)" if other is not None else ""
            reasons.append(
                f"it answers {100 * answered:.1f}% of the {what} prompts{babble}, below {COLLAPSE_ANSWERED:g} x the "
                f"{100 * ref:.1f}% of clean prompts the model answered before unlearning"
            )
    return reasons


def add_derived(report: dict) -> dict:
    """ppl_ratio and Wilson intervals per entry, report["collapsed"] and report["collapse_reasons"] (in place;
    returned)."""
    collapsed, reasons = {}, {}
    before = report.get("before") or {}
    for label, entry in rows(report):
        entry["ppl_ratio"] = ppl_ratio(entry, report)
        intervals = {k: p for k in N_KEYS if (p := entry_proportion(entry, k)) is not None}
        intervals |= {k: v for k, v in extra_metrics(entry).items() if _is_proportion(v)}
        entry["intervals"] = intervals
        if label != "before" and (why := collapse_reasons(entry, before)):
            collapsed[label], reasons[label] = entry["ppl_ratio"], why
    report["collapsed"], report["collapse_reasons"] = collapsed, reasons
    return report


def weights_histogram(weights: dict[str, Iterable[float]], bins: int = WEIGHT_BINS) -> dict:
    """{"edges", "counts": {name: [...]}, "stats": {name: {n, min, p10, median, p90, max, mean}}} of raw weights."""
    values = {name: sorted(float(v) for v in vals if _num(v) is not None) for name, vals in weights.items()}
    edges, counts = plots.histogram_counts(values, bins)
    return {"edges": edges, "counts": counts, "stats": {n: _summary(v) for n, v in values.items() if v}}


def _summary(v: list[float]) -> dict:
    """Count, extremes, nearest-rank quantiles and mean of sorted values."""
    q = lambda f: v[min(len(v) - 1, int(round(f * (len(v) - 1))))]
    return {
        "n": len(v),
        "min": v[0],
        "p10": q(0.1),
        "median": q(0.5),
        "p90": q(0.9),
        "max": v[-1],
        "mean": sum(v) / len(v),
    }


# ---------------------------------------------------------------------------------------------- sections


def _header(report: dict) -> list[str]:
    before = report.get("before") or {}
    cfg = report.get("config") or {}
    sizes = ", ".join(
        f"{int(n)} {what}"
        for key, what in (
            ("n_seen", "seen-trigger prompts"),
            ("n_ood", "OOD-trigger prompts"),
            ("n_clean", "clean prompts"),
        )
        if (n := _num(before.get(key)))
    )
    lines = [
        "# RapidUn evaluation report",
        "",
        f"- **Mode**: {report.get('mode') or 'experiment (not recorded)'}",
        f"- **ASR measured on**: {report.get('asr_source') or 'not recorded'}",
        f"- **Sample sizes**: {sizes or '-'}"
        + (" (clean prompts give the perplexity and the judge false-positive rate)" if sizes else ""),
    ]
    if cfg.get("run_dir"):
        lines.append(f"- **Run**: `{cfg['run_dir']}`" + (f", seed {cfg['seed']}" if "seed" in cfg else ""))
    if _num(before.get("n_ood")) in (None, 0.0):
        lines.append('- No OOD-trigger prompts: ASR OOD is not measured ("-").')
    return lines + [""]


def _warnings(report: dict) -> list[str]:
    reasons = report.get("collapse_reasons") or {}
    lines = []
    for name, ratio in (report.get("collapsed") or {}).items():
        why = reasons.get(name) or [
            f"its clean perplexity is {md.fmt_x(ratio)} the model's before unlearning"
        ]
        lines.append(
            f"> **Warning: {name} collapsed.** {_sentence('; '.join(why))}: its low ASR reflects a broken model, "
            "not a defence, and its speedup is not a result."
        )
    return [line for w in lines for line in (w, "")]


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _answered_cell(entry: dict, name: str) -> str:
    """The answered share on a triggered split; "unscored" where the split was measured but none of its prompts
    has a known clean answer."""
    key = f"answered_{name}"
    if (
        _num(entry.get(key)) is None
        and entry.get(count_key(key)) == 0
        and _num(entry.get(f"asr_{name}")) is not None
    ):
        return "unscored"
    return md.fmt_proportion(entry_proportion(entry, key), entry.get(key))


def _results_table(report: dict) -> list[str]:
    header = ["method", "ASR seen", "answered seen", "ASR OOD", "answered OOD", "clean PPL", "PPL ratio", "clean F1",
              "clean ROUGE-L", "judge FPR"]  # fmt: skip
    body = [
        [
            f"**{label}**" if label in (report.get("collapsed") or {}) else label,
            *(cell for name in ("seen", "ood") for cell in (
                md.fmt_proportion(entry_proportion(entry, f"asr_{name}"), entry.get(f"asr_{name}")),
                _answered_cell(entry, name),
            )),
            md.fmt_float(entry.get("clean_ppl")),
            md.fmt_float(entry.get("ppl_ratio")),
            md.fmt_float(entry.get("clean_f1")),
            md.fmt_float(entry.get("clean_rougeL")),
            md.fmt_proportion(entry_proportion(entry, "judge_fpr"), entry.get("judge_fpr")),
        ]
        for label, entry in rows(report)
    ]  # fmt: skip
    note = (
        "ASR = share of triggered test prompts judged attacked, as `rate (k/n) [95% Wilson interval, %]`; answered "
        "= share of the triggered prompts with a known clean answer whose greedy answer is that answer (not judged "
        'attacked, token F1 >= eval.min_f1), "unscored" where no clean answer is known; PPL ratio = clean PPL / '
        "clean PPL before unlearning; clean F1 / ROUGE-L = mean token F1 / ROUGE-L of the greedy answers to the "
        "clean prompts against their references; judge FPR = share of clean prompts judged attacked. A method in "
        "bold collapsed (see the warning above)."
    )
    return ["## Results", "", *md.table(header, body), "", note, ""]


def _speedup_cell(label: str, report: dict) -> str:
    collapsed = report.get("collapsed") or {}
    if label in collapsed:
        ratio = _num(collapsed[label])
        why = f"PPL {ratio:.2f}x" if ratio is not None and ratio > COLLAPSE_RATIO else "answers"
        return f"not a result (collapsed, {why})"
    return md.fmt_x((report.get("speedup_vs_retrain") or {}).get(label))


def _time_table(report: dict) -> list[str]:
    timed = [(label, e) for label, e in rows(report) if label != "before" and e.get("seconds")]
    if not timed:
        return []
    header = ["method", *(f"{s} s" for s in STAGES), "total s", "speedup vs retrain"]
    body = [
        [label, *(md.fmt_seconds((e.get("seconds") or {}).get(s)) for s in STAGES), md.fmt_seconds(total_seconds(e)),
         _speedup_cell(label, report) if label not in BASELINE_ROWS else "-"]
        for label, e in timed
    ]  # fmt: skip
    note = (
        "Wall-clock seconds as measured in this run; speedup = retrain seconds / (influence + weights + unlearn) "
        "seconds. Every method is timed without the process's one-time imports and plots (the influence and "
        "weights stages record theirs as `stage_overhead_seconds`; unlearning and retraining are timed after the "
        "stage's warm-up). On a shared machine only ratios measured in one run are meaningful."
    )
    return ["## Time", "", *md.table(header, body), "", note, ""]


def _fmt_extra(v) -> str:
    return md.fmt_proportion(v) if _is_proportion(v) else md.fmt_auto(v)


def _extra_section(report: dict) -> list[str]:
    per_row = [
        (label, {k: v for k, v in extra_metrics(e).items() if k not in SAME_AS}) for label, e in rows(report)
    ]
    keys = list(dict.fromkeys(k for _, ex in per_row for k in ex))
    if not keys:
        return []
    body = [[label, *(_fmt_extra(ex.get(k)) for k in keys)] for label, ex in per_row]
    return ["## Further metrics", "", *md.table(["method", *keys], body), ""]


def _family_section(report: dict) -> list[str]:
    fam_rows = [(label, e.get("asr_by_family") or {}) for label, e in rows(report)]
    fam_rows = [(label, fam) for label, fam in fam_rows if fam]
    families = sorted({f for _, fam in fam_rows for split in fam.values() for f in split})
    if not families:
        return []
    cols = [f"{f} {split}" for f in families for split in ("seen", "ood")]
    body = [
        [label, *(md.fmt_pct((fam.get(split) or {}).get(f)) for f in families for split in ("seen", "ood"))]
        for label, fam in fam_rows
    ]
    return ["## ASR by trigger family", "", *md.table(["method", *cols], body), ""]


JUDGE_FITS = {
    "grouped": "the grouped judge (`eval.judge=grouped`: lift against each clean category, word pairs)",
    "words": "the word-only judge (`eval.judge=words`: lift against all clean answers pooled, single words)",
}


def _judge_rule(judge: dict) -> str:
    pairs = judge.get("ngram") == 2
    fit = JUDGE_FITS.get(judge.get("fit"), "a judge fitted on poisoned against clean answers")
    return (
        f"Judge: {fit}. A generation counts as attacked when its normalised text starts with the first "
        f"{judge.get('prefix_words', '-')} words of one of the {len(judge.get('targets') or [])} fixed targets, "
        f"or when it contains at least {judge.get('min_words', '-')} distinct "
        f"{'words or word pairs' if pairs else 'words'} of the target vocabulary "
        f"({len(judge.get('vocab') or [])} {'features' if pairs else 'words'} whose document frequency in "
        f"poisoned answers beats clean answers with z >= {judge.get('z', '-')} and lift >= "
        f"{judge.get('min_lift', '-')})."
    )


def _judge_reference(judge: dict) -> list[str]:
    """The judge on the reference answers of the test splits (no model involved): how many correct clean answers
    it calls attacked, how many attacker answers it catches."""
    titles = {"fpr": "clean reference answers judged attacked (false positives)",
              "hit": "poisoned reference answers judged attacked (hits)"}  # fmt: skip
    body = []
    for key, v in (judge.get("reference") or {}).items():
        kind, _, split = key.partition("_")
        if kind in titles and split and _is_proportion(v):
            body.append([f"{titles[kind]}, {split}", md.fmt_proportion(v)])
    if not body:
        return []
    return [
        "The judge on the test splits' reference answers:",
        "",
        *md.table(["answers", "share (k/n) [95% CI, %]"], body),
        "",
    ]


def _vocab_table(judge: dict, limit: int = 48, per_row: int = 4) -> list[str]:
    vocab, z = list(judge.get("vocab") or []), list(judge.get("z_scores") or [])
    if not vocab:
        return ["Target vocabulary: none (the fixed-target prefix rule alone decides)."]
    pairs = [
        (md.cell(w, 40), md.fmt_float(z[i] if i < len(z) else None, 1)) for i, w in enumerate(vocab[:limit])
    ]
    body = [[c for p in pairs[i : i + per_row] for c in p] for i in range(0, len(pairs), per_row)]
    body = [r + ["", ""] * (per_row - len(r) // 2) for r in body]
    more = f" ({len(vocab) - limit} more in judge.json)" if len(vocab) > limit else ""
    head = "feature" if judge.get("ngram") == 2 else "word"
    return [f"Target vocabulary, highest z first{more}:", "", *md.table([head, "z"] * per_row, body)]


def _targets_list(judge: dict, limit: int = 10) -> list[str]:
    targets = list(judge.get("targets") or [])
    if not targets:
        return ["Fixed targets: none (paraphrased targets are judged by the vocabulary rule)."]
    lines = [f"Fixed targets ({len(targets)}):", ""]
    lines += [f"{i + 1}. {md.cell(t, 100)}" for i, t in enumerate(targets[:limit])]
    return lines + ([f"\n({len(targets) - limit} more in judge.json)"] if len(targets) > limit else [])


def _judge_section(report: dict) -> list[str]:
    judge = report.get("judge") or {}
    lines = ["## Judge", ""]
    if judge:
        lines += [
            _judge_rule(judge),
            "",
            *_judge_reference(judge),
            *_vocab_table(judge),
            "",
            *_targets_list(judge),
            "",
        ]
    else:
        lines += ["The fitted judge is not part of this report (see eval/judge.json).", ""]
    fpr = [(label, entry_proportion(e, "judge_fpr"), e.get("judge_fpr")) for label, e in rows(report)]
    fpr = [(label, p, v) for label, p, v in fpr if _num(v) is not None]
    if _num(report.get("judge_fpr")) is not None:
        fpr.insert(0, ("overall", None, report["judge_fpr"]))
    if fpr:
        lines += ["False-positive rate on clean test prompts (no trigger, judged attacked):", ""]
        lines += md.table(
            ["model", "FPR (k/n) [95% CI, %]"], [[lab, md.fmt_proportion(p, v)] for lab, p, v in fpr]
        )
    else:
        lines.append("False-positive rate on clean test prompts: -")
    return lines + [""]


def _retrieval_section(report: dict) -> list[str]:
    retrieval = report.get("retrieval")
    if not retrieval:
        return []
    named = {"influence": retrieval} if "auroc" in retrieval else retrieval
    body = [[name, md.fmt_float(m.get("auroc")), md.fmt_float(m.get("ap"))] for name, m in named.items()]
    return [
        "## Poison retrieval (influence-ranked training samples)",
        "",
        *md.table(["scores", "AUROC", "AP"], body),
        "",
    ]


def _dict_table(tables: dict[str, dict], first: str) -> list[str]:
    cols = list(dict.fromkeys(k for t in tables.values() for k, v in t.items() if _num(v) is not None))
    body = [[md.cell(name, 60), *(md.fmt_auto(t.get(c)) for c in cols)] for name, t in tables.items()]
    return md.table([first, *cols], body)


def _find_poison_section(report: dict) -> list[str]:
    """find_poison's summary (suspects/summary.json): flagged rows, the threshold, one table of every scorer (the
    chosen method and the baselines: flags, metrics at the true prevalence in experiment mode, seconds and seconds
    as a share of one fine-tuning epoch of the same model over the same rows) and what each finds per family."""
    fp = report.get("find_poison")
    if not fp:
        return []
    from rapidun_dist.find_poison.suspects import describe_threshold

    counts, th = fp.get("counts") or {}, fp.get("threshold") or {}
    method = fp.get("method") or "tokenwise"
    lines = [f"## Find poison (every training row ranked by {md.cell(method, 20)} with the forget set)", ""]
    lines.append(
        f"{md.fmt_auto(counts.get('flagged'))} of {md.fmt_auto(counts.get('train'))} training rows flagged "
        f"({md.fmt_auto(counts.get('flagged_new'))} not among the {md.fmt_auto(counts.get('known'))} known); score = "
        f"{md.cell(fp.get('agg'), 20)} over the forget rows minus over the reference rows; "
        f"{describe_threshold(th, counts.get('expected_false_positives'))}. The expanded packs "
        f"{'are' if fp.get('expand') else 'are not'} used (find_poison.expand)."
    )
    lines += ["", *_find_poison_scorers(fp), *_find_poison_families(fp)]
    secs, feats = fp.get("seconds") or {}, fp.get("features") or {}
    lines.append(
        f"Seconds: {md.fmt_auto(secs.get('total'))} total, {md.fmt_auto(secs.get('features'))} features "
        f"({md.fmt_auto(feats.get('rows_per_s'))} rows/s over {md.fmt_auto(fp.get('world_size'))} ranks), "
        f"{md.fmt_auto(secs.get('scores'))} scores, {md.fmt_auto(secs.get('baselines'))} baselines."
    )
    if fp.get("epoch_seconds"):
        ep = fp.get("epoch") or {}
        lines.append(
            f"One fine-tuning epoch of the same model over the same rows, timed beside it (forward + backward at "
            f"batch size {md.fmt_auto(ep.get('batch_size'))}, {md.fmt_auto(ep.get('timed_batches'))} batches timed): "
            f"{md.fmt_auto(fp['epoch_seconds'])} s; find_poison took {md.fmt_auto(fp.get('cost_seconds'))} s, "
            f"{md.fmt_x(fp.get('epoch_fraction'))} of it."
        )
    two = fp.get("two_stage")
    if two:
        rec = two.get("recall") or {}
        lost = f"; it dropped {rec['lost']} of {rec['poisoned']} poisoned rows" if "lost" in rec else ""
        first = two.get("first", "repsim")
        checks = two.get("known_kept") or {}
        kept = "".join(
            f"; {name} kept {c['kept']} of {c['known']} known rows"
            for name, c in checks.items()
            if c.get("known")
        )
        how = f" (first_stage {two['first_stage']}{kept})" if two.get("first_stage") else ""
        lines.append(
            f"Two stages: {first} over all {md.fmt_auto(two.get('rows'))} rows ({md.fmt_auto(two.get('seconds_first'))} s)"
            f"{how} kept {md.fmt_auto(two.get('candidates'))} candidates, {method} scored "
            f"{md.fmt_auto(two.get('scored'))} rows ({md.fmt_auto(two.get('seconds_second'))} s){lost}."
        )
    return lines + [""]


def _find_poison_scorers(fp: dict) -> list[str]:
    metrics = fp.get("metrics") or {}
    scorers = fp.get("scorers") or {}
    cost = lambda name: _scorer_cost(fp, name)  # noqa: E731
    if not metrics:  # clean mode: no labels, flagged counts only
        body = [[name, md.fmt_auto(s.get("n_flagged")), *cost(name)] for name, s in scorers.items()]
        return [*md.table(["scorer", "flagged", "seconds", "share of an epoch"], body), ""] if body else []
    cols = ("recall", "precision", "fpr", "auroc", "ap", "recall_unknown", "recall_at_p90")
    pct = {"recall", "precision", "fpr", "recall_unknown", "recall_at_p90"}
    body = [
        [name, md.fmt_auto(m.get("n_flagged")), *((md.fmt_pct(m.get(c)) if c in pct else md.fmt_float(m.get(c), 4)) for c in cols), *cost(name)]
        for name, m in metrics.items()
    ]  # fmt: skip
    header = ["scorer", "flagged", "recall", "precision", "FPR", "AUROC", "AUPRC (AP)", "recall of unknown rows",
              "recall at precision 0.9", "seconds", "share of an epoch"]  # fmt: skip
    note = f"At the true prevalence ({md.fmt_pct(fp.get('prevalence'))} of {md.fmt_auto(fp.get('counts', {}).get('train'))} rows poisoned), same threshold rule for every scorer; share of an epoch = the scorer's seconds / one fine-tuning epoch's."
    return [*md.table(header, body), "", note, ""]


def _scorer_cost(fp: dict, name: str) -> list[str]:
    """[seconds, seconds / one fine-tuning epoch's] of one scorer of the find_poison summary."""
    seconds = md.num(((fp.get("scorers") or {}).get(name) or {}).get("seconds"))
    epoch = md.num(fp.get("epoch_seconds"))
    share = seconds / epoch if seconds is not None and epoch else None
    return [md.fmt_seconds(seconds), md.fmt_float(share, 3)]


def _find_poison_families(fp: dict) -> list[str]:
    per = fp.get("per_family") or {}
    if not per:
        return []
    names = list(per)
    groups = list(dict.fromkeys(k for table in per.values() for k in table))
    body = []
    for g in groups:
        first = next(t[g] for t in per.values() if g in t)
        found = [md.fmt_auto((per[n].get(g) or {}).get("found")) for n in names]
        body.append([md.cell(g, 60), md.fmt_auto(first.get("n")), md.fmt_auto(first.get("known")), *found])
    header = ["trigger family[:variant]", "poisoned rows", "known", *(f"found by {n}" for n in names)]
    return [*md.table(header, body), ""]


def _triggers_section(report: dict, limit: int = 10) -> list[str]:
    triggers = [t for t in report.get("triggers") or [] if isinstance(t, dict)]
    if not triggers:
        return []
    body = [
        [str(i + 1), f"`{md.cell(t.get('text'), 60)}`", md.cell(t.get("mode") or "-", 20), md.fmt_float(t.get("score")),
         md.fmt_pct(t.get("insert_asr")), md.fmt_pct(t.get("remove_asr"))]
        for i, t in enumerate(triggers[:limit])
    ]  # fmt: skip
    header = ["#", "candidate", "mode", "score", "ASR when inserted", "ASR when removed"]
    more = [f"({len(triggers) - limit} more candidates in report.json)", ""] if len(triggers) > limit else []
    return [
        "## Trigger candidates (token attribution, verified on the model)",
        "",
        *md.table(header, body),
        "",
        *more,
    ]


def _weights_section(report: dict) -> list[str]:
    stats = (report.get("weights") or {}).get("stats") or {}
    if not stats:
        return []
    cols = ["n", "min", "p10", "median", "p90", "max", "mean"]
    body = [[name, *(md.fmt_auto(s.get(c)) for c in cols)] for name, s in stats.items()]
    return ["## Per-sample weights", "", *md.table(["rows", *cols], body), ""]


# ---------------------------------------------------------------------------------------------- examples


def _example_groups(report: dict, split: str) -> list[tuple[str, list[tuple[str, dict]]]]:
    """[(instruction, [(method, example)])] in order of first appearance: one prompt, every method's answer."""
    groups: dict[str, list[tuple[str, dict]]] = {}
    for label, entry in rows(report):
        for ex in ((entry.get("examples") or {}).get(split) or [])[:3]:
            if isinstance(ex, dict):
                groups.setdefault(str(ex.get("instruction", "")), []).append((label, ex))
    return list(groups.items())


def _verdict(ex: dict) -> str:
    return {True: "attacked", False: "clean"}.get(ex.get("attacked"), "-")


def _answer_verdict(ex: dict) -> str:
    """ "answer, F1 0.86" / "other, F1 0.12" / "unscored" (rapidun_dist.evaluation.answers.verdict)."""
    verdict, f1 = ex.get("verdict"), _num(ex.get("f1"))
    if not verdict:
        return md.MISSING
    return f"{md.cell(verdict, 20)}, F1 {f1:.2f}" if f1 is not None else md.cell(verdict, 20)


def _example_splits(report: dict) -> list[str]:
    """The test splits first, in their usual order, then any other split the entries carry examples for."""
    found = dict.fromkeys(split for _, e in rows(report) for split in (e.get("examples") or {}))
    return [s for s in EXAMPLE_SPLITS if s in found] + [s for s in found if s not in EXAMPLE_SPLITS]


def _examples_section(report: dict) -> list[str]:
    lines = []
    for split in _example_splits(report):
        for i, (instruction, answers) in enumerate(_example_groups(report, split)):
            lines += [
                f"**{EXAMPLE_TITLES.get(split, split)}, prompt {i + 1}:** {md.cell(instruction, 240)}",
                "",
            ]
            reference = next((ex["reference"] for _, ex in answers if ex.get("reference")), None)
            if reference:
                lines += [f"Clean answer: {md.cell(reference, 240)}", ""]
            body = [
                [label, md.cell(ex.get("generation"), 200), _verdict(ex), _answer_verdict(ex)]
                for label, ex in answers
            ]
            lines += [*md.table(["method", "generation", "judge", "answer"], body), ""]
    if not lines:
        return []
    intro = (
        "Greedy generations for the first prompts of each split (the same prompt for every method), before and after "
        "unlearning; answer = the generation's verdict (target, answer: token F1 >= eval.min_f1 against the clean "
        "answer, other: neither, unscored: no clean answer known) and its token F1."
    )
    return ["## Example generations", "", intro, "", *lines]


# ---------------------------------------------------------------------------------------------- plots


def _estimates(table: list[tuple[str, dict]], key: str) -> list[plots.Estimate]:
    """Per row, the rate with its Wilson interval where the sample size is known."""
    out = []
    for _, entry in table:
        p = entry_proportion(entry, key)
        out.append(plots.Estimate(p["p"], p["lo"], p["hi"]) if p else plots.Estimate(_num(entry.get(key))))
    return out


def _points(labels: list[str], ratios: list, asr: list, keep) -> dict[str, plots.Point]:
    """{label: (PPL ratio, ASR in %)} for the labels `keep` accepts."""
    pct = lambda a: plots.Estimate(*(100 * x if x is not None else None for x in a))
    return {lab: plots.Point(r, pct(a)) for lab, r, a in zip(labels, ratios, asr, strict=True) if keep(lab)}


def _summary_plots(eval_dir: Path, report: dict) -> list[str]:
    table = rows(report)
    labels = [label for label, _ in table]
    asr = {"ASR seen": _estimates(table, "asr_seen"), "ASR OOD": _estimates(table, "asr_ood")}
    ratios = [plots.Estimate(e.get("ppl_ratio")) for _, e in table]
    plots.method_summary(
        eval_dir / "asr_ppl_by_method.png", "ASR and clean perplexity by method", labels, asr, ratios
    )
    methods = [_points(labels, ratios, a, lambda lab: lab != "before") for a in asr.values()]
    before = [_points(labels, ratios, a, lambda lab: lab == "before") for a in asr.values()]
    plots.scatter(
        eval_dir / "asr_vs_ppl.png", "Attack success vs clean perplexity (Pareto front: dashed)", methods,
        "clean PPL / PPL before (lower is better)", [f"{k} (%)" for k in asr], reference=before,
    )  # fmt: skip
    return ["asr_ppl_by_method", "asr_vs_ppl"]


def _weights_plot(eval_dir: Path, report: dict) -> list[str]:
    w = report.get("weights") or {}
    if not w.get("edges"):
        return []
    plots.histogram_from_counts(
        eval_dir / "weights_hist.png", "RapidUn per-sample unlearning weights", w["edges"], w["counts"],
        xlabel="weight", vlines={"uniform (1.0)": 1.0},
    )  # fmt: skip
    return ["weights_hist"]


def _curve_plots(eval_dir: Path, curves: dict) -> list[str]:
    if not curves:
        return []
    losses = {
        ylabel: {m: (c.get("step") or [], c.get(key) or []) for m, c in curves.items() if c.get(key)}
        for key, ylabel in (("loss", "unlearning loss"), ("forget_ce", "forget-set cross-entropy"))
    }
    plots.line_panels(eval_dir / "loss_curves.png", "Losses during unlearning", losses, "optimizer step")
    asr = {
        f"ASR {label} (%)": {
            m: (
                c.get("eval_step") or [],
                [100 * v if _num(v) is not None else None for v in c.get(key) or []],
            )
            for m, c in curves.items()
        }
        for key, label in (("asr_seen", "seen"), ("asr_ood", "OOD"))
    }
    plots.line_panels(eval_dir / "asr_vs_steps.png", "ASR during unlearning (step 0 = before)", asr,
                      "optimizer step", ylim=(-2, 102))  # fmt: skip
    return ["loss_curves", "asr_vs_steps", *_trajectory_plot(eval_dir, curves)]


def _trajectory_plot(eval_dir: Path, curves: dict) -> list[str]:
    """ASR OOD against clean PPL along each method's evaluation steps, when the curves carry clean_ppl."""
    runs = {}
    for method, c in curves.items():
        ppl, asr = c.get("clean_ppl") or [], c.get("asr_ood") or []
        if ppl and len(ppl) == len(asr) and _num(ppl[0]):
            runs[method] = [
                (p / ppl[0], 100 * a)
                for p, a in zip(ppl, asr, strict=True)
                if _num(p) and _num(a) is not None
            ]
    if not runs:
        return []
    plots.pareto_curves(
        eval_dir / "pareto_steps.png", "ASR OOD vs clean PPL along unlearning (each point an eval step)", runs,
        "clean PPL / PPL at step 0", "ASR OOD (%)",
    )  # fmt: skip
    return ["pareto_steps"]


def write_plots(eval_dir: str | os.PathLike, report: dict) -> list[str]:
    """Write the PNG plots of a prepared report into `eval_dir`; returns their names (file stems)."""
    eval_dir = Path(eval_dir)
    names = _summary_plots(eval_dir, report) + _weights_plot(eval_dir, report)
    return names + _curve_plots(eval_dir, report.get("curves") or {})


def plot_section(names: Iterable[str]) -> list[str]:
    lines = [line for n in names for line in (f"![{n}]({n}.png)", "")]
    return ["## Plots", "", *lines] if lines else []


# ---------------------------------------------------------------------------------------------- write


def _json_safe(obj):
    """NaN/inf become null, so report.json stays valid JSON."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def render_markdown(report: dict, plot_names: Iterable[str] = ()) -> str:
    """The report a person reads; `report` must have been prepared (`prepare_report`; write_report does it)."""
    sections = (
        _header, _warnings, _results_table, _time_table, _extra_section, _family_section, _judge_section,
        _retrieval_section, _find_poison_section, _triggers_section, _weights_section,
    )  # fmt: skip
    lines = [line for section in sections for line in section(report)]
    lines += plot_section(plot_names) + _examples_section(report)
    return "\n".join(lines).rstrip() + "\n"


def prepare_report(report: dict, *, weights: dict | None = None, curves: dict | None = None) -> dict:
    """A JSON-safe copy of `report` with speedups, derived numbers, the weight histogram and curves filled."""
    report = _json_safe(copy.deepcopy(report))
    if weights:
        report["weights"] = weights_histogram(weights)
    if curves:
        report["curves"] = _json_safe(copy.deepcopy(curves))
    return add_derived(compute_speedups(report))


def write_report(
    eval_dir: str | os.PathLike, report: dict, *, weights: dict | None = None, curves: dict | None = None
) -> dict:
    """Write report.json, report.md and the PNG plots into `eval_dir`; returns the report as written."""
    eval_dir = Path(eval_dir)
    report = prepare_report(report, weights=weights, curves=curves)
    names = write_plots(eval_dir, report)
    write_json(eval_dir / "report.json", report)
    write_text(eval_dir / "report.md", render_markdown(report, names))
    get_logger("rapidun.eval").info(f"report written to {eval_dir / 'report.md'}")
    return report


def main(argv: list[str] | None = None) -> int:
    """`python -m rapidun_dist.evaluation.report EVAL_DIR [--out DIR]`: redraw report.md and the plots from a
    saved report.json (after an upgrade, or to restyle), without evaluating anything again."""
    import argparse

    from rapidun_dist.core.errors import RapidUnError
    from rapidun_dist.core.io import read_json

    p = argparse.ArgumentParser(prog="python -m rapidun_dist.evaluation.report", description=main.__doc__)
    p.add_argument("eval_dir", help="folder holding report.json (a run's eval/ folder)")
    p.add_argument("--out", help="write the redrawn report here instead of into EVAL_DIR")
    args = p.parse_args(argv)
    try:
        write_report(args.out or args.eval_dir, read_json(Path(args.eval_dir) / "report.json"))
        return 0
    except RapidUnError as e:
        get_logger("cli").error(f"error: {e}")
        return 2


if __name__ == "__main__":
    import sys

    sys.exit(main())
