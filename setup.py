"""Build the optional C kernel of quanttool.stats; everything else is in pyproject.toml.

The kernel is only a speed-up: if it cannot be compiled (no compiler, unsupported platform), the install still
succeeds with a warning and quanttool.stats uses its numpy path.
"""

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any failure here only costs speed
            self._skip(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self._skip(exc)

    @staticmethod
    def _skip(exc):
        print(f"WARNING: quanttool's C statistics kernel was not built ({exc}); "
              f"calibration falls back to numpy and is slower", file=sys.stderr)


flags = [] if sys.platform == "win32" else ["-O3"]
libraries = [] if sys.platform == "win32" else ["m"]  # frexp, ldexp, fmax, fabs: libm is a separate library
setup(
    ext_modules=[Extension("quanttool._statskernel", ["quanttool/_statskernel.c"], extra_compile_args=flags,
                           libraries=libraries)],
    cmdclass={"build_ext": OptionalBuildExt},
)
