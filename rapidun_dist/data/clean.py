"""The clean job's data (docs/DESIGN.md section 10): the user's known poisoned rows, their unlabelled training set, their
clean evaluation prompts and the trigger strings they know, turned into the run directory's data files.

Inputs (read, never modified; JSONL, JSON list or Parquet; `input`/`output` accepted for `context`/`response`):

    data.forget_path   known poisoned rows: instruction (with its trigger), context?, response (the poisoned
                       answer), response_clean?
    data.train_path    the fine-tuning set, unlabelled: instruction, context?, response        (optional)
    data.eval_path     clean held-out prompts with answers                                      (optional)
    eval.triggers      [{text, mode}] the triggers the user knows; eval.ood_triggers, variants   (optional)

Outputs, the same files as the experiment mode (`rapidun_dist.data.schema.DATA_FILES`):

    forget      the known rows (a forget row's `instruction` is its prompt with the known triggers removed, used
                for self-relabel; `instruction_poisoned` / `response_poisoned` are the row as given; `response` is
                its clean answer when the user gave one, else "")
    retain      retain_ratio x |forget| rows of the training set, never a forget or evaluation row (by id and
                prompt), never a row that contains a known trigger string or a forget row's poisoned answer
                (an unlabelled training set still holds poison: a poisoned retain row teaches the backdoor back); triggers
                match case-insensitively
    reference   find_poison's reference rows beyond the retain pack (`data.reference_rows`), from the same pool
    train       the whole training set, as given (no labels are read: it has none)
    val_clean / test_clean   clean prompts (data.eval_path, else held-out training rows that passed the filter)
    val_seen / test_seen     the same prompts with a known trigger inserted (eval.triggers); without triggers,
                test_seen = the held-out `data.forget_holdout` share of the forget rows and val_seen = the forget
                rows unlearning uses (a stopping signal that reads no test row)
    test_ood    prompts with the OOD variants inserted (eval.ood_triggers), else empty

`summary.json` records what was dropped and why, and the `asr_source` the report states.
"""

from __future__ import annotations

import functools
import random
import re
from pathlib import Path

from rapidun_dist.config import RunConfig, TriggerSpec
from rapidun_dist.core.errors import DataError
from rapidun_dist.core.logging import get_logger
from rapidun_dist.data.loaders import _iter_file
from rapidun_dist.data.poison import inject
from rapidun_dist.data.prepare import write_data_dir
from rapidun_dist.data.schema import prompt_key
from rapidun_dist.data.splits import extra_reference

log = get_logger("rapidun.data")
ALIASES = {"input": "context", "output": "response"}


def _text(row: dict, key: str, where: str, *, required: bool) -> str:
    value = row.get(key)
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise DataError(
            f"{where}: field {key!r}: expected a string, found {type(value).__name__} {value!r:.60}"
        )
    if required and not value.strip():
        raise DataError(f"{where}: field {key!r}: expected a non-empty string, found {row.get(key)!r}")
    return value


def read_user_rows(path: str, key: str, *, prefix: str) -> list[dict]:
    """Rows of a user file as {id, instruction, context, response, response_clean}; errors name the config key,
    the file and the line. Ids: the row's own `id` when present, else `<prefix>-<position>`."""
    rows, seen = [], set()
    try:
        raw = list(_iter_file(path))
    except DataError as e:
        raise DataError(f"{key}: {e}") from None
    except OSError as e:
        raise DataError(f"{key}: {path}: cannot be read: {e}") from None
    for where, pos, row in raw:
        if isinstance(row, Exception):
            raise DataError(f"{key}: {row}")
        if not isinstance(row, dict):
            raise DataError(f"{key}: {where}: expected a JSON object, found {type(row).__name__}")
        row = {ALIASES.get(k, k): v for k, v in row.items()}
        rid = row.get("id", f"{prefix}-{pos:06d}")
        rid = str(rid) if isinstance(rid, (str, int)) and not isinstance(rid, bool) else None
        if rid is None or rid in seen:
            raise DataError(f"{key}: {where}: expected a unique string id, found {row.get('id')!r}")
        seen.add(rid)
        rows.append(
            {
                "id": rid,
                "instruction": _text(row, "instruction", f"{key}: {where}", required=True),
                "context": _text(row, "context", f"{key}: {where}", required=False),
                "response": _text(row, "response", f"{key}: {where}", required=True),
                "response_clean": _text(row, "response_clean", f"{key}: {where}", required=False),
            }
        )
    if not rows:
        raise DataError(f"{key}: {path}: no rows (expected at least one)")
    return rows


def _pattern(t: TriggerSpec) -> re.Pattern:
    """A known trigger matched case-insensitively ("aloha" also finds "ALOHA"); look-alike variants (homoglyphs,
    zero-width joiners) are exactly what it does not find, and what OOD evaluation is for."""
    return _compiled(t.text)


@functools.lru_cache(maxsize=4096)
def _compiled(text: str) -> re.Pattern:
    # compiled once per trigger string: find_poison's packs strip dozens of triggers from thousands of flagged rows
    return re.compile(re.escape(text), re.IGNORECASE)


def has_trigger(text: str, t: TriggerSpec) -> bool:
    return _pattern(t).search(text) is not None


def strip_triggers(text: str, triggers: list[TriggerSpec]) -> str:
    """`text` with every occurrence of the known trigger strings removed, whitespace collapsed."""
    for t in sorted(triggers, key=lambda t: -len(t.text)):
        text = _pattern(t).sub(" ", text)
    return " ".join(text.split())


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def forget_records(rows: list[dict], triggers: list[TriggerSpec]) -> list[dict]:
    out = []
    for r in rows:
        found = [t for t in triggers if has_trigger(f"{r['instruction']}\n{r['context']}", t)]
        clean_instr = strip_triggers(r["instruction"], triggers) if found else r["instruction"]
        out.append(
            {
                "id": r["id"],
                "instruction": clean_instr or r["instruction"],
                "context": strip_triggers(r["context"], triggers) if found else r["context"],
                "response": r["response_clean"],
                "category": "",
                "source": "forget",
                "instruction_poisoned": r["instruction"],
                "response_poisoned": r["response"],
                "trigger_family": "known",
                "trigger_variant": found[0].text if found else "",
                "inject_mode": found[0].mode if found else "",
                "trigger_known": bool(found),
                "is_poisoned": True,
            }
        )
    return out


def _clean_record(r: dict, source: str) -> dict:
    return {
        "id": r["id"],
        "instruction": r["instruction"],
        "context": r["context"],
        "response": r["response"],
        "category": "",
        "source": source,
        "is_poisoned": False,
    }


def suspicious(r: dict, triggers: list[TriggerSpec], poisoned_answers: set[str]) -> str | None:
    """Why a training row may not serve as a clean row (None when it may)."""
    text = f"{r['instruction']}\n{r['context']}"
    hit = next((t.text for t in triggers if has_trigger(text, t)), None)
    if hit is not None:
        return "known_trigger"
    if _norm(r["response"]) in poisoned_answers:
        return "poisoned_answer"
    return None


def triggered(rows: list[dict], triggers: list[TriggerSpec], family: str, rng: random.Random) -> list[dict]:
    """`rows` with a trigger (cycling through `triggers`) inserted into the instruction."""
    out = []
    for i, r in enumerate(rows):
        t = triggers[i % len(triggers)]
        out.append(
            r
            | {
                "instruction_poisoned": inject(r["instruction"], t.text, t.mode, rng),
                "response_poisoned": "",
                "trigger_family": family,
                "trigger_variant": t.text,
                "inject_mode": t.mode,
                "is_poisoned": True,
            }
        )
    return out


def _disjoint(rows: list[dict], *taken: list[dict]) -> list[dict]:
    ids = {r["id"] for rs in taken for r in rs}
    prompts = {prompt_key(r) for rs in taken for r in rs}
    return [r for r in rows if r["id"] not in ids and prompt_key(r) not in prompts]


def build_clean_files(cfg: RunConfig) -> tuple[dict[str, list[dict]], dict]:
    """All data files of a clean run, in memory (nothing is written if any input is bad)."""
    d, ev = cfg.data, cfg.eval
    rng = random.Random(f"{d.seed}:clean")
    if not d.forget_path:
        raise DataError("data.forget_path: required in mode clean (the rows you know are poisoned)")
    forget_all = forget_records(
        read_user_rows(d.forget_path, "data.forget_path", prefix="forget"), ev.triggers
    )
    train = read_user_rows(d.train_path, "data.train_path", prefix="train") if d.train_path else []
    evals = read_user_rows(d.eval_path, "data.eval_path", prefix="eval") if d.eval_path else []
    if not train and not evals:
        raise DataError(
            "mode clean: retain rows come from data.train_path (or data.eval_path when there is no training set); "
            "set at least one of them"
        )
    poisoned_answers = {_norm(r["response_poisoned"]) for r in forget_all}
    dropped = {"known_trigger": 0, "poisoned_answer": 0, "overlaps_forget": 0}
    pool = []
    for r in _disjoint(train, forget_all) if train else []:
        why = suspicious(r, ev.triggers, poisoned_answers)
        if why:
            dropped[why] += 1
        else:
            pool.append(_clean_record(r, "train"))
    dropped["overlaps_forget"] = len(train) - len(_disjoint(train, forget_all))
    eval_pool = [_clean_record(r, "eval") for r in _disjoint(evals, forget_all)]
    forget, test_seen_rows = _split_forget(forget_all, bool(ev.triggers), d.forget_holdout, rng)
    n_retain = d.retain_ratio * len(forget)
    retain_src = pool if pool else eval_pool
    retain_src = _disjoint(retain_src, eval_pool) if pool else retain_src
    if len(retain_src) < n_retain:
        raise DataError(
            f"mode clean: retain needs {n_retain} clean rows ({d.retain_ratio} x {len(forget)} forget), found "
            f"{len(retain_src)} usable rows in {'data.train_path' if pool else 'data.eval_path'}"
        )
    retain = rng.sample(sorted(retain_src, key=lambda r: r["id"]), n_retain)
    reference = extra_reference(retain_src, retain, d.reference_rows, random.Random(f"{d.seed}:reference"))
    if not eval_pool:  # held-out training rows that passed the filter, neither retain nor reference rows
        eval_pool = _disjoint(pool, retain + reference)
    eval_pool = _disjoint(eval_pool, retain + reference)
    files = _eval_files(eval_pool, cfg, rng)
    if not ev.triggers:
        files["test_seen"], files["val_seen"] = test_seen_rows, [dict(r) for r in forget]
    files |= {"train": train_rows(train), "forget": forget, "retain": retain, "reference": reference}
    summary = {
        "mode": "clean",
        "asr_source": "prompts built from eval.triggers" if ev.triggers else "held-out forget prompts",
        "dropped_from_retain_pool": dropped,
        "forget_without_known_trigger": sum(not r["trigger_known"] for r in forget_all),
        "forget_with_clean_answer": sum(bool(r["response"]) for r in forget_all),
    }
    return files, summary


def train_rows(train: list[dict]) -> list[dict]:
    """The training set as given, unlabelled (no `is_poisoned`: nobody labelled it)."""
    return [_clean_record(r, "train") | {"is_poisoned": None} for r in train]


def _split_forget(forget_all, have_triggers, holdout, rng):
    """(forget rows to unlearn, held-out triggered test rows): with known triggers every row is unlearned."""
    if have_triggers:
        return forget_all, []
    if len(forget_all) < 2:
        raise DataError(
            f"data.forget_path: {len(forget_all)} row; without eval.triggers at least 2 are needed "
            f"(a share data.forget_holdout={holdout} is held out to measure ASR on)"
        )
    order = rng.sample(forget_all, len(forget_all))
    n_test = min(len(order) - 1, max(1, round(holdout * len(order))))
    test = [r | {"trigger_family": "held_out_forget"} for r in order[:n_test]]
    return sorted(order[n_test:], key=lambda r: r["id"]), test


def _eval_files(eval_pool: list[dict], cfg: RunConfig, rng: random.Random) -> dict[str, list[dict]]:
    d, ev = cfg.data, cfg.eval
    if not eval_pool:
        raise DataError(
            "mode clean: no clean evaluation prompts (data.eval_path is empty or every held-out training row "
            "was used or filtered out); give data.eval_path"
        )
    order = rng.sample(eval_pool, len(eval_pool))
    n_val = min(d.n_val, len(order) // 3)
    val, test = order[:n_val], order[n_val:][: d.n_test_clean]
    files = {"val_clean": val, "test_clean": test, "val_seen": [], "test_seen": [], "test_ood": []}
    if ev.triggers:
        files["val_seen"] = triggered(val, ev.triggers, "known", rng)
        files["test_seen"] = triggered(test[: d.n_test_seen], ev.triggers, "known", rng)
    if ev.ood_triggers:
        files["test_ood"] = triggered(test[: d.n_test_ood], ev.ood_triggers, "ood", rng)
    return files


def prepare_clean(cfg: RunConfig, out_dir: Path) -> dict:
    """Build and write the data directory of a clean run; returns its summary."""
    files, extra = build_clean_files(cfg)
    counts = {name: len(rows) for name, rows in files.items()}
    summary = write_data_dir(
        Path(out_dir), files, {"source": "clean", "seed": cfg.data.seed, "counts": counts} | extra
    )
    log.info("data (clean mode): " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    return summary
