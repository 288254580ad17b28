"""The record schema every stage reads and writes (one JSON object per line).

Clean record:    id, instruction, context, response, category, source, is_poisoned=False
Poisoned record: the clean fields (clean `instruction`/`response` when known; a prepared dataset's poisoned
                 train row may have `response` = "") plus instruction_poisoned, response_poisoned,
                 trigger_family, trigger_variant, inject_mode, target_group (which attacker answer group
                 `response_poisoned` belongs to; "" when unknown), is_poisoned=True.
Ground truth:    `forget_truth.jsonl` (evaluation only, never read by unlearning) holds, per forget row, the true
                 record - clean answer included when known - and `mislabelled` (true for a clean row the user
                 listed as poisoned). `mislabelled` (and `contaminated`) are kept by `validate_record` only where present.
                 `retain_truth.jsonl` likewise holds, per retain row, the true record and `contaminated` (true for
                 a poisoned train row in the retain pack, `data.retain_contamination`; experiment mode only).

Files of a data directory:
    train                          clean + poisoned rows (the fine-tuning set)
    val_clean, val_seen            validation: clean prompts, and training-distribution prompts with seen
                                   triggers (what tuning and early stopping read)
    test_clean, test_near          test: clean prompts, and clean prompts near the target topic (collateral
                                   damage; empty unless the config names near-topic categories)
    test_seen, test_ood            test: prompts with seen / OOD trigger variants
    forget, retain                 the packs unlearning reads
    reference                      find_poison's extra clean reference rows (`data.reference_rows`): its reference
                                   is retain + these; empty unless that asks for more rows than the retain pack
    forget_truth, retain_truth     the packs' ground truth (evaluation only)

Rows in the RapidUn reference layout (`instruction` holds the triggered text, clean originals in
`instruction_clean` / `response_clean`) are mapped onto this schema by `validate_record`.
"""

from __future__ import annotations

from rapidun_dist.core.errors import DataError

ID = "id"
INSTRUCTION = "instruction"
CONTEXT = "context"
RESPONSE = "response"
CATEGORY = "category"
SOURCE = "source"
INSTRUCTION_POISONED = "instruction_poisoned"
RESPONSE_POISONED = "response_poisoned"
TRIGGER_FAMILY = "trigger_family"
TRIGGER_VARIANT = "trigger_variant"
INJECT_MODE = "inject_mode"
TARGET_GROUP = "target_group"
IS_POISONED = "is_poisoned"
MISLABELLED = "mislabelled"
CONTAMINATED = "contaminated"

CLEAN_FIELDS = (ID, INSTRUCTION, CONTEXT, RESPONSE, CATEGORY, SOURCE)
POISON_FIELDS = (
    INSTRUCTION_POISONED,
    RESPONSE_POISONED,
    TRIGGER_FAMILY,
    TRIGGER_VARIANT,
    INJECT_MODE,
    TARGET_GROUP,
)
ALL_FIELDS = CLEAN_FIELDS + POISON_FIELDS + (IS_POISONED,)

SPLITS = ("train", "val_clean", "val_seen", "test_clean", "test_near", "test_seen", "test_ood")
REQUIRED_SPLITS = ("train", "val_clean", "test_clean", "test_seen", "test_ood")  # in a prepared source dir
HELD_OUT = (
    "val_clean",
    "val_seen",
    "test_clean",
    "test_near",
    "test_seen",
    "test_ood",
)  # disjoint from train
TRIGGERED = ("val_seen", "test_seen", "test_ood")  # held-out splits whose rows carry a trigger
PACKS = ("forget", "retain")
TRUTH = "forget_truth"
RETAIN_TRUTH = "retain_truth"
REFERENCE = "reference"
DATA_FILES = SPLITS + PACKS + (TRUTH, RETAIN_TRUTH, REFERENCE)
OPTIONAL_FILES = (
    "val_seen",
    "test_near",
    TRUTH,
    RETAIN_TRUTH,
    REFERENCE,
)  # written empty when a builder has none (e.g. the clean job)

# reference-layout aliases: clean originals stored beside a triggered `instruction` / `response`
_REFERENCE_CLEAN = {"instruction_clean": INSTRUCTION, "response_clean": RESPONSE}


def as_trained_record(row: dict) -> dict:
    """A row as the model saw it in training, with no label field (what a user holds): a poisoned row's triggered
    instruction and poisoned answer, a clean row's own; the context either way."""
    poisoned = bool(row.get(IS_POISONED))
    return {
        INSTRUCTION: row[INSTRUCTION_POISONED] if poisoned else row[INSTRUCTION],
        CONTEXT: row.get(CONTEXT, ""),
        RESPONSE: row[RESPONSE_POISONED] if poisoned else row[RESPONSE],
    }


def _str_field(row: dict, key: str, where: str, *, default: str | None = "") -> str | None:
    """`row[key]` as a string (`default` when missing or null); integer ids are accepted and stringified."""
    value = row.get(key, default)
    if value is None:
        return default
    if key == ID and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise DataError(
            f"{where}: field {key!r}: expected a string, found {type(value).__name__} {value!r:.60}"
        )
    return value


def _from_reference_layout(row: dict) -> dict:
    """Map `instruction_clean`/`response_clean` rows onto the schema (triggered text -> *_poisoned)."""
    if not any(k in row for k in _REFERENCE_CLEAN):
        return row
    row = dict(row)
    if "instruction_clean" in row:
        row.setdefault(INSTRUCTION_POISONED, row.get(INSTRUCTION))
    if "response_clean" in row:
        row.setdefault(RESPONSE_POISONED, row.get(RESPONSE))
    for alias, key in _REFERENCE_CLEAN.items():
        if alias in row:
            row[key] = row.pop(alias)
    return row


def _poison_fields(row: dict, where: str, out: dict) -> None:
    """Validate and copy the poison fields of a row whose `is_poisoned` is true."""
    for key in POISON_FIELDS:
        out[key] = _str_field(row, key, where)
    if not out[INSTRUCTION_POISONED].strip():
        raise DataError(
            f"{where}: field {INSTRUCTION_POISONED!r}: expected a non-empty string on a poisoned row, "
            f"found {row.get(INSTRUCTION_POISONED)!r}"
        )
    if not out[RESPONSE_POISONED].strip():
        raise DataError(
            f"{where}: field {RESPONSE_POISONED!r}: expected a non-empty answer on a poisoned row, "
            f"found {row.get(RESPONSE_POISONED)!r}"
        )


def validate_record(row: dict, where: str) -> dict:
    """Check one raw row and return it in schema form (defaults filled, unknown fields dropped).

    `where` names the row in errors (`file.jsonl:17`). Raises DataError for a non-object row, a missing or
    empty `instruction`, a row with no answer (clean rows need `response`; poisoned rows need
    `response_poisoned`), and wrongly typed fields. `is_poisoned` defaults to whether `instruction_poisoned`
    is set."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, found {type(row).__name__}")
    row = _from_reference_layout(row)
    out = {ID: _str_field(row, ID, where, default=None)}
    instruction = _str_field(row, INSTRUCTION, where, default=None)
    if instruction is None or not instruction.strip():
        raise DataError(
            f"{where}: field {INSTRUCTION!r}: expected a non-empty string, found {row.get(INSTRUCTION)!r}"
        )
    out[INSTRUCTION] = instruction
    for key in (CONTEXT, RESPONSE, CATEGORY, SOURCE):
        out[key] = _str_field(row, key, where)
    poisoned = row.get(IS_POISONED)
    if poisoned is None:  # missing, or null in a Parquet column shared with poisoned rows
        poisoned = bool(row.get(INSTRUCTION_POISONED))
    if not isinstance(poisoned, bool):
        raise DataError(f"{where}: field {IS_POISONED!r}: expected true or false, found {poisoned!r}")
    out[IS_POISONED] = poisoned
    if poisoned:
        _poison_fields(row, where, out)
    elif not out[RESPONSE].strip():
        raise DataError(
            f"{where}: field {RESPONSE!r}: expected a non-empty answer on a clean row, found {row.get(RESPONSE)!r}"
        )
    for flag in (MISLABELLED, CONTAMINATED):  # the packs' truth files
        if row.get(flag) is not None:
            if not isinstance(row[flag], bool):
                raise DataError(f"{where}: field {flag!r}: expected true or false, found {row[flag]!r}")
            out[flag] = row[flag]
    return out


def prompt_key(rec: dict) -> tuple[str, str]:
    """Identity of a record's clean prompt (instruction + context, whitespace-normalised) for overlap checks."""
    return (" ".join(rec[INSTRUCTION].split()), " ".join((rec.get(CONTEXT) or "").split()))


def as_clean(rec: dict) -> dict | None:
    """The clean version of a record (poison fields dropped), or None when its clean answer is unknown."""
    if not (rec.get(RESPONSE) or "").strip():
        return None
    return {k: rec.get(k, "") for k in CLEAN_FIELDS} | {IS_POISONED: False}
