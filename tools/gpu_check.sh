#!/usr/bin/env bash
# The prepared device call (issue 28; docs/gpu.md): installs the wheels carried in .device/whl, unpacks the NDSB
# images carried in .device/ndsb.tar.gz, then runs `deepsea gpu-check` for what is left of MINUTES, writing at
# most eight files under $OUT (the device tool brings back no more).  Prepare .device/ here with
# tools/gpu_prepare.sh, then: run(command="bash tools/gpu_check.sh 9", carry=[".device"], timeout_s=600).
# The tests run this same script on the CPU: OUT=DIR PYTHON=.venv/bin/python tools/gpu_check.sh 1 --small
set -euo pipefail
started=$(date +%s)
cd "$(dirname "$0")/.."
minutes=${1:?usage: tools/gpu_check.sh MINUTES [deepsea gpu-check options]}
shift
: "${OUT:?set OUT to the folder for the results}"
python=${PYTHON:-python3}
staged=${DEVICE_DIR:-.device}  # what tools/gpu_prepare.sh staged and the call carries
mkdir -p "$OUT"
site=$(mktemp -d)
if compgen -G "$staged/whl/*.whl" > /dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$staged"/whl/*.whl
fi
ln -s "$PWD/kernels" "$site/deepsea_kernels"  # the package layout pip would make, without building the project
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export DEEPSEA_DEFAULT_XLA=0  # the command line's XLA:CPU flags are not for another XLA or a GPU
data=()
if [ -f "$staged/ndsb.tar.gz" ]; then
    images=$(mktemp -d)
    tar xzf "$staged/ndsb.tar.gz" -C "$images"
    data=(--data "$images/train")
fi
set -o pipefail
"$python" -m deepsea gpu-check --out "$OUT" --minutes "$minutes" --started "$started" "${data[@]}" "$@" 2>&1 \
    | tee "$OUT/gpu_check.log"
