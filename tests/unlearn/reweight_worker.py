"""Dynamic reweighting on N ranks, for test_unlearn_reweight.py: two optimizer steps with a refresh after the first,
then every rank computes the pack features again; rank 0 saves them and the refreshed weights.

    torchrun --nproc_per_node N reweight_worker.py OUT.safetensors --config CONFIG run_dir=... [k=v ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

from safetensors.torch import save_file

from rapidun_dist.config import load_config
from rapidun_dist.run.rundir import RunDir
from rapidun_dist.unlearn.engine import UnlearnRunner, warm_up


def main(argv: list[str]) -> None:
    out, config, overrides = Path(argv[0]), argv[2], argv[3:]
    cfg = load_config(config, overrides)
    warm_up()  # as the unlearn stage does: DeepSpeed's communication backend first
    rd = RunDir(Path(cfg.run_dir))
    runner = UnlearnRunner(
        cfg=cfg, method="rapidun", model_dir=rd.model, data_dir=rd.data, weights_dir=rd.weights,
        out_dir=out.parent / f"unlearn_{out.stem}",
    ).setup()  # fmt: skip
    try:
        runner.train()
        f, r, _ = runner.pack_features()
        if runner.info.rank == 0:
            tensors = {"forget": f, "retain": r, "forget_w": runner.m.ascent_w, "retain_w": runner.m.retain_w}
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(out))
    finally:
        runner.cleanup()


if __name__ == "__main__":
    main(sys.argv[1:])
