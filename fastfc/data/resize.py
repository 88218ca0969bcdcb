"""The training decoder's resize: ffcv's random-resized crop with a bilinear resize below 2x.

ffcv 1.0.2 resizes every crop with OpenCV ``INTER_AREA``. For the paper's crop (90-100% of an
image whose shorter side is stored just above the output size, README, Converting ImageNet) each resize is a
small non-integer downscale, where the area filter costs 0.5-0.7 ms per 224-px image on one core,
as much as the JPEG decode itself; ``INTER_LINEAR`` costs 0.1 ms. Below a 2x downscale bilinear
interpolation skips no source pixel, so it aliases little; from 2x on, the native resize falls
back to ``INTER_AREA`` exactly as ffcv does. Against PIL's antialiased bicubic (torchvision's
``RandomResizedCrop`` on PIL images, the paper's recipe) both filters differ by about one grey level
on average (measured on the test photos: area 1.11, bilinear 1.17).

The native code is ``fastfc/data/_resize.cpp``, built by ``setup.py`` against the OpenCV ffcv
uses and loaded with ctypes, so numba calls it from ffcv's compiled decode loop without the GIL.
If it was not built, :data:`AVAILABLE` is False and :func:`random_resized_crop_decoder` returns
ffcv's stock decoder (with a warning): slower, never wrong.
"""

from __future__ import annotations

import ctypes
import importlib.util
import warnings

import numpy as np
from ffcv.fields import rgb_image
from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder

__all__ = ["AVAILABLE", "LinearRandomResizedCropRGBImageDecoder", "random_resized_crop_decoder", "resize_crop"]


def _load():
    spec = importlib.util.find_spec("fastfc.data._resize")
    if spec is None or not spec.origin:
        return None
    function = ctypes.CDLL(spec.origin).fastfc_resize_crop
    function.argtypes = 10 * [ctypes.c_int64]
    function.restype = None
    return function


_native_resize = _load()
#: Whether the native resize was built (``pip install -e .`` builds it; it needs pkg-config opencv4).
AVAILABLE = _native_resize is not None


def resize_crop(source: np.ndarray, start_row: int, end_row: int, start_col: int, end_col: int,
                destination: np.ndarray) -> None:
    """Resize ``source[start_row:end_row, start_col:end_col]`` into ``destination`` in place.

    Same signature as ``ffcv.libffcv.resize_crop``, so ffcv's decoder compiles it with numba.

    Args:
        source: ``(H, W, 3)`` uint8, C-contiguous.
        start_row, end_row, start_col, end_col: the crop, half-open, inside ``source``.
        destination: ``(h, w, 3)`` uint8, C-contiguous; bilinear when the crop is under twice
            ``(h, w)`` on both sides, otherwise area (as ffcv).

    Only usable when :data:`AVAILABLE`. Bounds and dtypes are not checked: inside ffcv's decoder
    they are right by construction.
    """
    _native_resize(source.ctypes.data, source.shape[0], source.shape[1], start_row, end_row,
                   start_col, end_col, destination.ctypes.data, destination.shape[0], destination.shape[1])


class LinearRandomResizedCropRGBImageDecoder(RandomResizedCropRGBImageDecoder):
    """ffcv's ``RandomResizedCropRGBImageDecoder`` (same crop sampling, same arguments) whose resize
    is :func:`resize_crop`.

    ffcv's decoder takes its resize from the module global ``ffcv.fields.rgb_image.resize_crop``
    while it generates code; the global is swapped for exactly that call (in the main thread, before
    any worker runs) and restored, so every other ffcv decoder keeps ffcv's resize.
    """

    def generate_code(self):
        stock = rgb_image.resize_crop
        rgb_image.resize_crop = resize_crop
        try:
            return super().generate_code()
        finally:
            rgb_image.resize_crop = stock


def random_resized_crop_decoder(output_size: tuple[int, int], scale, *, linear: bool = True):
    """The training decoder: :class:`LinearRandomResizedCropRGBImageDecoder` when ``linear`` and the
    native resize is built, else ffcv's stock one (area resize)."""
    if linear and not AVAILABLE:
        warnings.warn("fastfc's native resize (fastfc/data/_resize.cpp) was not built: using ffcv's "
                      "slower INTER_AREA resize. Reinstall with `pip install -e .` where "
                      "`pkg-config --cflags opencv4` works.", RuntimeWarning, stacklevel=2)
    cls = LinearRandomResizedCropRGBImageDecoder if linear and AVAILABLE else RandomResizedCropRGBImageDecoder
    return cls(output_size, scale=scale)
