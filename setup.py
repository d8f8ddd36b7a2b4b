"""Builds backprop_ext._C from csrc/.

* csrc/{core,ops,python,profiling}/*.cpp and csrc/cpu/*.cpp are compiled once; every include is
  written from csrc/ ("core/checks.h", "cpu/parallel.h").
* csrc/cpu/*_kernels.cpp hold the vectorized CPU loops. Like ATen, they are compiled once per CPU
  instruction set (DEFAULT, AVX2, AVX512 on x86-64) and the best one is picked at run time with
  at::get_cpu_capability(), so one wheel is fast on a new CPU and still runs on an old one.
* csrc/cuda/*.cu are compiled when a CUDA toolkit and a CUDA build of torch are both present.

* No limited-API (abi3) build: csrc/python/ops.cpp, the ops' Autograd kernels and the Python
  entry points that make a call cost what torch's own does, use torch's Python bindings
  (torch_python), which live outside Python's stable ABI. (Before them the extension did build
  as abi3; the call overhead they remove was worth more than one wheel for every Python.)

Environment knobs: CUDA_HOME (toolkit to use), BACKPROP_EXT_FORCE_CPU=1 (skip CUDA sources),
TORCH_CUDA_ARCH_LIST (as in torch; default without a visible GPU: "8.0;9.0+PTX"),
BACKPROP_EXT_CPU_ISAS (comma list, default every ISA of this architecture; for quick local builds).
"""

import glob
import os
import platform
import re
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _log(msg):
    print(f"[backprop_ext setup] {msg}", file=sys.stderr)


def _locate_cuda_home():
    """The toolkit root, found before torch.utils.cpp_extension caches its own guess.

    torch takes the folder above the `nvcc` on PATH; when that `nvcc` is a wrapper script living
    outside the toolkit the guess is wrong. `nvcc -dryrun` prints the real bin folder as _HERE_.
    """
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    try:
        out = subprocess.run([nvcc, "-dryrun", "x.cu"], capture_output=True, text=True, timeout=60)
        match = re.search(r"_HERE_=(\S+)", out.stdout + out.stderr)
    except (OSError, subprocess.SubprocessError):
        match = None
    bin_dir = match.group(1) if match else os.path.dirname(os.path.realpath(nvcc))
    return os.path.dirname(bin_dir)


if os.environ.get("BACKPROP_EXT_FORCE_CPU") != "1":
    _cuda_home = _locate_cuda_home()
    if _cuda_home:
        os.environ["CUDA_HOME"] = _cuda_home

import torch  # noqa: E402
from torch.utils import cpp_extension  # noqa: E402


def _want_cuda():
    if os.environ.get("BACKPROP_EXT_FORCE_CPU") == "1":
        _log("BACKPROP_EXT_FORCE_CPU=1: building the CPU kernels only")
        return False
    if torch.version.cuda is None:
        _log("this torch has no CUDA support: building the CPU kernels only")
        return False
    if cpp_extension.CUDA_HOME is None:
        _log("no CUDA toolkit found (set CUDA_HOME or put nvcc on PATH): building the CPU kernels "
             "only")
        return False
    _log(f"CUDA toolkit at {cpp_extension.CUDA_HOME}; torch built with CUDA {torch.version.cuda}")
    return True


def _cuda_library_include_dirs():
    """Headers of the CUDA libraries (cuBLASLt, cuSPARSE, ...) that a toolkit may lack.

    torch's pip wheels ship them in the nvidia/*/include folders of their CUDA packages.
    """
    toolkit_include = os.path.join(cpp_extension.CUDA_HOME, "include")
    needed = ("cublasLt.h", "cusparse.h")
    if all(os.path.exists(os.path.join(toolkit_include, h)) for h in needed):
        return []
    dirs = []
    for site in sys.path:
        for inc in sorted(glob.glob(os.path.join(site, "nvidia", "*", "include"))):
            if any(os.path.exists(os.path.join(inc, h)) for h in needed) and inc not in dirs:
                dirs.append(inc)
    if dirs:
        _log(f"CUDA library headers taken from {dirs}")
    else:
        _log("warning: cublasLt.h/cusparse.h not found; the CUDA build may fail")
    return dirs


def _cublaslt_link_args():
    """Linker arguments for cuBLASLt (csrc/cuda/linear.cu calls it directly).

    A full toolkit has libcublasLt.so in lib64 (or targets/<arch>/lib). A toolkit without the CUDA
    libraries links against the copy in torch's nvidia-* wheel, which ships only the versioned file,
    so it is named exactly with -l:. Either way the library's soname is the versioned one, and at
    run time the copy torch has already loaded is the one used.
    """
    home = cpp_extension.CUDA_HOME
    lib_dirs = [os.path.join(home, "lib64")] + glob.glob(os.path.join(home, "targets", "*", "lib"))
    for lib_dir in lib_dirs:
        if os.path.exists(os.path.join(lib_dir, "libcublasLt.so")):
            return [f"-L{lib_dir}", "-lcublasLt"]
    major = torch.version.cuda.split(".")[0]
    for site in sys.path:
        pattern = os.path.join(site, "nvidia", "*", "lib", f"libcublasLt.so.{major}*")
        found = sorted(glob.glob(pattern))
        if found:
            lib_dir, name = os.path.split(found[-1])
            _log(f"cuBLASLt taken from {found[-1]}")
            return [f"-L{lib_dir}", f"-l:{name}"]
    _log("warning: libcublasLt not found; linking backprop_ext._C may fail")
    return ["-lcublasLt"]


# Instruction sets the *_kernels.cpp files are compiled for, with the flags ATen uses for them.
_X86_ISAS = {
    "DEFAULT": [],
    "AVX2": ["-mavx2", "-mfma", "-mf16c"],
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c"],
}


def _cpu_isas():
    if platform.machine().lower() not in ("x86_64", "amd64") or os.name == "nt":
        return {"DEFAULT": []}
    chosen = os.environ.get("BACKPROP_EXT_CPU_ISAS")
    if not chosen:
        return dict(_X86_ISAS)
    names = [n.strip().upper() for n in chosen.split(",") if n.strip()]
    return {n: _X86_ISAS[n] for n in ["DEFAULT"] + [n for n in names if n != "DEFAULT"]}


class BuildExtension(cpp_extension.BuildExtension):
    """Compiles each csrc/cpu/*_kernels.cpp once per ISA, then builds the extension as usual."""

    def build_extension(self, ext):
        isa_sources = sorted(glob.glob(os.path.join("csrc", "cpu", "*_kernels.cpp")))
        cxx_args = list(ext.extra_compile_args.get("cxx", []))
        objects = []
        for isa, flags in self.distribution.cpu_isas.items():
            args = cxx_args + flags + [f"-DCPU_CAPABILITY={isa}", f"-DCPU_CAPABILITY_{isa}"]
            objects += self.compiler.compile(
                isa_sources,
                output_dir=os.path.join(self.build_temp, f"isa_{isa.lower()}"),
                macros=ext.define_macros,
                include_dirs=ext.include_dirs,
                debug=self.debug,
                extra_postargs={"cxx": args, "nvcc": []},
                depends=ext.depends,
            )
        ext.extra_objects = list(ext.extra_objects or []) + objects
        super().build_extension(ext)


# The folders of csrc/ compiled once (csrc/cpu's *_kernels.cpp are compiled once per ISA, and
# csrc/cuda only with CUDA); every #include is written from csrc/.
_ROOMS = ("core", "ops", "python", "profiling")
_INCLUDE = [os.path.join(ROOT, "csrc")]


def _extension():
    with_cuda = _want_cuda()
    isas = _cpu_isas()
    sources = sorted(s for room in _ROOMS for s in glob.glob(f"csrc/{room}/*.cpp")) + sorted(
        s for s in glob.glob("csrc/cpu/*.cpp") if not s.endswith("_kernels.cpp")
    )
    cxx = ["-O3", "-fvisibility=hidden", "-Wno-psabi"]
    link = []
    if sys.platform.startswith("linux"):
        # ATen's OpenMP backend inlines at::parallel_for into our code: without -fopenmp it would
        # run on one thread. libgomp resolves to the copy torch has already loaded.
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    cxx += [f"-DBACKPROP_EXT_HAVE_ISA_{isa}" for isa in isas]
    if not with_cuda:
        return cpp_extension.CppExtension(
            "backprop_ext._C", sources, include_dirs=_INCLUDE, extra_compile_args={"cxx": cxx},
            extra_link_args=link,
        ), isas
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        # Without a visible GPU torch would compile for every architecture it knows; Ampere and
        # Hopper (with PTX for anything newer) cover the machines this project targets.
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"
        _log("no GPU visible: TORCH_CUDA_ARCH_LIST=8.0;9.0+PTX")
    sources += sorted(glob.glob("csrc/cuda/*.cu"))
    nvcc = ["-O3", "--expt-relaxed-constexpr", "-DBACKPROP_EXT_WITH_CUDA",
            "-lineinfo"]
    nvcc += [f"--threads={max(1, min(4, os.cpu_count() or 1))}"]
    return cpp_extension.CUDAExtension(
        "backprop_ext._C", sources,
        include_dirs=_INCLUDE + _cuda_library_include_dirs(),
        extra_compile_args={"cxx": cxx + ["-DBACKPROP_EXT_WITH_CUDA"], "nvcc": nvcc},
        extra_link_args=link + _cublaslt_link_args(),
    ), isas


ext, _isas = _extension()

from setuptools.dist import Distribution  # noqa: E402


class _BackpropDistribution(Distribution):
    cpu_isas = _isas


setup(
    packages=find_packages(include=["backprop_ext", "backprop_ext.*"]),
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    distclass=_BackpropDistribution,
)
