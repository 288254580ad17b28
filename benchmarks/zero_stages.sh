#!/usr/bin/env bash
# ZeRO stages 0-3 on 2 CPU ranks: the same losses (issue 9 section 3), and the size of an unlearning checkpoint with
# and without the frozen backbone.
#
#   bash benchmarks/zero_stages.sh [RUN_DIR] [--append]
#
# RUN_DIR: a run dir of configs/tiny_cpu.yaml with prepare..weights done (default runs/tiny_cpu). Each stage runs the
# issue's command on its own fork of RUN_DIR (`python -m rapidun_dist.cli.experiments fork`: its completed upstream stages),
#   deepspeed --num_accelerators 2 launch/unlearn.py --config configs/tiny_cpu.yaml unlearn.zero_stage=S unlearn.max_steps=20
# (method rapidun, no ASR curve), then compares the per-step losses against ZeRO-0 and checks that the ZeRO-3 adapter
# loads with PEFT. The checkpoint sizes come from one process per stage saving the same engine state twice:
# everything (exclude_frozen_parameters=False, the old behaviour) and trainable tensors only (what the engine writes).
# --append makes the markdown block the current "zero_stages" section of benchmarks/results.md (the one it replaces goes
# to benchmarks/results_archive.md). Seconds are wall time on a shared machine.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${1:-runs/tiny_cpu}
APPEND=${2:-}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
export DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 PATH="$PWD/.venv/bin:$PATH"
: > "$OUT/walls"
for S in 0 1 2 3; do
  d=$OUT/zero$S
  python -m rapidun_dist.cli.experiments fork "$SRC" "$d" --stages prepare,implant,find_poison,influence,weights --only-done
  start=$(date +%s)
  deepspeed --num_accelerators 2 launch/unlearn.py --config configs/tiny_cpu.yaml run_dir="$d" \
    unlearn.zero_stage=$S unlearn.max_steps=20 methods=[rapidun] unlearn.eval_every=0 > "$d.log" 2>&1
  echo "$S $(( $(date +%s) - start ))" >> "$OUT/walls"
done
python - "$OUT" "$SRC" "$APPEND" <<'PY'
import datetime, json, subprocess, sys
from pathlib import Path

import torch

out, src, append = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "--append"
walls = dict(line.split() for line in (out / "walls").read_text().splitlines())
rows = {s: [json.loads(x) for x in (out / f"zero{s}/unlearn/metrics.jsonl").read_text().splitlines()] for s in range(4)}
summ = {s: json.loads((out / f"zero{s}/unlearn/summary.json").read_text()) for s in range(4)}
lines = []
for s in range(4):
    rel = max(abs(a["loss"] - b["loss"]) / max(abs(a["loss"]), 1e-8) for a, b in zip(rows[0], rows[s], strict=True))
    st = summ[s]["stop"]
    lines.append(f"| {s} | {walls[str(s)]} | {len(rows[s])} | {'-' if s == 0 else f'{rel:.1e}'} | {st['reason']} at {st['step']} |")

from peft import PeftModel
from transformers import AutoModelForCausalLM
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(out / "zero3/model"), str(out / "zero3/unlearn/adapter"))
b = [p for n, p in model.named_parameters() if "lora_B" in n]
moved = sum(float(p.abs().max()) > 0 for p in b)

code = r'''
import os, subprocess, sys
from rapidun_dist.config import load_config
from rapidun_dist.run.rundir import RunDir
from rapidun_dist.unlearn.engine import UnlearnRunner
run, stage = sys.argv[1], int(sys.argv[2])
cfg = load_config("configs/tiny_cpu.yaml", [f"run_dir={run}", f"unlearn.zero_stage={stage}", "unlearn.max_steps=2",
                                            "unlearn.val_every=0", "unlearn.eval_every=0"])
rd = RunDir(run)
r = UnlearnRunner(cfg=cfg, method="rapidun", model_dir=rd.model, data_dir=rd.data, weights_dir=rd.weights,
                  out_dir=rd.root / f"ck{stage}").setup()
r.train()
sizes = []
for trainable_only in (False, True):
    d = rd.root / f"ck{stage}" / f"only{int(trainable_only)}"
    r._trainable_only = trainable_only
    r.engine.save_checkpoint(str(d), tag="t", save_latest=False, exclude_frozen_parameters=trainable_only)
    sizes.append(int(subprocess.run(["du", "-sb", str(d)], capture_output=True, text=True).stdout.split()[0]))
r.cleanup()
print("SIZES", *sizes)
'''
sizes = {}
for s in (2, 3):
    res = subprocess.run([sys.executable, "-c", code, str(out / "zero0"), str(s)], capture_output=True, text=True)
    line = [x for x in res.stdout.splitlines() if x.startswith("SIZES")]
    if not line:
        sys.exit(f"checkpoint size run failed for ZeRO-{s}:\n{res.stderr[-3000:]}")
    sizes[s] = tuple(int(v) for v in line[0].split()[1:])
n_frozen = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
n_lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)

stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
md = [
    f"## ZeRO stages 0-3 on 2 CPU ranks, ZeRO-2 default, checkpoints without the backbone, {stamp}",
    "",
    f"`bash benchmarks/zero_stages.sh {src}`: per stage `deepspeed --num_accelerators 2 launch/unlearn.py --config",
    "configs/tiny_cpu.yaml run_dir=COPY unlearn.zero_stage=S unlearn.max_steps=20 methods=[rapidun] unlearn.eval_every=0`",
    f"on copies of {src} (prepare..weights done). torch {torch.__version__}, gloo, one thread per rank, shared 2-core",
    "machine (wall seconds include the launcher, model loading and DeepSpeed set-up; treat them as upper bounds).",
    "Budget as in the YAML (adaptive; val_seen empty in experiment mode, so the fixed fallback; damage guard on).",
    "",
    "| stage | wall s | steps | max relative loss difference vs ZeRO-0 | stop |",
    "|---|---|---|---|---|",
    *lines,
    "",
    f"ZeRO-3 adapter: loads with `PeftModel.from_pretrained(base, DIR/unlearn/adapter)`; {moved}/{len(b)} lora_B moved.",
    "",
    f"Checkpoint of one engine state (model {n_frozen:,} frozen + {n_lora:,} LoRA parameters, fp32, 1 process):",
    "",
    "| stage | everything (before) bytes | trainable only (now) bytes | ratio |",
    "|---|---|---|---|",
    *[f"| {s} | {a:,} | {b_:,} | {b_ / a:.2f} |" for s, (a, b_) in sizes.items()],
    "",
    "The saved trainable state is the LoRA adapter and its Adam moments (3 x the LoRA parameters); what is left out",
    "is the frozen backbone (and, for a model with tied embeddings, the lm_head alias DeepSpeed's own",
    "`exclude_frozen_parameters` keeps). On Llama-3-8B that is the 16 GB bf16 backbone per checkpoint.",
    "",
]
text = "\n".join(md)
print(text)
if append:
    from rapidun_dist.cli.experiments.page import publish

    publish("zero_stages", text, "benchmarks")
PY
