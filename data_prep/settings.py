"""How a beton stores its images (:class:`WriterSettings`), importable without ffcv.

The converter's command line reads its defaults and checks its options here, so ``--help`` and
option errors answer before ffcv (and torch) are imported; :mod:`data_prep.beton` builds the ffcv
fields from these settings when it writes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

WRITE_MODES = ("proportion", "jpg", "raw")


def short_side_for(resolution: int, min_scale: float = 0.9) -> int:
    """Smallest stored shorter side (px) from which a RandomResizedCrop keeping at least
    ``min_scale`` of the area reaches ``resolution`` px without upsampling: ``ceil(r / s)``
    (224 px, the paper's 0.9: 249). See :attr:`WriterSettings.short_side`."""
    return math.ceil(resolution / min_scale)


@dataclass(frozen=True)
class WriterSettings:
    """How images are stored. Defaults are ffcv-imagenet's ImageNet recipe (docs/recipe.md).

    Attributes:
        max_resolution: longer side in px after resize; 0 keeps full size.
        write_mode: ``proportion`` (a random ``compress_probability`` share as JPEG, the rest raw),
            ``jpg`` or ``raw``.
        compress_probability: share of JPEG-stored images in ``proportion`` mode, in [0, 1].
        jpeg_quality: libjpeg quality 1..100 of the stored JPEGs.
        short_side: shorter side in px after resize; 0 = no bound. Decode time scales with the
            stored pixels, so store at the smallest size that still feeds the training crop
            without upsampling, :func:`short_side_for` (224 px: 249, so 256; 288 px: 320;
            384 px: 427). docs/recipe.md; ``benchmarks/loader.py`` measures the gain.
        exif_upright: store images turned by their EXIF orientation tag (``--exif-upright``);
            default ``False``: as stored, the tag ignored, as torchvision's ``pil_loader`` in the
            released code (``datasets/imagenet.py``, ``ImageFolder``). ``meta.json``'s ``writer``
            records it; a meta.json without the field was written upright (fastfc before 22b).
    """

    max_resolution: int = 500
    write_mode: str = "proportion"
    compress_probability: float = 0.5
    jpeg_quality: int = 90
    short_side: int = 0
    exif_upright: bool = False

    def __post_init__(self):
        if self.write_mode not in WRITE_MODES:
            raise ValueError(f"write_mode (--write-mode) must be one of {WRITE_MODES}, got {self.write_mode!r}")
        if not 0.0 <= self.compress_probability <= 1.0:
            raise ValueError(f"compress_probability (--compress-probability) must be in [0, 1], got {self.compress_probability}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality (--jpeg-quality) must be in 1..100, got {self.jpeg_quality}")
        if self.max_resolution < 0:
            raise ValueError(f"max_resolution (--max-resolution) must be >= 0 (0 = keep full size), got {self.max_resolution}")
        if self.short_side < 0:
            raise ValueError(f"short_side (--short-side) must be >= 0 (0 = no bound), got {self.short_side}")

    def fields(self) -> dict:
        """The ffcv fields of a fastfc beton: ``image`` (RGBImageField) and ``label`` (IntField)."""
        from ffcv.fields import IntField, RGBImageField

        return {
            "image": RGBImageField(write_mode=self.write_mode,
                                   max_resolution=self.max_resolution or None,
                                   compress_probability=self.compress_probability,
                                   jpeg_quality=self.jpeg_quality),
            "label": IntField(),
        }

    def page_size(self, max_pixels: int) -> int:
        """ffcv page size in bytes: a power of two that holds the largest raw sample (``max_pixels`` px)."""
        from ffcv.writer import MIN_PAGE_SIZE

        side = self.max_resolution
        need = 3 * (side * side if side else max_pixels)
        size = 4 * MIN_PAGE_SIZE  # ffcv's default, 8 MiB
        while size < 2 * need:
            size *= 2
        return size

    def as_dict(self) -> dict:
        return asdict(self)
