#!/usr/bin/env bash
# Build .whl/: DeepSpeed and the packages it imports at import time that the GPU machine's image lacks
# (hjson, pydantic, pydantic_core, annotated_types, typing_inspection; typing_extensions at the version
# pydantic needs). The GPU machine has no network: benchmarks/gpu_proof.sh installs from this folder, which
# the device command carries (the device tool's `carry: [".whl"]`).
#
#   bash scripts/device_wheels.sh            # writes .whl/ (git-ignored, 7 MB); nothing to do when it is up to date
#   bash scripts/device_wheels.sh DIR        # another folder
#   FORCE=1 bash scripts/device_wheels.sh    # rebuild anyway
#
# DeepSpeed is an sdist: `pip wheel` builds it here into a pure-Python wheel (DS_BUILD_OPS=0, its ops
# JIT-compile on first use). pydantic_core is the one binary: one wheel for the device's CPython 3.12 and one
# for this machine's Python, so the CPU dry run (`gpu_proof.sh --dry-run`) installs from the same folder with
# the same command; pip picks the wheel whose tags match. `.whl/requirements.txt` names one version of each.
# The image already holds the rest of DeepSpeed's requirements (einops, msgpack, ninja, numpy, packaging,
# psutil, py-cpuinfo, torch, tqdm: the package list of the GPU image, as the device tool documents it).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.whl}
PY=${PYTHON:-python3}
DEVICE_PY=3.12
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64)
PURE=(hjson==3.1.0 pydantic==2.14.4 annotated_types==0.8.0 typing_inspection==0.4.5 typing_extensions==4.16.0)
CORE=pydantic_core==2.50.5 # the version pydantic 2.14.4 pins
MAX_MB=10

WANT=$(printf '%s\n' deepspeed==0.19.8 "${PURE[@]}" "$CORE")
HERE_TAG=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
if [ "${FORCE:-0}" != 1 ] && [ "$(cat "$DEST/requirements.txt" 2>/dev/null)" = "$WANT" ] &&
  ls "$DEST"/deepspeed-0.19.8-py3-none-any.whl "$DEST"/pydantic_core-*-{cp312,"$HERE_TAG"}-*.whl >/dev/null 2>&1; then
  echo "device_wheels: $DEST is up to date ($(du -sh "$DEST" | cut -f1))"
  exit 0
fi
TMP=$(mktemp -d "${DEST%/}.tmp.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
PIP=("$PY" -m pip --disable-pip-version-check)

DS_BUILD_OPS=0 "${PIP[@]}" wheel -q --no-deps -w "$TMP" deepspeed==0.19.8
"${PIP[@]}" download -q --no-deps --only-binary=:all: -d "$TMP" "${PURE[@]}"
HERE_PY=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
for pyv in $(printf '%s\n' "$DEVICE_PY" "$HERE_PY" | sort -u); do
  "${PIP[@]}" download -q --no-deps --only-binary=:all: --python-version "$pyv" --implementation cp \
    "${PLATFORMS[@]/#/--platform=}" -d "$TMP" "$CORE"
done

# One line per distribution: gpu_proof.sh installs `-r requirements.txt --find-links .whl`, by name.
echo "$WANT" >"$TMP/requirements.txt"
[ -f "$TMP/deepspeed-0.19.8-py3-none-any.whl" ] || {
  echo "device_wheels: the deepspeed wheel is not pure Python: $(ls "$TMP")" >&2
  exit 1
}
MB=$(du -sm "$TMP" | cut -f1)
if [ "$MB" -gt "$MAX_MB" ]; then
  echo "device_wheels: $DEST would be ${MB} MB (limit ${MAX_MB} MB)" >&2
  exit 1
fi
rm -rf "$DEST"
mv "$TMP" "$DEST"
trap - EXIT
echo "device_wheels: $DEST ($(du -sh "$DEST" | cut -f1)): $(cd "$DEST" && ls -- *.whl | tr '\n' ' ')"
