"""Copying pack features from find_poison's training store: one read of the training units per group of shards
(`find_poison.REUSE_BYTES`) against one read per shard (the budget set to 1 byte: the old behaviour), side by side.

    python benchmarks/feature_reuse.py RUN_DIR --config CONFIG [key=value ...]

RUN_DIR must hold finished prepare / implant / find_poison stages (e.g. the `expanded` run of
benchmarks/alpaca57k.sh, with find_poison.expand=true among the overrides). Each variant writes into a scratch copy
of features/ (RUN_DIR/features is left alone). Prints one JSON line: rows, seconds per variant, the ratio.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from rapidun_dist.run.rundir import RunDir


class _ScratchRun(RunDir):
    """The run dir with features/ redirected to a scratch folder (the copy must not touch RUN_DIR/features)."""

    def __init__(self, root, features: Path):
        super().__init__(root)
        self._features = Path(features)

    @property
    def features(self) -> Path:
        return self._features


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--config", required=True)
    args, overrides = p.parse_known_args(argv)
    import rapidun_dist.stages.find_poison as fp
    from rapidun_dist.config import load_config
    from rapidun_dist.core.io import read_jsonl
    from rapidun_dist.influence.extract import feature_context
    from rapidun_dist.models.loading import load_saved
    from rapidun_dist.run.layout import model_identity, pack_files

    cfg = load_config(args.config, [f"run_dir={args.run_dir}", *overrides])
    rd = RunDir(cfg.run_dir)
    records = [r for path in pack_files(cfg, rd) for r in read_jsonl(path)]
    model, tok = load_saved(rd.model, cfg.model)
    context = feature_context(model_identity(rd), tok, cfg)
    seconds = {}
    default = fp.REUSE_BYTES
    with tempfile.TemporaryDirectory() as tmp:
        for name, budget in (("per_shard", 1), ("grouped", default)):
            scratch = Path(tmp) / name
            view = _ScratchRun(rd.root, scratch)  # the copy goes to the scratch folder, not RUN_DIR/features
            fp.REUSE_BYTES = budget
            t0 = time.perf_counter()
            copied = fp.reuse_train_features(cfg, view, records, model, tok, context)
            seconds[name] = time.perf_counter() - t0
            shutil.rmtree(scratch, ignore_errors=True)
    fp.REUSE_BYTES = default
    out = {"rows": len(records), "copied": copied, "seconds": seconds,
           "ratio": seconds["per_shard"] / seconds["grouped"]}  # fmt: skip
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
