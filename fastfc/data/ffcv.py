"""FFCV loaders for fastfc betons: ``(B, 3, H, W)`` normalised images and ``(B,)`` int64 labels.

The pipelines are plain lists of ffcv operations (ffcv-imagenet style). Order matters:
ffcv 1.0.2's pipeline compiler loops forever when jitted and non-jitted operations alternate
(in ``Graph.group_operations``), so on CPU ``NormalizeImage`` runs *before* ``ToTensor`` (on the numpy
batch, jitted), and on GPU *after* ``ToDevice`` (on the device, as ffcv-imagenet does).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from ffcv.fields.basics import IntDecoder
from ffcv.fields.rgb_image import CenterCropRGBImageDecoder
from ffcv.loader import Loader, OrderOption
from ffcv.transforms import NormalizeImage, RandomHorizontalFlip, Squeeze, ToDevice, ToTensor, ToTorchImage

from fastfc.cpus import fit_workers
from fastfc.data.betons import beton_samples, read_beton_meta

from .resize import random_resized_crop_decoder


def quiet_numba_finalizer_noise() -> None:
    """Hide one known-harmless message: numba's dispatcher finalizer raises ``KeyError`` when an
    ffcv pipeline is garbage-collected ("Exception ignored in: <finalize object ...>"). Every other
    unraisable exception still reaches the default hook."""
    import sys

    def hook(unraisable):
        tb = unraisable.exc_traceback
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = tb.tb_frame.f_code.co_filename if tb is not None else ""
        if isinstance(unraisable.exc_value, KeyError) and "numba" in where and "dispatcher" in where:
            return
        sys.__unraisablehook__(unraisable)

    sys.unraisablehook = hook


# The paper's training crop keeps 90-100% of the image (docs/recipe.md).
TRAIN_SCALE = (0.9, 1.0)


def decode_ops(*, train: bool, resolution: int, scale=TRAIN_SCALE, linear_resize: bool = True) -> list:
    """The CPU image work of every pipeline: decode + crop + resize to ``resolution`` (+ flip when
    ``train``), yielding ``(B, resolution, resolution, 3)`` uint8. On a GPU this is all the CPU does;
    normalisation runs on the device (:func:`image_pipeline`).

    ``linear_resize`` (training only): bilinear below a 2x downscale instead of ffcv's area filter,
    ~5x cheaper for the paper's crops (:mod:`fastfc.data.resize`). Evaluation keeps ffcv's resize."""
    if train:
        return [random_resized_crop_decoder((resolution, resolution), scale, linear=linear_resize),
                RandomHorizontalFlip()]
    return [CenterCropRGBImageDecoder((resolution, resolution), ratio=1.0)]


def image_pipeline(*, train: bool, resolution: int, mean: Sequence[float], std: Sequence[float],
                   device: str | torch.device = "cpu", dtype=np.float32, scale=TRAIN_SCALE,
                   linear_resize: bool = True) -> list:
    """The ffcv operations for the ``image`` field.

    Args:
        train: random-resized crop (``scale``, aspect 3/4-4/3) + horizontal flip; otherwise the
            centre square resized to ``resolution`` (Resize(n_px) + CenterCrop(n_px) of the paper).
        resolution: output side in px.
        mean, std: per-channel normalisation on the 0..1 scale (e.g. CLIP's), RGB order.
        device: ``"cpu"`` or a CUDA device; decides where normalisation runs.
        dtype: numpy dtype of the normalised output (``np.float16`` halves the copy to a GPU).
        linear_resize: see :func:`decode_ops`.

    Returns:
        A list of ffcv operations yielding ``(B, 3, resolution, resolution)`` tensors of ``dtype``.
    """
    ops = decode_ops(train=train, resolution=resolution, scale=scale, linear_resize=linear_resize)
    normalise = NormalizeImage(np.array(mean) * 255, np.array(std) * 255, dtype)
    if torch.device(device).type == "cpu":
        return ops + [normalise, ToTensor(), ToTorchImage()]
    return ops + [ToTensor(), ToDevice(torch.device(device), non_blocking=True), ToTorchImage(), normalise]


def label_pipeline(device: str | torch.device = "cpu") -> list:
    """The ffcv operations for the ``label`` field: ``(B,)`` int64 tensors on ``device``.

    ``Squeeze(1)``, not ``Squeeze()``: a last batch of one image must stay ``(1,)``, not 0-d."""
    ops = [IntDecoder(), ToTensor(), Squeeze(1)]
    if torch.device(device).type != "cpu":
        ops.append(ToDevice(torch.device(device), non_blocking=True))
    return ops


def stored_short_side(beton: str | Path) -> int | None:
    """The most any image stored in ``beton`` can measure on its shorter side (px), from the writer
    settings in the ``meta.json`` beside it (``data_prep.imagenet``'s): its ``short_side`` bound and
    its ``max_resolution`` (a bound on the longer side, so on the shorter too). ``None`` when
    unbounded or when there is no such ``meta.json``."""
    if not (Path(beton).parent / "meta.json").is_file():
        return None
    writer = read_beton_meta(Path(beton).parent).get("writer") or {}
    bounds = [int(writer.get(k) or 0) for k in ("short_side", "max_resolution")]
    return min((b for b in bounds if b > 0), default=None)


def check_stored_size(beton: str | Path, resolution: int) -> None:
    """Refuse a beton stored smaller than the ``resolution`` px the encoder needs: every image would
    be upsampled (RN50x4 takes 288 px, RN50x16 384 px; a beton at ``--short-side 256`` is for 224).

    Raises:
        ValueError: naming the beton, its stored bound and the conversion to run instead.
    """
    bound = stored_short_side(beton)
    if bound is not None and bound < resolution:
        raise ValueError(f"{beton}: its images are stored with a shorter side of at most {bound} px ({Path(beton).parent}"
                         f"/meta.json, writer short_side / max_resolution), below this encoder's {resolution}-px input, "
                         f"so every image would be upsampled. Convert ImageNet for it into its own folder: python -m "
                         f"data_prep.imagenet --src ROOT --out DIR --short-side {math.ceil(resolution / TRAIN_SCALE[0])}")


def make_loader(beton: str | Path, *, train: bool, batch_size: int, resolution: int,
                mean: Sequence[float], std: Sequence[float], augment: bool | None = None, num_workers: int | None = None,
                device: str | torch.device = "cpu", dtype=np.float32, distributed: bool = False,
                seed: int = 0, indices: Sequence[int] | None = None, linear_resize: bool = True) -> Loader:
    """An ffcv ``Loader`` over a fastfc beton.

    Training loaders shuffle (QUASI_RANDOM order is not supported distributed, so RANDOM is used;
    the order is seeded by ``seed + epoch``); evaluation loaders are sequential. Both keep the last
    partial batch (ffcv's default ``drop_last=True`` would drop up to ``batch_size - 1`` images), as
    the original's ``DataLoader`` does: a training epoch is ``ceil(N / global batch)`` steps
    (:meth:`fastfc.train_config.TrainConfig.steps_per_epoch`). Distributed, ffcv pads every rank to
    ``ceil(N / ranks)`` images (torch's ``DistributedSampler``, as the original), so every rank's
    last batch has the same size. ``augment`` defaults to ``train``; ``train=True,
    augment=False`` shuffles but centre-crops, which makes a run reproducible bit for bit (ffcv
    1.0.2 does not seed its random crops and flips per sample). ``linear_resize=False`` gives ffcv's
    stock training decoder (see :func:`decode_ops`). ``num_workers`` (ffcv's decode threads): ``None``
    or 0 takes the default, and a number above the CPUs this process may use is lowered to them
    (:func:`fastfc.cpus.fit_workers`; numba refuses more threads than that).

    Raises:
        FileNotFoundError: ``beton`` does not exist.
        ValueError: ``beton`` is stored below ``resolution`` (:func:`check_stored_size`), or the
            ``meta.json`` beside it does not describe it (:func:`fastfc.data.betons.beton_samples`).
    """
    beton = Path(beton)
    if not beton.is_file():
        raise FileNotFoundError(f"{beton}: no such beton; create it with `python -m data_prep.imagenet`")
    beton_samples(beton)
    check_stored_size(beton, resolution)
    return Loader(
        str(beton), batch_size=batch_size, num_workers=fit_workers(num_workers or None, "num_workers"),
        order=OrderOption.RANDOM if train else OrderOption.SEQUENTIAL,
        drop_last=False, distributed=distributed, seed=seed,
        indices=None if indices is None else list(indices),
        pipelines={"image": image_pipeline(train=train if augment is None else augment,
                                           resolution=resolution, mean=mean, std=std,
                                           device=device, dtype=dtype, linear_resize=linear_resize),
                   "label": label_pipeline(device)})
