"""`rapidun` command line.

    rapidun run CONFIG [key=value ...] [--stages prepare,implant,...] [--force]
    rapidun validate CONFIG [key=value ...] [--world-size N]     resolved config, derived numbers, checks; runs nothing
    rapidun validate --doc KEY [CONFIG] [key=value ...]          a key's (or a whole section's) type, default and
                                                                 documentation; with CONFIG also its value there
    rapidun prepare|implant|find-poison|influence|weights|unlearn|evaluate CONFIG [key=value ...] [--force]
    rapidun weights --rapidin-dir DIR [--reference] --out OUT [CONFIG] [key=value ...]
    rapidun compare OUT [LABEL=]REPORT_OR_RUN_DIR ...              mean and 95% interval per method over runs
    rapidun --version

Options and `key=value` overrides may come in any order (`parse_intermixed_args`).
"""

from __future__ import annotations

import argparse
import sys

from rapidun_dist.core.errors import RapidUnError
from rapidun_dist.core.logging import get_logger

COMMANDS = {
    "run": "run the stages of the config's mode in order",
    "compare": "compare several runs' reports (seeds, protocols): mean and 95% interval per method",
    "validate": "print the resolved config and derived numbers and check every rule; runs nothing",
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rapidun_dist")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _stage_docs() -> dict[str, str]:
    """Stage commands: the stage name with "-" for "_" (`rapidun find-poison CONFIG`)."""
    from rapidun_dist.stages import ORDER

    return {command_name(s.name): s.doc for s in ORDER}


def command_name(stage: str) -> str:
    return stage.replace("_", "-")


def stage_name(name: str) -> str:
    """A stage named on the command line (`find-poison` or `find_poison`) -> its stage name."""
    return name.strip().replace("-", "_")


def _top_parser() -> argparse.ArgumentParser:
    cmds = COMMANDS | _stage_docs()
    p = argparse.ArgumentParser(
        prog="rapidun",
        description="Influence-weighted LoRA unlearning of LLM backdoors.",
        epilog="commands:\n" + "\n".join(f"  {k:<11} {v}" for k, v in cmds.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"rapidun_dist {_version()}")
    p.add_argument("command", choices=list(cmds), metavar="COMMAND", help="one of the commands below")
    return p


def _command_parser(command: str) -> argparse.ArgumentParser:
    from rapidun_dist.stages import STAGE_NAMES

    sp = argparse.ArgumentParser(prog=f"rapidun {command}", description=(COMMANDS | _stage_docs())[command])
    sp.add_argument("config", nargs="?", help="YAML config (defaults when omitted)")
    sp.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. unlearn.lr=1e-4")
    if command == "run":
        sp.add_argument(
            "--stages", help=f"comma-separated subset of {','.join(STAGE_NAMES)} (default: all of the mode's)"
        )
    if command == "validate":
        sp.add_argument(
            "--world-size", type=int, default=1, help="ranks the launch will use (batch divisibility)"
        )
        sp.add_argument(
            "--doc",
            metavar="KEY",
            help="print the documentation of KEY, a key (unlearn.lr) or every key of a section (unlearn): type, "
            "default, what it does, and with CONFIG or overrides its value there; checks nothing else",
        )
    else:
        sp.add_argument("--force", action="store_true", help="rerun even if the outputs are complete")
    if command == "weights":
        sp.add_argument("--rapidin-dir", help="import RapidIn influence files from this folder instead")
        sp.add_argument(
            "--reference", action="store_true", help="reference aggregation (median of top-40, self included)"
        )
        sp.add_argument("--out", help="output folder for --rapidin-dir")
    return sp


def _split_config(args) -> tuple[str | None, list[str]]:
    """Allow `rapidun run key=value` without a config file."""
    if args.config and "=" in args.config and not args.config.endswith((".yaml", ".yml")):
        return None, [args.config, *args.overrides]
    return args.config, list(args.overrides)


def parse(argv: list[str]) -> tuple[str, argparse.Namespace]:
    top = _top_parser()
    if not argv or argv[0].startswith("-"):
        top.parse_args(argv)  # --help / --version exit here; anything else is an error
        top.error("expected a command")
    from rapidun_dist.stages import STAGE_NAMES

    if argv[0] in STAGE_NAMES:  # `rapidun find_poison` works as well as `rapidun find-poison`
        argv = [command_name(argv[0]), *argv[1:]]
    command = top.parse_args(argv[:1]).command
    return command, _command_parser(command).parse_intermixed_args(argv[1:])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        from rapidun_dist.evaluation.compare import main as compare_main

        return compare_main(argv[1:])
    command, args = parse(argv)
    log = get_logger("cli")
    try:
        from rapidun_dist.config import load_config

        path, overrides = _split_config(args)
        if command == "validate" and args.doc is not None:
            return _print_key_docs(args.doc, path, overrides)
        cfg = load_config(path, overrides)
        if command == "validate":
            return _validate(cfg, args.world_size)
        if command == "weights" and args.rapidin_dir:
            return _weights_from_rapidin(args, cfg)
        from rapidun_dist.pipeline import run_pipeline

        stages = None
        if command == "run" and args.stages:
            stages = [stage_name(s) for s in args.stages.split(",") if s.strip()]
        elif command != "run":
            stages = [stage_name(command)]
        rd = run_pipeline(cfg, stages, force=args.force)
        if (rd.eval / "report.md").exists() and (stages is None or "evaluate" in stages):
            log.info(f"report: {rd.eval / 'report.md'}")
        return 0
    except RapidUnError as e:
        log.error(f"error: {e}")
        return 2


def _validate(cfg, world_size: int) -> int:
    from rapidun_dist.config import dump_config
    from rapidun_dist.validate import check_run

    numbers = check_run(cfg, world_size=world_size)
    sys.stdout.write(dump_config(cfg))
    sys.stdout.write("# derived (computed from the config and the inputs; nothing was run)\n")
    sys.stdout.write("".join(f"#   {k}: {v}\n" for k, v in numbers.items()))
    sys.stdout.write("# ok: every check passed\n")
    return 0


def _print_key_docs(key: str, path: str | None, overrides: list[str]) -> int:
    """`rapidun validate --doc KEY`: one entry per key (rapidun_dist.config.docs.key_docs); with a config file or
    overrides also the value each key has in that config."""
    from rapidun_dist.config import load_config
    from rapidun_dist.config.docs import SECTION, key_docs, value_of, yaml_text

    docs = key_docs(key)
    cfg = load_config(path, overrides) if path is not None or overrides else None
    for i, d in enumerate(docs):
        lines = [d.key, f"    type:    {d.type}"]
        if d.type != SECTION:
            lines.append(f"    default: {d.default}")
            if cfg is not None:
                lines.append(f"    value:   {yaml_text(value_of(cfg, d.key))}")
        lines += [f"    {line}" for line in d.doc.splitlines()]
        sys.stdout.write(("\n" if i else "") + "\n".join(lines) + "\n")
    return 0


def _weights_from_rapidin(args, cfg) -> int:
    from rapidun_dist.core.errors import ConfigError
    from rapidun_dist.weights.rapidin import main_weights_from_rapidin

    if not args.out:
        raise ConfigError("--out is required with --rapidin-dir")
    main_weights_from_rapidin(args.rapidin_dir, args.out, args.reference, cfg.weights)
    return 0


if __name__ == "__main__":
    sys.exit(main())
