"""The CIFAR ResNet-32 of the paper's CIFAR-10 experiment, with its input normalisation built in.

Recipe (``docs/recipe.md``, "CIFAR-10 experiment"; the smoothing-adversarial code's
``cifar_resnet.py``, after He et al. 2016 §4.2): a normalisation layer (CIFAR-10 mean/std), a 3×3
conv to 16 channels + BN + ReLU, three stages of 5 basic blocks (16/32/64 channels, strides 1/2/2;
a shortcut that changes shape is a 1×1 conv + BN), 8×8 global average pooling, a 64→10 linear
layer. About 0.47 M parameters. Inputs are RGB images in [0, 1], ``[B, 3, 32, 32]`` float.
"""

from __future__ import annotations

import math

import torch
from torch import nn

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; mean and std are buffers (saved with the weights)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class BasicBlock(nn.Module):
    """conv3×3(stride)-BN-ReLU-conv3×3-BN, plus the shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """A CIFAR ResNet of depth ``6 * blocks + 2`` (``blocks=5``: ResNet-32).

    ``forward(x [B, 3, 32, 32] in [0, 1]) -> logits [B, num_classes]``. ``layer3[-1].conv2`` is the
    layer the feature visualisation hooks (64 channels at 8×8, before its BN).
    """

    def __init__(self, blocks: int = 5, num_classes: int = 10, widths: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        self.normalize = Normalize(CIFAR_MEAN, CIFAR_STD)
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(inplace=True))
        cin, stages = widths[0], []
        for width, stride in zip(widths, (1, 2, 2)):
            stages.append(nn.Sequential(*[BasicBlock(cin if i == 0 else width, width, stride if i == 0 else 1)
                                          for i in range(blocks)]))
            cin = width
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """Convs N(0, sqrt(2 / (k·k·out_channels))) (k = 3: sqrt(2 / (9·out))); BN weight 1, bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The stage-3 output: ``[B, 64, 8, 8]`` for ``[B, 3, 32, 32]`` inputs in [0, 1]."""
        return self.layer3(self.layer2(self.layer1(self.stem(self.normalize(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def resnet32(num_classes: int = 10) -> CifarResNet:
    """The paper's ResNet-32 (5 blocks per stage), freshly initialised."""
    return CifarResNet(blocks=5, num_classes=num_classes)
