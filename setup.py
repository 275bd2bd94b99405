"""Build the Cython extensions of allocator_pyx/ and forwarder/."""
import os
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = Path(__file__).parent
# MBUMA_EXT=allocator_pyx.uma,forwarder.route builds only those modules (development aid).
ONLY = [m for m in os.environ.get("MBUMA_EXT", "").split(",") if m]
# MBUMA_SANITIZE=address builds with AddressSanitizer (scripts/asan.sh; run
# with LD_PRELOAD=libasan.so: the interpreter itself is not instrumented).
SANITIZE = os.environ.get("MBUMA_SANITIZE", "")
if SANITIZE not in ("", "address"):
    raise SystemExit(f"MBUMA_SANITIZE={SANITIZE!r}: only 'address' is supported")
COMPILE = (["-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer", "-Wno-unused-function"]
           if SANITIZE else ["-O2", "-g0", "-Wno-unused-function"])
LINK = ["-lpthread", "-fsanitize=address"] if SANITIZE else ["-lpthread"]


def extensions() -> list[Extension]:
    exts = []
    for pyx in sorted(HERE.glob("allocator_pyx/*.pyx")) + sorted(HERE.glob("forwarder/*.pyx")):
        rel = pyx.relative_to(HERE)
        module = ".".join(rel.with_suffix("").parts)
        if ONLY and module not in ONLY:
            continue
        exts.append(Extension(module, [str(rel)],
                              extra_compile_args=COMPILE, extra_link_args=LINK))
    return exts


setup(
    # the C compiles in parallel too (as cythonize's nthreads): the image build
    # and the test command compile every extension from scratch
    options={"build_ext": {"parallel": os.cpu_count() or 1}},
    ext_modules=cythonize(
        extensions(),
        compiler_directives={"language_level": "3", "boundscheck": False,
                             "wraparound": False, "cdivision": True,
                             "initializedcheck": False},
        nthreads=2,
    ),
)
