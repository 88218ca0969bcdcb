"""fastfc's training-decoder resize (fastfc/data/resize.py + _resize.cpp) against OpenCV itself.

Real ffcv: a raw-mode beton of real-photo JPEGs, read back through ffcv's Loader with fastfc's
decoder and with ffcv's stock one. ``scale=(1, 1), ratio=(1, 1)`` makes ffcv's random crop
deterministic (the centre square), so each output can be recomputed with ``cv2.resize``.
"""

from __future__ import annotations

import cv2
import ffcv.libffcv
import numpy as np
import pytest
from ffcv.fields import rgb_image
from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
from ffcv.loader import Loader, OrderOption

from data_prep.beton import WriterSettings
from data_prep.imagenet import convert, list_classes, list_split
from fastfc.data.ffcv import decode_ops, label_pipeline
from fastfc.data.images import load_rgb
from fastfc.data.resize import AVAILABLE, LinearRandomResizedCropRGBImageDecoder, resize_crop
from fastfc.fixtures.photos import make_imagenet_tree, source_photos

SHORT = 80


def test_native_resize_was_built():
    # `pip install -e .` (make setup) builds it; if this fails, training silently runs on the slow path.
    assert AVAILABLE


@pytest.mark.parametrize("crop, out, interpolation", [
    ((3, 250, 5, 240), (224, 224), cv2.INTER_LINEAR),   # the paper's crop: a ~1.1x downscale
    ((10, 60, 0, 40), (224, 224), cv2.INTER_LINEAR),    # upscale
    ((0, 300, 0, 300), (100, 120), cv2.INTER_AREA),     # >= 2x: ffcv's area filter
    ((0, 250, 0, 300), (150, 124), cv2.INTER_AREA),     # 1.67x rows but 2.4x cols: area
])
def test_resize_crop_equals_opencv(crop, out, interpolation):
    r0, r1, c0, c1 = crop
    for _, photo in source_photos()[:4]:
        image = np.ascontiguousarray(np.asarray(photo.convert("RGB")))
        got = np.zeros(out + (3,), np.uint8)
        resize_crop(image, r0, r1, c0, c1, got)
        want = cv2.resize(np.ascontiguousarray(image[r0:r1, c0:c1]), out[::-1], interpolation=interpolation)
        assert np.abs(got.astype(int) - want).max() <= 1  # system OpenCV vs opencv-python rounding
        assert np.unique(want).size > 10  # a real picture, not a flat patch


@pytest.fixture(scope="module")
def raw_beton(tmp_path_factory):
    """Real photos stored raw (exact pixels) at shorter side 80: ``(beton, stored images in beton order)``."""
    root = tmp_path_factory.mktemp("resize-src")
    make_imagenet_tree(root, n_classes=2, train_per_class=6, val_per_class=1, quirks=False)
    out = tmp_path_factory.mktemp("resize-beton")
    convert(root, out, splits=("train",), workers=1, settings=WriterSettings(write_mode="raw", short_side=SHORT))
    files = list_split(root, "train", list_classes(root)).files
    return out / "train.beton", [load_rgb(root / f, 500, SHORT) for f in files]


def _read(beton, decoder) -> np.ndarray:
    loader = Loader(str(beton), batch_size=4, num_workers=1, order=OrderOption.SEQUENTIAL, drop_last=False,
                    pipelines={"image": [decoder], "label": label_pipeline()})
    return np.concatenate([np.asarray(images) for images, _ in loader])


def _centre_square(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    s = min(h, w)
    return np.ascontiguousarray(image[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s])


def test_training_decoder_resizes_bilinear_and_stock_ffcv_keeps_area(raw_beton):
    beton, stored = raw_beton
    size = 72  # 80 -> 72: the paper's kind of small downscale
    fast = _read(beton, LinearRandomResizedCropRGBImageDecoder((size, size), scale=(1.0, 1.0), ratio=(1.0, 1.0)))
    assert rgb_image.resize_crop is ffcv.libffcv.resize_crop  # the swap is undone once the code is generated
    stock = _read(beton, RandomResizedCropRGBImageDecoder((size, size), scale=(1.0, 1.0), ratio=(1.0, 1.0)))
    assert fast.shape == stock.shape == (len(stored), size, size, 3)
    for i, image in enumerate(stored):
        square = _centre_square(image)
        linear = cv2.resize(square, (size, size), interpolation=cv2.INTER_LINEAR)
        area = cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA)
        assert np.abs(fast[i].astype(int) - linear).max() <= 1, i
        assert np.abs(stock[i].astype(int) - area).max() <= 1, i
    assert np.abs(fast.astype(int) - stock).mean() > 0.1  # the two filters really differ
    assert np.abs(fast.astype(float) - stock).mean() < 3  # ... by little: both are faithful resizes


def test_decode_ops_pick_the_decoder():
    assert type(decode_ops(train=True, resolution=32)[0]) is LinearRandomResizedCropRGBImageDecoder
    assert type(decode_ops(train=True, resolution=32, linear_resize=False)[0]) is RandomResizedCropRGBImageDecoder
