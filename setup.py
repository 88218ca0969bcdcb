"""Builds fastfc's one native piece, the training decoder's resize (``fastfc/data/_resize.cpp``).

Everything else about the package lives in ``pyproject.toml``. The extension is a plain shared
library loaded with ctypes (as ffcv loads ``_libffcv``), compiled against the OpenCV that ffcv
itself builds against (pkg-config ``opencv4``). It is optional: if it cannot be built, the install
still succeeds and :mod:`fastfc.data.resize` falls back to ffcv's stock INTER_AREA resize.
"""
import subprocess

from setuptools import Extension, setup


def opencv_flags() -> dict:
    try:
        cflags = subprocess.check_output(["pkg-config", "--cflags", "opencv4"], text=True).split()
        libs = subprocess.check_output(["pkg-config", "--libs", "opencv4"], text=True).split()
    except (OSError, subprocess.CalledProcessError):
        return {"include_dirs": [], "library_dirs": [], "libraries": []}
    return {"include_dirs": [f[2:] for f in cflags if f.startswith("-I")],
            "library_dirs": [f[2:] for f in libs if f.startswith("-L")],
            "libraries": [f[2:] for f in libs if f.startswith("-l") and f[2:] in ("opencv_core", "opencv_imgproc")]}


setup(ext_modules=[Extension("fastfc.data._resize", ["fastfc/data/_resize.cpp"], language="c++",
                             extra_compile_args=["-O3", "-std=c++17", "-fvisibility=hidden"],
                             optional=True, **opencv_flags())])
