#!/usr/bin/env bash
# One GPU session's checks, in one command on the device machine (one NVIDIA H100 or H200,
# 16 cores, CUDA torch, no package registry, no Ray), from the repository root:
#
#   1. here, on a machine with PyPI, before the session (~3 min; docs/design.md "Decoding on
#      the GPU"):
#          bash benchmarks/gpu_session_pack.sh
#      It fills wheels/ (gitignored): site-cp312.tar.xz, what that machine lacks (PyNvVideoCodec,
#      PyAV, pydantic, languagebind, ffmpeg-python, imageio-ffmpeg's ffmpeg), installed for
#      Python 3.12 and packed under the 64 MiB a call carries, and clip720.mp4 (the benchmark's
#      60-s 720p clip). A bare wheel also works, e.g. PyNvVideoCodec alone where the rest is
#      there: pip download --no-deps -d wheels PyNvVideoCodec   (27 MB)
#   2. the session: run(command="bash benchmarks/gpu_session.sh", carry=["wheels"],
#      timeout_s=600). Every step runs under `timeout`; a failing step does not stop the
#      others; the whole script stays under ~8 minutes.
#
# Output: each step headed "=== [name]" with its exit status, a summary at the end; the log
# and the extraction benchmark's JSON go to $OUT (the device tool brings them back) when it
# is set, else work/gpu_session. PYTHON picks the interpreter (default python3, the one with
# CUDA torch there); SITE where the carried packages are unpacked (default /tmp/lvmae-site);
# BUDGET_S the whole script's seconds (default 470): a step's limit is cut to what is left,
# and a step is skipped when less than 15 s are.
set -u
cd "$(dirname "$0")/.."
OUTDIR=${OUT:-work/gpu_session}
mkdir -p "$OUTDIR"
PY=${PYTHON:-python3}
SITE=${SITE:-/tmp/lvmae-site}
BUDGET_S=${BUDGET_S:-470}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset LVMAE_NVDEC_EMULATE  # NVDEC itself, never its emulation
exec > >(tee "$OUTDIR/session.log") 2>&1
TEE_PID=$!
T0=$(date +%s)
SUMMARY=()

# step NAME LIMIT_S COMMAND...: the command under `timeout`, headed and timed
step() {
    local name=$1 limit=$2 start rc left
    shift 2
    left=$((BUDGET_S - ($(date +%s) - T0)))
    if [ "$left" -lt 15 ]; then
        echo; echo "=== [$name] SKIPPED: ${left} s left of the ${BUDGET_S}-s budget"
        SUMMARY+=("$name: skipped (budget)")
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo
    echo "=== [$name] (limit ${limit} s, at +$(($(date +%s) - T0)) s): $*"
    start=$(date +%s)
    timeout -k 10 "$limit" "$@"
    rc=$?
    [ "$rc" -eq 124 ] && echo "!!! [$name] stopped at its ${limit}-s limit"
    echo "=== [$name] exit $rc after $(($(date +%s) - start)) s"
    SUMMARY+=("$name: exit $rc ($(($(date +%s) - start)) s)")
}

step nvidia-smi 15 nvidia-smi
step libnvcuvid 15 bash -c '
    echo "NVIDIA_DRIVER_CAPABILITIES=${NVIDIA_DRIVER_CAPABILITIES-<unset>}"
    echo "--- ldconfig -p | grep nvcuvid"; ldconfig -p | grep -i nvcuvid || echo "(none listed)"
    echo "--- driver folders"
    ls -l /usr/local/nvidia/lib64 /usr/lib/x86_64-linux-gnu 2>/dev/null | grep -i nvcuvid \
        || echo "(no libnvcuvid in /usr/local/nvidia/lib64 or /usr/lib/x86_64-linux-gnu)"
    echo "--- ctypes"
    '"$PY"' -c "import ctypes; ctypes.CDLL(\"libnvcuvid.so.1\"); print(\"libnvcuvid.so.1 loads\")"'
step torch 30 "$PY" -c '
import sys, torch
print("python", sys.version.split()[0], sys.executable)
print("torch", torch.__version__, "built with CUDA", torch.version.cuda,
      "| cuda available:", torch.cuda.is_available())
if torch.cuda.is_available():
    print("GPU 0:", torch.cuda.get_device_name(0), "compute capability",
          torch.cuda.get_device_capability(0))'

install() {
    mkdir -p "$SITE"
    local found=0 f
    for f in wheels/*.tar.xz; do
        [ -e "$f" ] || continue
        echo "unpacking $f ($(du -h "$f" | cut -f1)) into $SITE"
        tar -xJf "$f" -C "$SITE" || return 1
        found=1
    done
    if compgen -G "wheels/*.whl" > /dev/null; then
        echo "installing $(ls wheels/*.whl | tr '\n' ' ')into $SITE"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" \
            wheels/*.whl || return 1
        found=1
    fi
    [ "$found" -eq 1 ] || echo "nothing under wheels/ (see the top of this script)"
    command -v ffmpeg > /dev/null && echo "system ffmpeg: $(command -v ffmpeg)"
    "$PY" - <<'EOF'
import importlib.metadata as m
for name in ("PyNvVideoCodec", "av", "pydantic", "languagebind", "ffmpeg-python",
             "imageio-ffmpeg", "transformers", "numpy"):
    try:
        print(f"{name} {m.version(name)}")
    except m.PackageNotFoundError:
        print(f"{name}: NOT INSTALLED")
try:
    from lvmae.video.ffmpeg import ffmpeg_exe
    print("ffmpeg binary:", ffmpeg_exe())
    from lvmae.video.nvdec import nvdec_blocker
    print("nvdec_blocker(('0',), None):", repr(nvdec_blocker(("0",), None)))
    import PyNvVideoCodec
    print("PyNvVideoCodec imports from", PyNvVideoCodec.__file__)
except Exception as exc:
    print(f"{type(exc).__name__}: {exc}")
EOF
}
step install 45 bash -c "$(declare -f install); PY='$PY' SITE='$SITE' install"

PYTEST=("$PY" -m pytest -q -rs --noconftest -p no:cacheprovider -o addopts="")
step nvdec-gpu-tests 90 "${PYTEST[@]}" tests/lvmae/video/test_nvdec_gpu.py

CLIP=()
[ -f wheels/clip720.mp4 ] && CLIP=(--clip wheels/clip720.mp4)
# NVDEC first (the new figures), then PyAV exact as the baseline on the same node (NVDEC
# decodes exact frames only; fast mode's figures are in benchmarks/RESULTS.md). 24 copies of
# the 60-s clip (288 segments); an NVDEC stage starts no video after 10 s.
step bench-extraction-gpu 200 "$PY" benchmarks/bench_extraction_gpu.py "${CLIP[@]}" \
    --modes nvdec,exact --videos 24 --nvdec-sessions 1,2,4,8 --nvdec-limit-s 10 \
    --workdir /tmp/lvmae-bench-gpu --json "$OUTDIR/extraction.json"

step step-gpu-tests 60 "${PYTEST[@]}" tests/lvmae/mae/test_step.py -k gpu

GPU=$("$PY" -c '
import torch
name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
print(next((g for g in ("H200", "H100", "A100") if g in name), "H100"))' 2>/dev/null || echo H100)
step bench-pretrain 75 "$PY" benchmarks/bench_pretrain.py --device cuda --gpu "$GPU" --steps 4 \
    --profile --variants graphs,compile+graphs --budgets 16384

echo
echo "=== summary (+$(($(date +%s) - T0)) s; log: $OUTDIR/session.log)"
printf '  %s\n' "${SUMMARY[@]}"
exec 1>&- 2>&-
wait "$TEE_PID"  # the log is whole before the device tool collects $OUT
