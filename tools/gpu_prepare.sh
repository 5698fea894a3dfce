#!/usr/bin/env bash
# Stages what the device call carries (docs/gpu.md) in .device/ (ignored by git: the images never enter the
# repository): the wheels the device's image lacks, for its Python 3.12, at the versions the CPU suite passes
# with, and the shared NDSB images as one archive (about 38 MB; the call carries at most 64 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
images=${1:-../shared/data/ndsb/train}
grep -qx '/.device/' .git/info/exclude 2> /dev/null || echo '/.device/' >> .git/info/exclude
rm -rf .device && mkdir -p .device/whl
pins=()
for p in ml-collections grain array-record portpicker flax optax orbax-checkpoint; do
    pins+=("$p==$("$python" -m pip show "$p" | awk '/^Version:/{print $2}')")
done
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
    platforms+=(--platform "$p")
done
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" --platform any -d .device/whl "${pins[@]}"
tar czf .device/ndsb.tar.gz -C "$(dirname "$images")" "$(basename "$images")"
du -sh .device/whl .device/ndsb.tar.gz
