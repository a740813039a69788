"""Build step for the native sampling shim; all other metadata lives in pyproject.toml.

The shim (Cargo-free/heapspy_shim.c) is plain C that never includes Python.h: it finds
the C-API functions it needs with dlsym() in whatever interpreter loads it, so one build
serves every CPython 3.8-3.14 the agent is injected into. It is compiled as a setuptools
extension only to reuse the compiler setup, and lands inside the heapspy_agent package
as ``_heapspy_shim.so`` (no ABI tag: it is not tied to the building interpreter).

The build is optional: without a compiler, or off Linux, the install still succeeds
with a warning and the agent falls back to tracemalloc.
"""

import glob
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

SHIM = "heapspy_agent._heapspy_shim"
# Every C file of Cargo-free/ goes into the one library (the allocator hooks in
# heapspy_shim.c, other native helpers beside it); heapspy_shim.h is their ABI.
SOURCES = sorted(glob.glob("Cargo-free/*.c"))


class OptionalShimBuild(build_ext):
    """build_ext that names the shim without an ABI tag and never fails the install."""

    def get_ext_filename(self, fullname: str) -> str:
        # Called with the dotted name or (by get_ext_fullpath) with its last part only.
        if fullname in (SHIM, SHIM.rsplit(".", 1)[1]):
            return os.path.join(*fullname.split(".")) + ".so"
        return str(super().get_ext_filename(fullname))

    def run(self) -> None:
        if not sys.platform.startswith("linux"):
            self._skip("the shim is only built on Linux")
            return
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any build failure means "no shim"
            self._skip(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self._skip(exc)

    @staticmethod
    def _skip(reason: object) -> None:
        sys.stderr.write(
            f"WARNING: heapspy's sampling shim was not built ({reason}); "
            "the agent will fall back to tracemalloc.\n"
        )


setup(
    ext_modules=[
        Extension(
            SHIM,
            sources=SOURCES,
            depends=sorted(glob.glob("Cargo-free/*.h")),
            include_dirs=["Cargo-free"],
            extra_compile_args=["-O2", "-std=gnu11", "-fvisibility=hidden", "-Wall", "-Wextra"],
            libraries=["m", "dl"],
            optional=True,
        )
    ],
    cmdclass={"build_ext": OptionalShimBuild},
)
