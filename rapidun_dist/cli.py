"""`rapidun` command line.

rapidun run CONFIG [key=value ...] [--stages prepare,implant,...] [--force]
rapidun prepare|implant|influence|weights|unlearn|evaluate CONFIG [key=value ...] [--force]
rapidun weights --rapidin-dir DIR [--reference] --out OUT [CONFIG] [key=value ...]
"""

from __future__ import annotations

import argparse
import sys

from rapidun_dist.errors import RapidUnError
from rapidun_dist.logging import get_logger
from rapidun_dist.rundir import STAGES


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rapidun", description="Influence-weighted LoRA unlearning of LLM backdoors."
    )
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the pipeline stages in order")
    run.add_argument(
        "--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}"
    )
    for name in ("run", *STAGES):
        sp = run if name == "run" else sub.add_parser(name, help=f"run the {name} stage")
        sp.add_argument("config", nargs="?", help="YAML config (defaults when omitted)")
        sp.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. unlearn.lr=1e-4")
        sp.add_argument("--force", action="store_true", help="rerun even if the outputs are complete")
        if name == "weights":
            sp.add_argument("--rapidin-dir", help="import RapidIn influence files from this folder instead")
            sp.add_argument(
                "--reference",
                action="store_true",
                help="reference aggregation (median of top-40, self included)",
            )
            sp.add_argument("--out", help="output folder for --rapidin-dir")
    return p


def _split_config(args) -> tuple[str | None, list[str]]:
    """Allow `rapidun run key=value` without a config file."""
    if args.config and "=" in args.config and not args.config.endswith((".yaml", ".yml")):
        return None, [args.config, *args.overrides]
    return args.config, list(args.overrides)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    log = get_logger("cli")
    try:
        from rapidun_dist.config import load_config

        path, overrides = _split_config(args)
        cfg = load_config(path, overrides)
        if args.command == "weights" and args.rapidin_dir:
            return _weights_from_rapidin(args, cfg)
        from rapidun_dist.pipeline import run_pipeline

        stages = args.stages.split(",") if args.command == "run" else [args.command]
        rd = run_pipeline(cfg, [s.strip() for s in stages if s.strip()], force=args.force)
        report = rd.eval / "report.md"
        if "evaluate" in stages and report.exists():
            log.info(f"report: {report}")
        return 0
    except RapidUnError as e:
        log.error(f"error: {e}")
        return 2


def _weights_from_rapidin(args, cfg) -> int:
    from rapidun_dist.errors import ConfigError
    from rapidun_dist.weights.rapidin import main_weights_from_rapidin

    if not args.out:
        raise ConfigError("--out is required with --rapidin-dir")
    main_weights_from_rapidin(args.rapidin_dir, args.out, args.reference, cfg.weights)
    return 0


if __name__ == "__main__":
    sys.exit(main())
