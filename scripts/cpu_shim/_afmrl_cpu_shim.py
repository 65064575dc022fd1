"""Preloaded by a .pth file in the venv so every process (Ray workers, vLLM's spawned engine core)
can import PyPI's CUDA-linked torchvision beside CPU torch. Installed by scripts/install.sh."""
import ctypes
import glob
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _preload() -> None:
    stub_dir = os.path.join(_HERE, "afmrl_cpu_shim_libs")
    if not os.path.isdir(stub_dir):
        return
    # libcudart.so.13: the machine image registers it with ld.so; elsewhere the PyPI package
    # nvidia-cuda-runtime puts it under site-packages/nvidia/*/lib.
    for cudart in glob.glob(os.path.join(_HERE, "nvidia", "*", "lib", "libcudart.so.13")):
        ctypes.CDLL(cudart, mode=ctypes.RTLD_GLOBAL)
        break
    for name in ("libtorch_cuda.so", "libc10_cuda.so"):
        ctypes.CDLL(os.path.join(stub_dir, name), mode=ctypes.RTLD_GLOBAL)


try:
    _preload()
except OSError as error:  # never break interpreter start-up; torchvision will report its own error
    print(f"afmrl CPU shim not loaded: {error}", file=sys.stderr)
