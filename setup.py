#!/usr/bin/env python
"""Build and install dimaskdino with its compiled op ``dimaskdino._C``.

The C++ CPU kernels are always built. The CUDA kernels are added when ``FORCE_CUDA=1`` or a GPU
is visible. The arch list defaults to ``8.0;8.6;9.0`` plus the arch of every visible GPU, with PTX of
the newest one (e.g. ``8.0;8.6;9.0+PTX``) so that newer GPUs (Blackwell) JIT-compile the kernels;
``TORCH_CUDA_ARCH_LIST`` overrides it.
"""
import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:  # pragma: no cover - explained to the user
    sys.exit("dimaskdino's op is built against torch: install torch first (bash tools/setup.sh does), "
             "then run `pip install --no-build-isolation -e .`")

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCHS = ("8.0", "8.6", "9.0")


def default_cuda_arch_list() -> str:
    """DEFAULT_CUDA_ARCHS and the visible GPUs' archs, in order, the newest with +PTX."""
    archs = list(DEFAULT_CUDA_ARCHS)
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(index)
            archs.append(f"{major}.{minor}")
    archs = sorted(set(archs), key=lambda arch: tuple(int(part) for part in arch.split(".")))
    archs[-1] += "+PTX"
    return ";".join(archs)


def find_cuda_home():
    """The CUDA toolkit folder (holding bin/nvcc and lib64/libcudart.so), or None.

    torch guesses from the first `nvcc` on PATH, which can be a wrapper outside the toolkit;
    linking then fails with `cannot find -lcudart`. So we look for a folder that has both.
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), cpp_extension.CUDA_HOME]
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = os.path.realpath(nvcc)
        candidates.append(os.path.dirname(os.path.dirname(real)))
    candidates += sorted(glob.glob("/usr/local/cuda*"), reverse=True)
    for folder in candidates:
        if not folder:
            continue
        has_nvcc = os.path.exists(os.path.join(folder, "bin", "nvcc"))
        has_rt = any(glob.glob(os.path.join(folder, lib, "libcudart.so*")) for lib in ("lib64", "lib"))
        if has_nvcc and has_rt:
            return folder
    return None


def want_cuda():
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    return torch.cuda.is_available() and torch.version.cuda is not None


def make_extension():
    if not shutil.which(os.environ.get("CXX", "c++")):
        sys.exit("no C++ compiler found (looked for `c++`): install g++ (e.g. apt-get install g++)")
    sources = sorted(glob.glob(os.path.join("csrc", "**", "*.cpp"), recursive=True))
    define_macros = []
    # torch >= 2.14 headers need C++20; OpenMP lets at::parallel_for use every core.
    extra = {"cxx": ["-O3", "-std=c++20", "-fopenmp"]}
    extension = cpp_extension.CppExtension
    if want_cuda():
        if torch.version.cuda is None:
            sys.exit("FORCE_CUDA=1 but this torch was built without CUDA: install a CUDA build of torch")
        cuda_home = find_cuda_home()
        if cuda_home is None:
            sys.exit("FORCE_CUDA=1 but no CUDA toolkit was found (a folder with bin/nvcc and "
                     "lib64/libcudart.so): set CUDA_HOME to it")
        os.environ["CUDA_HOME"] = cuda_home
        cpp_extension.CUDA_HOME = cuda_home
        if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            os.environ["TORCH_CUDA_ARCH_LIST"] = default_cuda_arch_list()
        sources += sorted(glob.glob(os.path.join("csrc", "**", "*.cu"), recursive=True))
        define_macros.append(("WITH_CUDA", None))
        extra["nvcc"] = ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo"]
        extension = cpp_extension.CUDAExtension
        print(f"[dimaskdino] building the CPU and CUDA op (CUDA_HOME={cuda_home}, "
              f"TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']})")
    else:
        print("[dimaskdino] building the CPU op only (set FORCE_CUDA=1 to add the CUDA kernels)")
    return extension(
        "dimaskdino._C",
        sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=define_macros,
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"],
    )


setup(
    name="dimaskdino",
    version="0.1.0",
    description="DI-MaskDINO (NeurIPS 2024) for detectron2: joint detection and instance segmentation",
    packages=find_packages(exclude=("tests", "tests.*", "configs", "benchmarks", "tools", "demo")),
    python_requires=">=3.9",
    ext_modules=[make_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    zip_safe=False,
)
