#!/usr/bin/env bash
# Packs, on a machine with PyPI (a developer's, before a GPU session), what the GPU machine
# that runs benchmarks/gpu_session.sh lacks, into wheels/ (gitignored; the device tool's
# `carry` takes it: run(command="bash benchmarks/gpu_session.sh", carry=["wheels"])).
#
# That machine (docs: the device tool's KINDS.md) has Python 3.12, CUDA torch, transformers 5,
# numpy, pyarrow, pandas, psutil, PyYAML, but no package registry, no Ray, and none of:
# PyNvVideoCodec (NVDEC), av (PyAV: NvdecReader's index, the CPU decoder), pydantic (the
# config), languagebind (the encoder's model code), ffmpeg-python and an ffmpeg binary
# (imageio-ffmpeg: lvmae.video.samples makes the test videos). As wheels they come to
# ~96 MB, over the 64 MiB a call carries, so they are installed here for cp312/manylinux
# into one folder and packed as wheels/site-cp312.tar.xz (~53 MiB; gpu_session.sh unpacks
# it), without PyNvVideoCodec's FFmpeg sources and sample notebooks. imageio-ffmpeg is 0.6.0
# (an 80-MB ffmpeg 7.0.2 with libx264 and libaom-av1; 0.8's binary is 172 MB). Versions are
# those of this checkout's .venv where it has the package (they are known to work together).
# Also writes wheels/clip720.mp4, the benchmark's 60-s 720p clip (2.6 MiB), so the session
# does not spend its minutes making it.
#
#     bash benchmarks/gpu_session_pack.sh          # ~3 minutes on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
WHEELS=wheels
mkdir -p "$WHEELS"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# the versions this checkout runs with, where it has the package
pinned() {
    local name=$1 v
    v=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name" \
        2>/dev/null) && echo "$name==$v" || echo "$name"
}
pkgs=(PyNvVideoCodec "imageio-ffmpeg==0.6.0")
for name in av pydantic pydantic-core annotated-types typing-inspection languagebind \
    ffmpeg-python future; do
    pkgs+=("$(pinned "$name")")
done
platform=(--only-binary=:all: --python-version 3.12 --implementation cp
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
    --platform manylinux2014_x86_64)
echo "packing: ${pkgs[*]}"
"$PY" -m pip download -q --no-deps "${platform[@]}" -d "$tmp/whl" "${pkgs[@]}"
"$PY" -m pip install -q --no-deps --no-compile "${platform[@]}" --target "$tmp/site" \
    "$tmp"/whl/*.whl
ls "$tmp/whl"
tar -C "$tmp/site" --exclude=./samples --exclude=./external --exclude='*/__pycache__' -cf - . \
    | xz -6 -T0 > "$WHEELS/site-cp312.tar.xz"

"$PY" - <<'EOF'
import sys
from pathlib import Path

sys.path[:0] = ["benchmarks", "."]
from bench_extraction import make_clip  # the benchmark's clip, as library() makes it

make_clip(Path("wheels/clip720.mp4"))
EOF
du -b "$WHEELS"/* | awk '{ printf "%6.1f MiB  %s\n", $1 / 1048576, $2 }'
total=$(du -cb "$WHEELS" | tail -1 | cut -f1)
awk -v b="$total" 'BEGIN { printf "wheels/: %.1f MiB (what travels must stay under 64 MiB)\n", b / 1048576 }' 
if [ "$total" -gt $((60 * 1048576)) ]; then
    echo "wheels/ is over 60 MiB: the call would not carry it" >&2
    exit 1
fi
