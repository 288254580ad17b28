"""An experiment spec: what a study varies, as data (a YAML file under `benchmarks/specs/`).

    title: "Where the weights should pay: a retain pack that holds poison (issue 21)"
    config: configs/tiny_cpu.yaml          # the base config (paths relative to where the command runs)
    seeds: [0, 1, 2, 3, 4, 5, 6, 7]        # every cell runs once per seed (`seed=S` shifts every component seed)
    methods: [rapidun, uniform]            # the default methods of a cell
    overrides: []                          # key=value overrides of every cell
    reference: uniform                     # paired differences: every other method minus this one
    cells:                                 # name -> what this cell changes (a cell's run dirs: OUT/<name>/s<seed>)
      clean: {label: clean default, overrides: [data.retain_contamination=0]}
      contam30: {label: 30% contaminated, methods: [rapidun, rapidun_placebo, uniform],
                 overrides: [data.retain_contamination=0.3]}
    table:
      columns: {asr_seen: ASR seen, ppl_ratio: PPL ratio}   # metric -> column of the main table
      pairs: [[rapidun_placebo, rapidun]]  # more paired differences than those against the reference
      paired: [asr_seen, ppl_ratio]        # the metrics of the paired table
    description: ...                       # text under the title (what the runs hold)
    notes: ...                             # the reading, below the tables

A cell and seed is one `rapidun run CONFIG seed=S "methods=[...]" OVERRIDES... run_dir=OUT/<cell>/s<seed>`
(`Spec.command`). Metric names are those of `rapidun compare` (`asr_seen`, `ppl_ratio`, `answer_seen.answered`, ...).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from rapidun_dist.config import parse_yaml
from rapidun_dist.config.methods import ALL_METHODS
from rapidun_dist.core.errors import ConfigError

SPEC_KEYS = (
    "title",
    "config",
    "seeds",
    "methods",
    "overrides",
    "reference",
    "cells",
    "table",
    "description",
    "notes",
)
CELL_KEYS = ("label", "methods", "overrides")
TABLE_KEYS = ("columns", "pairs", "paired")
RUNNER_KEYS = ("seed", "methods", "run_dir")  # set per cell by the runner, never by an override
DEFAULT_COLUMNS = {"asr_seen": "ASR seen", "asr_ood": "ASR OOD", "ppl_ratio": "PPL ratio"}
DEFAULT_PAIRED = ("asr_seen", "asr_ood", "ppl_ratio")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_PLAIN = re.compile(r"^[\w@%+=:,./-]+$")


@dataclass(frozen=True, kw_only=True)
class Cell:
    name: str
    label: str
    methods: tuple[str, ...]
    overrides: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class Spec:
    name: str
    path: Path
    title: str
    config: str
    seeds: tuple[int, ...]
    cells: tuple[Cell, ...]
    overrides: tuple[str, ...] = ()
    reference: str | None = None
    columns: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_COLUMNS))
    pairs: tuple[tuple[str, str], ...] = ()
    paired: tuple[str, ...] = DEFAULT_PAIRED
    description: str = ""
    notes: str = ""

    def cell(self, name: str) -> Cell:
        for c in self.cells:
            if c.name == name:
                return c
        raise ConfigError(f"{self.path}: no cell {name!r}; cells: {', '.join(c.name for c in self.cells)}")

    def arguments(self, cell: Cell, seed: int | str) -> list[str]:
        """The `rapidun run` arguments of one cell and seed, without `run_dir`."""
        return [
            self.config,
            f"seed={seed}",
            f"methods=[{','.join(cell.methods)}]",
            *self.overrides,
            *cell.overrides,
        ]

    def overrides_of(self, cell: Cell, seed: int, run_dir: str | Path) -> list[str]:
        """The config overrides of one cell and seed (what `load_config(spec.config, ...)` takes)."""
        return self.arguments(cell, seed)[1:] + [f"run_dir={run_dir}"]

    def command(self, cell: Cell, seed: int | str = "S", run_dir: str | Path | None = None) -> str:
        """The shell command of one cell and seed, as a person types it (`seed=S`: every seed)."""
        args = ["rapidun", "run", *self.arguments(cell, seed)]
        return shell_join(args + ([f"run_dir={run_dir}"] if run_dir is not None else []))

    def pairs_of(self, cell: Cell) -> list[tuple[str, str]]:
        """The paired differences a cell reports: every method against the reference, then the spec's pairs."""
        ref = self.reference
        out = [(m, ref) for m in cell.methods if ref is not None and ref in cell.methods and m != ref]
        out += [p for p in self.pairs if set(p) <= set(cell.methods)]
        return list(dict.fromkeys(out))


def shell_join(args: list[str]) -> str:
    """Arguments as one shell line, double-quoting those a shell would expand (`"methods=[a,b]"`)."""
    out = []
    for a in args:
        if _PLAIN.match(a):
            out.append(a)
        elif not any(c in a for c in '"$`\\!'):
            out.append(f'"{a}"')
        else:
            out.append(shlex.quote(a))
    return " ".join(out)


def load_spec(path: str | Path) -> Spec:
    """Read and check a spec file (errors name the file and the field)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"spec file not found: {path}")
    raw = parse_yaml(path.read_text(encoding="utf-8"), str(path))
    where = str(path)
    _mapping(raw, where, SPEC_KEYS)
    for key in ("title", "config", "seeds", "cells"):
        if key not in raw:
            raise ConfigError(f"{where}: `{key}` is required")
    methods = _methods(raw.get("methods", []), f"{where}: methods")
    overrides = _overrides(raw.get("overrides", []), f"{where}: overrides")
    cells = tuple(
        _cell(name, body, methods, f"{where}: cells.{name}")
        for name, body in _items(raw["cells"], f"{where}: cells")
    )
    if not cells:
        raise ConfigError(f"{where}: cells: expected at least one cell")
    seeds = raw["seeds"]
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    ):
        raise ConfigError(f"{where}: seeds: expected a non-empty list of integers, found {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where}: seeds: {seeds} lists a seed twice")
    reference = raw.get("reference")
    if reference is not None and reference not in ALL_METHODS:
        raise ConfigError(f"{where}: reference: {reference!r} is not a method ({', '.join(ALL_METHODS)})")
    table = _table(raw.get("table") or {}, cells, f"{where}: table")
    return Spec(
        name=path.stem,
        path=path,
        title=_text(raw["title"], f"{where}: title"),
        config=_text(raw["config"], f"{where}: config"),
        seeds=tuple(seeds),
        cells=cells,
        overrides=overrides,
        reference=reference,
        description=_text(raw.get("description", ""), f"{where}: description", empty=True).strip(),
        notes=_text(raw.get("notes", ""), f"{where}: notes", empty=True).strip(),
        **table,
    )


def _mapping(raw, where: str, allowed: tuple[str, ...]) -> None:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, found {type(raw).__name__}")
    unknown = [k for k in raw if k not in allowed]
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; expected some of {', '.join(allowed)}")


def _items(raw, where: str) -> list[tuple[str, dict]]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of cell name -> cell, found {type(raw).__name__}")
    for name in raw:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(
                f"{where}: cell name {name!r} must be letters, digits, '_', '-' or '.' (a folder name)"
            )
    return [(name, body or {}) for name, body in raw.items()]


def _text(value, where: str, *, empty: bool = False) -> str:
    if not isinstance(value, str) or (not empty and not value.strip()):
        raise ConfigError(f"{where}: expected {'a' if empty else 'a non-empty'} string, found {value!r}")
    return value


def _methods(raw, where: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(m, str) for m in raw):
        raise ConfigError(f"{where}: expected a list of method names, found {raw!r}")
    unknown = [m for m in raw if m not in ALL_METHODS]
    if unknown:
        raise ConfigError(f"{where}: unknown method(s) {unknown}; methods: {', '.join(ALL_METHODS)}")
    return tuple(raw)


def _overrides(raw, where: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(o, str) and "=" in o for o in raw):
        raise ConfigError(f"{where}: expected a list of key=value strings, found {raw!r}")
    for o in raw:
        if o.split("=", 1)[0].strip() in RUNNER_KEYS:
            raise ConfigError(
                f"{where}: {o!r}: the runner sets {', '.join(RUNNER_KEYS)} per cell (use seeds/methods)"
            )
    return tuple(raw)


def _cell(name: str, body, methods: tuple[str, ...], where: str) -> Cell:
    _mapping(body, where, CELL_KEYS)
    cell_methods = _methods(body["methods"], f"{where}.methods") if "methods" in body else methods
    if not cell_methods:
        raise ConfigError(f"{where}: no methods (give the spec's `methods` or the cell's)")
    label = _text(body.get("label", name), f"{where}.label")
    return Cell(
        name=name,
        label=label,
        methods=cell_methods,
        overrides=_overrides(body.get("overrides", []), f"{where}.overrides"),
    )


def _table(raw, cells: tuple[Cell, ...], where: str) -> dict:
    _mapping(raw, where, TABLE_KEYS)
    out: dict = {}
    if "columns" in raw:
        cols = raw["columns"]
        if (
            not isinstance(cols, dict)
            or not cols
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in cols.items())
        ):
            raise ConfigError(f"{where}.columns: expected a mapping metric -> column title, found {cols!r}")
        out["columns"] = dict(cols)
    if "pairs" in raw:
        pairs = raw["pairs"]
        if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
            raise ConfigError(f"{where}.pairs: expected a list of [method, method] pairs, found {pairs!r}")
        known = {m for c in cells for m in c.methods}
        for a, b in pairs:
            if a not in known or b not in known or a == b:
                raise ConfigError(
                    f"{where}.pairs: [{a}, {b}]: two different methods of the cells ({', '.join(sorted(known))})"
                )
        out["pairs"] = tuple((a, b) for a, b in pairs)
    if "paired" in raw:
        paired = raw["paired"]
        if not isinstance(paired, list) or not paired or not all(isinstance(m, str) for m in paired):
            raise ConfigError(f"{where}.paired: expected a non-empty list of metric names, found {paired!r}")
        out["paired"] = tuple(paired)
    return out
