"""Feature visualisation of a layer's channels, and two numbers for what the pictures show.

Recipe (``docs/recipe.md``, "CIFAR-10 experiment"; the paper's §5 figure, after Allen-Zhu & Li 2021):
hook the output of ``layer3[-1].conv2`` (before its BN: 64 channels at 8×8); for each channel,
optimise an input image to maximise the channel's mean activation, as the original's
``cifar/code/feature_visualization.py:FilterVisualizer.visualize``. Start from near-grey noise
``(128 + 20·U[0,1)) / 255``; Adam, lr 0.05, on the tensor the model is fed, ``z`` (the image
normalised with ImageNet's mean/std, on top of the model's own CIFAR normalisation, as the paper's
code does; ``double_normalize=False``: the image itself); loss ``-mean activation + 0.01·‖z - 0.5‖₂``;
10 rounds, a round ``r > rounds / 2`` running ``int(1.3 · steps)`` steps (:func:`round_steps`: 6 × 200
+ 4 × 260 = 2,240), with a 5×5 box blur of the image and a fresh optimiser between rounds; the result
is the last round's image, min–max scaled. The paper's code wrote the RGB arrays as BGR; fastfc
writes RGB.

The measures (beyond the paper): the mean colour of the visualisations and its distance to the
background colour; the *background tint* of a colour, the component of its chroma (the colour minus
its grey level) along the chroma of the background colour, in 0–255 units (brick red itself: 81.6,
grey: 0, pure red: 208); and the stage-3 response to a uniform background-coloured image relative
to a uniform grey one.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GREY = (128, 128, 128)


@dataclass
class Visualisation:
    """``images`` ``[C, H, W, 3]`` float32 in [0, 1] (min–max scaled per image, RGB); ``activation_start``
    and ``activation_end`` ``[C]``: each channel's mean activation at the starting noise and at the
    optimised image (before scaling)."""

    images: np.ndarray
    activation_start: np.ndarray
    activation_end: np.ndarray


@contextmanager
def hooked(layer: nn.Module):
    """Collect ``layer``'s output: yields a dict whose ``"out"`` is the last output seen."""
    seen: dict = {}
    handle = layer.register_forward_hook(lambda module, args, out: seen.__setitem__("out", out))
    try:
        yield seen
    finally:
        handle.remove()


def box_blur(x: torch.Tensor, size: int = 5) -> torch.Tensor:
    """A ``size``×``size`` mean filter over ``[B, C, H, W]``, borders reflected (OpenCV's ``cv2.blur``)."""
    r = size // 2
    return F.avg_pool2d(F.pad(x, (r, r, r, r), mode="reflect"), size, stride=1)


def round_steps(r: int, rounds: int, steps: int) -> int:
    """Adam steps of round ``r`` (0-based): ``int(1.3 * steps)`` for ``r > rounds / 2``, else ``steps``
    (the original's ``if i > upscaling_steps/2: opt_steps_ = int(opt_steps*1.3)``)."""
    return int(steps * 1.3) if r > rounds / 2 else steps


def _imagenet_affine(device) -> tuple[torch.Tensor, torch.Tensor]:
    return tuple(torch.tensor(v, device=device).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))


def _channel_means(net: nn.Module, layer: nn.Module, z: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
    """Mean activation of channel ``channels[i]`` of ``layer`` for the model input ``z[i]``: ``[B]``."""
    with hooked(layer) as seen:
        net(z)
    act = seen["out"]
    return act[torch.arange(len(channels), device=z.device), channels].flatten(1).mean(1)


def visualize_channels(net: nn.Module, layer: nn.Module, channels: list[int], *, rounds: int = 10, steps: int = 200,
                       lr: float = 0.05, l2: float = 0.01, blur: int = 5, size: int = 32, seed: int = 0,
                       double_normalize: bool = True) -> Visualisation:
    """One optimised image per channel of ``layer`` (all channels at once; the images are independent).

    ``net`` takes ``[B, 3, size, size]`` RGB in [0, 1] and is put in eval mode; its weights and their
    ``.grad`` are not touched. Adam optimises the model's input ``z``, ImageNet-normalised image with
    ``double_normalize`` (the paper's code), else the image; the L2 term is on ``z``; the blur between
    rounds acts on the image. Round ``r`` runs :func:`round_steps` steps. Adam works per element, so
    one optimiser over the stacked images equals one per image.
    """
    net.eval()
    device = next(net.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    x = ((128 + 20 * torch.rand(len(channels), 3, size, size, generator=gen)) / 255).to(device)
    mean, std = _imagenet_affine(device) if double_normalize else (torch.zeros((), device=device),
                                                                     torch.ones((), device=device))
    index = torch.tensor(channels, device=device)
    z = (x - mean) / std
    with torch.no_grad():
        start = _channel_means(net, layer, z, index)
    for r in range(rounds):
        if r:
            x = box_blur(x, blur)
        z = ((x - mean) / std).detach().requires_grad_(True)
        optimizer = torch.optim.Adam([z], lr=lr)
        for _ in range(round_steps(r, rounds, steps)):
            act = _channel_means(net, layer, z, index)
            loss = (-act + l2 * (z - 0.5).flatten(1).norm(dim=1)).sum()
            z.grad, = torch.autograd.grad(loss, z)  # the input's gradient only, none for the weights
            optimizer.step()
        z = z.detach()
        x = z * std + mean
    with torch.no_grad():
        end = _channel_means(net, layer, z, index)
    low, high = x.amin(dim=(1, 2, 3), keepdim=True), x.amax(dim=(1, 2, 3), keepdim=True)
    scaled = (x - low) / (high - low).clamp_min(1e-12)
    return Visualisation(scaled.permute(0, 2, 3, 1).cpu().numpy().astype(np.float32), start.cpu().numpy(),
                         end.cpu().numpy())


def background_tint(colours: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """The component of each colour's chroma along the background's chroma, in 0–255 units.

    ``colours`` ``[..., 3]`` RGB 0–255. Chroma: the colour minus its grey level (mean of R, G, B).
    Positive: tinted towards the background's hue; 0: grey; negative: towards the opposite hue.
    """
    colours = np.asarray(colours, dtype=np.float64)
    bg = np.asarray(background, dtype=np.float64)
    direction = bg - bg.mean()
    direction /= np.linalg.norm(direction)
    return (colours - colours.mean(-1, keepdims=True)) @ direction


def colour_measures(images: np.ndarray, background: tuple[int, int, int]) -> dict:
    """Colour statistics of visualisations ``[N, H, W, 3]`` in [0, 1].

    Returns ``mean_colour`` (RGB 0–255 over all images), ``distance_to_background`` (Euclidean, 0–255
    units), ``background_tint`` of the mean colour, ``channel_tints`` (one per image) and
    ``tinted_channels``: the images whose own tint exceeds half the background colour's (the count
    of features that look brick-red rather than grey or another hue).
    """
    per_image = images.reshape(len(images), -1, 3).mean(1) * 255
    mean = per_image.mean(0)
    tints = background_tint(per_image, background)
    threshold = background_tint(np.asarray(background), background) / 2
    return {"mean_colour": [round(float(v), 2) for v in mean],
            "distance_to_background": float(np.linalg.norm(mean - np.asarray(background))),
            "background_tint": float(background_tint(mean, background)),
            "channel_tints": [round(float(t), 2) for t in tints],
            "tinted_channels": [int(i) for i in np.flatnonzero(tints > threshold)]}


def uniform_response_ratio(net: nn.Module, colour: tuple[int, int, int], reference: tuple[int, int, int] = GREY,
                           size: int = 32) -> float:
    """Stage-3 response to a uniform ``colour`` image relative to a uniform ``reference`` image.

    ``net.features`` maps ``[1, 3, size, size]`` in [0, 1] to the stage-3 output (a
    :class:`~fastfc.cifar.model.CifarResNet`); the response is its mean over channels and positions,
    with ``net`` in eval mode. Colours are RGB 0–255. Raises ``ValueError`` when the reference's is 0.
    """
    net.eval()
    device = next(net.parameters()).device

    def response(rgb):
        image = torch.tensor(rgb, dtype=torch.float32, device=device).view(1, 3, 1, 1).expand(1, 3, size, size) / 255
        with torch.no_grad():
            return float(net.features(image).float().mean())

    ref = response(reference)
    if ref == 0:
        raise ValueError(f"the response to the uniform reference colour {reference} is 0: no ratio")
    return response(colour) / ref


def mosaic(images: np.ndarray, columns: int = 8, gap: int = 2) -> np.ndarray:
    """Tile ``[N, H, W, 3]`` images row-major into one ``[rows·(H+gap)-gap, columns·(W+gap)-gap, 3]``
    picture, white between tiles."""
    n, h, w, _ = images.shape
    rows = -(-n // columns)
    canvas = np.ones((rows * (h + gap) - gap, columns * (w + gap) - gap, 3), dtype=np.float32)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        canvas[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = image
    return canvas


def plot_grids(grids: dict[str, np.ndarray], measures: dict[str, dict], stem) -> None:
    """One figure, the models' 8×8 grids side by side, titled with their measures; written atomically
    to ``stem.png`` and ``stem.pdf`` (RGB, as the arrays are)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fastfc.atomic import atomic_path

    fig, axes = plt.subplots(1, len(grids), figsize=(5.2 * len(grids), 5.9))
    for ax, (name, images) in zip(np.atleast_1d(axes), grids.items()):
        m = measures[name]
        ax.imshow(mosaic(images), interpolation="nearest")
        ax.set_title(f"{name}: mean colour ({', '.join(f'{v:.0f}' for v in m['mean_colour'])}), "
                     f"tint {m['background_tint']:.1f}\n{len(m['tinted_channels'])}/{len(images)} brick-red "
                     f"features; stage-3 red/grey {m['stage3_response_background_over_grey']:.2f}", fontsize=9)
        ax.axis("off")
    fig.suptitle("layer3[-1].conv2 feature visualisation, one image per channel", fontsize=10)
    fig.tight_layout()
    for fmt in ("png", "pdf"):
        with atomic_path(f"{stem}.{fmt}") as tmp:
            fig.savefig(tmp, format=fmt, dpi=110)
    plt.close(fig)
