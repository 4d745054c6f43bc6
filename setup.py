"""Build of fastflow: the Python package, ``kernels/`` as ``fastflow.kernels``, and ``csrc/`` as ``fastflow._C``.

torch is imported only inside the build step (never at the top), so metadata commands work without it.
Switches (environment):

- ``FASTFLOW_BUILD_EXT``: ``auto`` (default: build when torch is importable), ``1`` (must build), ``0`` (skip).
- ``FASTFLOW_BUILD_CUDA``: ``auto`` (default: CUDA sources when torch has CUDA and nvcc is found), ``1``, ``0``.
- ``FASTFLOW_CUDA_ARCH``: ``TORCH_CUDA_ARCH_LIST`` for the CUDA sources (default ``8.0;9.0``).

Install with ``pip install --no-build-isolation .`` so that the torch already installed is used: build
isolation would download a (CUDA) build of torch and needs a network.
"""

import glob
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _switch(name: str) -> str:
    value = os.environ.get(name, "auto").strip().lower()
    if value not in ("auto", "0", "1"):
        sys.exit(f"{name} must be auto, 0 or 1, got {value!r}")
    return value


def _extensions():
    """The ``fastflow._C`` extension and its build command, or nothing when it is switched off."""
    mode = _switch("FASTFLOW_BUILD_EXT")
    if mode == "0":
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        if mode == "1":
            raise
        print("fastflow: torch is not importable at build time; skipping fastflow._C (reference/triton only)")
        return [], {}

    cpu_sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    cuda_mode = _switch("FASTFLOW_BUILD_CUDA")
    has_nvcc = cpp_extension.CUDA_HOME is not None
    use_cuda = bool(cuda_sources) and (
        cuda_mode == "1" or (cuda_mode == "auto" and torch.version.cuda is not None and has_nvcc)
    )
    if cuda_mode == "1" and torch.version.cuda is None:
        sys.exit("FASTFLOW_BUILD_CUDA=1 but this torch has no CUDA support")

    # C++20: what recent torch (2.13 here) builds extensions with; its headers use C++20 features. -fopenmp
    # makes at::parallel_for run in parallel (its OpenMP pragmas are compiled here, in the extension).
    # -ffp-contract=fast (GCC's default outside ISO mode) lets a·b + c become one FMA in vectorised loops.
    cxx_flags = ["-O3", "-std=c++20", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=fast"]
    define_macros = [("Py_LIMITED_API", "0x030A0000")]
    extra_link_args = ["-fopenmp"]
    if use_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", os.environ.get("FASTFLOW_CUDA_ARCH", "8.0;9.0"))
        # No --use_fast_math: its approximate expf/division cost accuracy, and these kernels are memory-bound.
        extension = cpp_extension.CUDAExtension(
            "fastflow._C",
            cpu_sources + cuda_sources,
            extra_compile_args={"cxx": cxx_flags + ["-DFASTFLOW_WITH_CUDA"], "nvcc": ["-O3", "-DFASTFLOW_WITH_CUDA"]},
            extra_link_args=extra_link_args,
            define_macros=define_macros,
            py_limited_api=True,
        )
    else:
        extension = cpp_extension.CppExtension(
            "fastflow._C",
            cpu_sources,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=extra_link_args,
            define_macros=define_macros,
            py_limited_api=True,
        )
    build = cpp_extension.BuildExtension.with_options(use_ninja=True)
    return [extension], {"build_ext": build}


ext_modules, cmdclass = _extensions()

setup(
    packages=[
        "fastflow",
        "fastflow.ops",
        "fastflow.reference",
        "fastflow.nn",
        "fastflow.models",
        "fastflow.data",
        "fastflow.train",
        "fastflow.kernels",
    ],
    package_dir={"fastflow.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    options={"bdist_wheel": {"py_limited_api": "cp310"}} if ext_modules else {},
)
