"""Build the sm_90a extension on first use, into a persistent cache; or ahead of time.

    python -m tttgraph.kernels.ttt_mlp.cuda_sm90.build            # build now (on a machine with nvcc)
    python -m tttgraph.kernels.ttt_mlp.cuda_sm90.build --check    # nvcc-compile the kernels only (no torch, no GPU)

The cache directory is ``$TTTGRAPH_CACHE_DIR`` (default ``~/.cache/tttgraph``) / ``cuda_sm90-<hash>``,
the hash covering the sources, the compiler flags and the torch/CUDA versions, so an edited source
or a new torch rebuilds and a warm cache loads in about a second.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
KERNEL_SOURCES = ("ttt_mlp_fwd.cu", "ttt_mlp_bwd.cu", "ttt_mlp_bwd_out.cu")
# Older copies of the sources (A/B baselines) may lack the kernels added since; these they must have.
REQUIRED_SOURCES = ("binding.cpp", "ttt_mlp_fwd.cu", "ttt_mlp_bwd.cu")
SOURCES = ("binding.cpp", *KERNEL_SOURCES)
HEADERS = ("common.cuh", "scan_common.cuh", "ttt_mlp.h", "wgmma.cuh")
ARCH_FLAGS = ("-gencode=arch=compute_90a,code=sm_90a",)
CUDA_FLAGS = (*ARCH_FLAGS, "-O3", "-std=c++17", "--expt-relaxed-constexpr", "-lineinfo")


def cache_root() -> Path:
    return Path(os.environ.get("TTTGRAPH_CACHE_DIR", Path.home() / ".cache" / "tttgraph"))


def _digest(src: Path = HERE) -> str:
    import torch

    h = hashlib.sha256()
    for name in (*SOURCES, *HEADERS):
        if name not in REQUIRED_SOURCES and not (src / name).exists():  # an older copy may lack a newer file
            continue
        h.update(name.encode())
        h.update((src / name).read_bytes())
    h.update(" ".join(CUDA_FLAGS).encode())
    h.update(f"{torch.__version__} {torch.version.cuda}".encode())
    return h.hexdigest()[:16]


# The argument lists __init__.py passes to the binding (binding.cpp's BACKWARD_ABI); a build of sources
# with another ABI is refused here rather than called with the wrong arguments.
BINDING_ABI = 3


@functools.lru_cache(maxsize=4)
def extension(source_dir: str | None = None):
    """The compiled extension module (built into the cache on the first call of a process).

    ``source_dir``: build these sources instead of the ones beside this file (a copy of an older
    version, for benchmarks that time two versions in one process; its binding must have this
    version's ABI, ``BINDING_ABI``).
    """
    from torch.utils import cpp_extension

    src = Path(source_dir).resolve() if source_dir else HERE
    missing = [name for name in (SOURCES if src == HERE else REQUIRED_SOURCES) if not (src / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{src} lacks {', '.join(missing)}: copy every file of {', '.join(SOURCES)} "
                                f"(and the headers) from the version to build")
    sources = [name for name in SOURCES if (src / name).is_file()]
    digest = _digest(src)
    build_dir = cache_root() / f"cuda_sm90-{digest}"
    build_dir.mkdir(parents=True, exist_ok=True)
    ext = cpp_extension.load(
        name=f"tttgraph_cuda_sm90_{digest}",
        sources=[str(src / name) for name in sources],
        extra_cflags=["-O3", "-std=c++17"],
        extra_cuda_cflags=list(CUDA_FLAGS),
        extra_include_paths=[str(src)],
        build_directory=str(build_dir),
        verbose=os.environ.get("TTTGRAPH_VERBOSE_BUILD") == "1",
    )
    abi = getattr(ext, "BACKWARD_ABI", 1)
    if abi != BINDING_ABI:
        raise RuntimeError(
            f"the sources in {src} bind the kernels with ABI {abi}; this tttgraph calls ABI {BINDING_ABI}. "
            "Benchmark an older version from its own checkout"
        )
    return ext


@functools.lru_cache(maxsize=1)
def unavailable_reason() -> str | None:
    """None once the extension is built and loaded; else why it can't be (remembered per process)."""
    from torch.utils import cpp_extension

    if cpp_extension.CUDA_HOME is None:
        return "no CUDA toolkit (nvcc) was found to build the kernel; set CUDA_HOME"
    try:
        extension()
    except Exception as err:  # a compiler error must turn into a fallback with the reason, not a crash
        first = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        return f"building the cuda_sm90 extension failed ({first}); TTTGRAPH_VERBOSE_BUILD=1 shows the log"
    return None


def compile_check(nvcc: str | None = None, out_dir: str | os.PathLike | None = None) -> list[Path]:
    """Compile the kernel sources (no torch binding) for sm_90a with nvcc; return the object files.

    Needs no GPU: CI runs it to check that the kernels compile. Raises CalledProcessError with
    the compiler's output on failure. ptxas's report (registers, spills, warnings such as C7520,
    "wgmma serialized") is kept beside each object as ``<name>.ptxas.log``.
    """
    nvcc = nvcc or shutil.which("nvcc")
    if nvcc is None:
        raise FileNotFoundError("nvcc is not on PATH")
    out = Path(out_dir or tempfile.mkdtemp(prefix="tttgraph-sm90-"))
    objects = []
    for src in KERNEL_SOURCES:
        obj = out / (Path(src).stem + ".o")
        done = subprocess.run([nvcc, *CUDA_FLAGS, "-Xptxas", "-v", "-c", str(HERE / src), "-o", str(obj)],
                              check=True, capture_output=True, text=True)
        obj.with_suffix(".ptxas.log").write_text(done.stdout + done.stderr)
        objects.append(obj)
    return objects


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only nvcc-compile the kernels (no torch binding)")
    args = parser.parse_args(argv)
    if args.check:
        for obj in compile_check():
            print(f"compiled {obj}")
        return 0
    reason = unavailable_reason()
    if reason:
        print(reason, file=sys.stderr)
        return 1
    print(f"built and loaded {extension().__file__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
