#!/usr/bin/env bash
# ZeRO stage equivalence on 2 CPU ranks (issue: stages 0-3 log the same losses; the ZeRO-3 adapter loads with PEFT).
#
#   bash benchmarks/zero_stages.sh [RUN_DIR]   # RUN_DIR: a run dir with prepare..weights done (default runs/tiny_cpu)
#
# Each stage runs `deepspeed --num_accelerators 2 launch/unlearn.py ... unlearn.max_steps=20` on its own copy of
# RUN_DIR, then the per-step losses are compared against ZeRO-0.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${1:-runs/tiny_cpu}
OUT=$(mktemp -d)
export DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 PATH="$PWD/.venv/bin:$PATH"
for S in 0 1 2 3; do
  d=$OUT/zero$S; cp -r "$SRC" "$d"; rm -rf "$d/unlearn"
  start=$(date +%s)
  deepspeed --num_accelerators 2 launch/unlearn.py --config configs/tiny_cpu.yaml run_dir="$d" \
    unlearn.zero_stage=$S unlearn.max_steps=20 methods=[rapidun] unlearn.eval_every=0 > "$d.log" 2>&1
  echo "zero$S: $(( $(date +%s) - start )) s wall (launcher + 2 ranks)"
done
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = {s: [json.loads(x) for x in (out / f"zero{s}/unlearn/metrics.jsonl").read_text().splitlines()] for s in range(4)}
print("steps:", len(rows[0]), "first losses:", [round(r["loss"], 5) for r in rows[0][:5]])
for s in (1, 2, 3):
    rel = max(abs(a["loss"] - b["loss"]) / max(abs(a["loss"]), 1e-8) for a, b in zip(rows[0], rows[s], strict=True))
    print(f"zero{s}: max relative loss difference vs zero0 = {rel:.2e}")
from peft import PeftModel
from transformers import AutoModelForCausalLM
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(out / "zero3/model"), str(out / "zero3/unlearn/adapter"))
b = [p for n, p in model.named_parameters() if "lora_B" in n]
print(f"zero3 adapter loads with PeftModel.from_pretrained; lora_B moved: {sum(float(p.abs().max()) > 0 for p in b)}/{len(b)}")
PY
rm -rf "$OUT"
