"""`python -m rapidun_dist.cli.experiments COMMAND ...`: run a spec, collect its results, render the results page.

run SPEC --out OUT [--cells A,B] [--seeds 0,1] [--dry-run]   rapidun run per cell and seed (done ones skipped)
collect SPEC --out OUT [--cell-dir CELL=DIR ...] [--results PATH] [--no-render]
                                                             finished run dirs -> benchmarks/results/SPEC.json,
                                                             then the page (a replaced section is archived)
render [--bench benchmarks]                                  benchmarks/results.md from benchmarks/results/
publish KEY [--title TITLE] [--bench benchmarks] < SECTION.md  a script's section becomes the current one
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rapidun_dist.core.errors import RapidUnError
from rapidun_dist.core.logging import get_logger

log = get_logger("experiments")


def _csv(text: str | None) -> list[str] | None:
    return [x.strip() for x in text.split(",") if x.strip()] if text else None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rapidun_dist.cli.experiments", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run every cell and seed of a spec that is not done yet")
    run.add_argument("spec", type=Path)
    run.add_argument("--out", required=True, type=Path, help="run dirs go to OUT/<cell>/s<seed>")
    run.add_argument("--cells", help="comma-separated cells (default: all)")
    run.add_argument("--seeds", help="comma-separated seeds (default: the spec's)")
    run.add_argument("--dry-run", action="store_true", help="say what would run, run nothing")
    col = sub.add_parser("collect", help="read a spec's finished run dirs into its results JSON")
    col.add_argument("spec", type=Path)
    col.add_argument(
        "--out", required=True, type=Path, help="where `run` put the run dirs (OUT/<cell>/s<seed>)"
    )
    col.add_argument("--cell-dir", action="append", default=[], metavar="CELL=DIR",
                     help="a cell's runs elsewhere: DIR/s<seed> (made by hand, or under another name)")  # fmt: skip
    col.add_argument("--results", type=Path, help="default: benchmarks/results/<spec>.json beside the specs")
    col.add_argument("--no-render", action="store_true", help="write the JSON only, not the page")
    ren = sub.add_parser("render", help="write benchmarks/results.md from benchmarks/results/")
    ren.add_argument("--bench", type=Path, default=Path("benchmarks"))
    pub = sub.add_parser("publish", help="a section from stdin becomes the current section KEY of the page")
    pub.add_argument("key")
    pub.add_argument("--title", help="the section's title when the text has no '## ' line of its own")
    pub.add_argument("--bench", type=Path, default=Path("benchmarks"))
    fork = sub.add_parser("fork", help="a new run dir from another's completed stages (RunDir.fork)")
    fork.add_argument("src", type=Path)
    fork.add_argument("dst", type=Path)
    fork.add_argument("--stages", required=True, help="comma-separated stages to carry")
    fork.add_argument(
        "--only-done", action="store_true", help="carry those of --stages done in SRC, skip the rest"
    )
    fork.add_argument(
        "--link", action="store_true", help="hard-link the files (a fork that reruns none of them)"
    )
    fork.add_argument("--replace", action="store_true", help="remove DST first when it exists")
    return p


def _run(args) -> None:
    from rapidun_dist.cli.experiments.runner import run_spec
    from rapidun_dist.cli.experiments.spec import load_spec

    spec = load_spec(args.spec)
    seeds = [int(s) for s in _csv(args.seeds) or []] or None
    run_spec(spec, args.out, cells=_csv(args.cells), seeds=seeds, dry_run=args.dry_run)
    if not args.dry_run:
        log.info(f"next: python -m rapidun_dist.cli.experiments collect {args.spec} --out {args.out}")


def _collect(args) -> None:
    from rapidun_dist.cli.experiments.page import replace_results, write_page
    from rapidun_dist.cli.experiments.results import collect, results_path
    from rapidun_dist.cli.experiments.spec import load_spec

    spec = load_spec(args.spec)
    cell_dirs = dict(item.split("=", 1) for item in args.cell_dir if "=" in item)
    if len(cell_dirs) != len(args.cell_dir):
        raise RapidUnError(f"--cell-dir: expected CELL=DIR, found {args.cell_dir}")
    shown = " ".join(["python -m rapidun_dist.cli.experiments collect", args.spec.as_posix(), "--out OUT",
                      *(f"--cell-dir {c}=DIR" for c in cell_dirs)])  # fmt: skip
    results = collect(spec, args.out, cell_dirs=cell_dirs, command=shown)
    path = args.results or results_path(spec)
    bench = path.resolve().parent.parent
    replace_results(bench, path, results)
    log.info(
        f"{spec.name}: results of {sum(c['n_runs'] for c in results['cells'].values())} runs written to {path}"
    )
    if not args.no_render:
        log.info(f"results page written to {write_page(bench)}")


def _fork(args) -> None:
    from rapidun_dist.cli.experiments.runner import done_stages
    from rapidun_dist.run.rundir import RunDir

    src, stages = RunDir(args.src), _csv(args.stages) or []
    carried = done_stages(src, stages) if args.only_done else stages
    src.fork(args.dst, carried, link=args.link, replace=args.replace)
    log.info(f"fork: {args.dst} carries {', '.join(carried)} of {args.src}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            _run(args)
        elif args.command == "collect":
            _collect(args)
        elif args.command == "fork":
            _fork(args)
        elif args.command == "render":
            from rapidun_dist.cli.experiments.page import write_page

            log.info(f"results page written to {write_page(args.bench)}")
        else:
            from rapidun_dist.cli.experiments.page import publish

            log.info(
                f"section {args.key} published: {publish(args.key, sys.stdin.read(), args.bench, title=args.title)}"
            )
        return 0
    except RapidUnError as e:
        log.error(f"error: {e}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
