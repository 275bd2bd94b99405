"""Build the Cython extensions of allocator_pyx/ and forwarder/."""
import os
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = Path(__file__).parent
# MBUMA_EXT=allocator_pyx.uma,forwarder.route builds only those modules (development aid).
ONLY = [m for m in os.environ.get("MBUMA_EXT", "").split(",") if m]


def extensions() -> list[Extension]:
    exts = []
    for pyx in sorted(HERE.glob("allocator_pyx/*.pyx")) + sorted(HERE.glob("forwarder/*.pyx")):
        rel = pyx.relative_to(HERE)
        module = ".".join(rel.with_suffix("").parts)
        if ONLY and module not in ONLY:
            continue
        exts.append(Extension(module, [str(rel)],
                              extra_compile_args=["-O2", "-g0", "-Wno-unused-function"],
                              extra_link_args=["-lpthread"]))
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
