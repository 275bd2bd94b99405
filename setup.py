"""Build the Cython extensions of allocator_pyx/ and forwarder/."""
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = Path(__file__).parent


def extensions() -> list[Extension]:
    exts = []
    for pyx in sorted(HERE.glob("allocator_pyx/*.pyx")) + sorted(HERE.glob("forwarder/*.pyx")):
        rel = pyx.relative_to(HERE)
        module = ".".join(rel.with_suffix("").parts)
        exts.append(Extension(module, [str(rel)],
                              extra_compile_args=["-O2", "-g0", "-Wno-unused-function"],
                              extra_link_args=["-lpthread"]))
    return exts


setup(
    ext_modules=cythonize(
        extensions(),
        compiler_directives={"language_level": "3", "boundscheck": False,
                             "wraparound": False, "cdivision": True,
                             "initializedcheck": False},
        nthreads=2,
    ),
)
