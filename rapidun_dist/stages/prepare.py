"""prepare: the data files (splits and packs) of the run directory; in clean mode also the model pointer.

Experiment mode builds a poisoned corpus (rapidun_dist.data.prepare); clean mode reads the user's files
(rapidun_dist.data.clean) and records where the user's model is and a hash of its files (`model/source.json`), so
every cache downstream is tied to exactly those weights.
"""

from __future__ import annotations

from pathlib import Path

from rapidun_dist.stages.base import Stage, StageContext


def run(ctx: StageContext) -> list[Path]:
    cfg, rd = ctx.cfg, ctx.rd
    if cfg.mode == "clean":
        from rapidun_dist.data.clean import prepare_clean
        from rapidun_dist.models.loading import write_model_pointer

        prepare_clean(cfg, rd.data)
        outputs = [write_model_pointer(cfg.model, rd.model)]
    else:
        from rapidun_dist.data.prepare import prepare_data

        prepare_data(cfg.data, rd.data)
        outputs = []
    return sorted(p for p in rd.data.glob("*.json*")) + outputs


STAGE = Stage(
    name="prepare",
    doc="validate the inputs, build the splits and the forget / retain packs",
    config_keys=(
        "data",
        "seed",
        "eval.triggers",
        "eval.ood_triggers",
        "model.name_or_path",
        "model.gguf_file",
    ),
    reads=(),
    writes=("data/", "model/source.json (clean mode)"),
    requires=(),
    run=run,
)
