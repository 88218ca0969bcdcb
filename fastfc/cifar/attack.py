"""PGD adversarial training of a noise-smoothed classifier: the training objective of the CIFAR experiment.

Recipe (``docs/recipe.md``, "CIFAR-10 experiment"; Salman et al. 2019, "Provably robust deep learning
via adversarially trained smoothed classifiers", their ``train_pgd.py`` with ``PGD_L2``): each chunk
of 64 images is seen as ``noise_copies = 2`` copies, each with its own Gaussian noise of σ = 0.25.
An L2 PGD attack of 4 steps (model in eval mode, no weight gradients) finds one δ per image, shared by
its copies, that raises the cross-entropy of the softmax averaged over the copies. The update is the
cross-entropy of the model in train mode on ``x + δ + noise`` for every copy. ε ramps up linearly over
the first 10 epochs to 255/256.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from fastfc.cifar.config import AttackConfig  # re-exported: the config lives apart, torch-free


def epsilon_at(epoch: int, *, epsilon: float = 255 / 256, ramp_epochs: int = 10) -> float:
    """The attack radius of ``epoch`` (0-based): ``min(1, (epoch + 1) / ramp_epochs) * epsilon``."""
    return min(1.0, (epoch + 1) / ramp_epochs) * epsilon


def noisy_copies(inputs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` images + ``[B, m, 3, H, W]`` noise → ``[B·m, 3, H, W]``, image i's copies at rows
    ``i·m … i·m + m - 1``, in the images' memory format (channels_last stays channels_last)."""
    copies = (inputs.unsqueeze(1) + noise).flatten(0, 1)
    if inputs.is_contiguous(memory_format=torch.channels_last) and not inputs.is_contiguous():
        copies = copies.contiguous(memory_format=torch.channels_last)
    return copies


def smoothed_nll(net: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the softmax averaged over noisy copies.

    ``inputs`` ``[B, 3, H, W]``, ``noise`` ``[B, m, 3, H, W]`` (m copies per image), ``labels`` ``[B]``.
    Returns the mean over the batch of ``-log(mean_j softmax(net(x + noise_j))[y])`` (float32).
    """
    b, m = noise.shape[:2]
    probs = net(noisy_copies(inputs, noise)).float().softmax(-1).view(b, m, -1).mean(1)
    return F.nll_loss(probs.clamp_min(1e-20).log(), labels)


def pgd_l2(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, noise: torch.Tensor, *, epsilon: float,
           steps: int = 4) -> torch.Tensor:
    """L2 PGD on the noise-smoothed loss (:func:`smoothed_nll`); returns δ, detached.

    ``images`` ``[B, 3, H, W]`` in [0, 1], ``labels`` ``[B]``, ``noise`` ``[B, m, 3, H, W]``. δ starts at 0;
    each step moves it by ``2 * epsilon / steps`` along the per-image L2-normalised gradient, clamps
    ``images + δ`` to [0, 1], and projects δ onto the L2 ball of radius ``epsilon``. So
    ``‖δ_i‖₂ <= epsilon`` and ``images + δ`` in [0, 1] on return. Where an image's gradient is exactly
    0 its direction is an unnormalised ``N(0, 1)`` draw, as the original's
    ``cifar/code/attacks.py:PGD_L2._attack_mutlinoise`` (norm about ``sqrt(3·H·W)``, so the step
    usually ends on the ε-sphere after the projection).
    The caller picks the mode of ``net`` (eval for the recipe); only δ's gradient is computed
    (``torch.autograd.grad``), so the weights' ``.grad`` and a DDP wrapper's state are untouched.
    """
    delta = torch.zeros_like(images, requires_grad=True)
    step_size = 2 * epsilon / steps
    for _ in range(steps):
        with torch.enable_grad():
            grad, = torch.autograd.grad(smoothed_nll(net, images + delta, labels, noise), delta)
        with torch.no_grad():
            norms = grad.flatten(1).norm(dim=1)
            direction = grad / norms.view(-1, 1, 1, 1)
            zero = norms == 0
            if zero.any():  # a flat loss: the original's Gaussian, not normalised
                direction[zero] = torch.randn_like(direction[zero])
            delta += step_size * direction
            delta.copy_((images + delta).clamp(0, 1) - images)
            delta.copy_(delta.renorm(2, 0, epsilon))
    return delta.detach()


class SmoothedPGDTask:
    """The training objective, for :func:`fastfc.train.train`.

    Args:
        net: the classifier (``[B, 3, 32, 32]`` in [0, 1] → logits); ``self.model`` starts as it and the
            loop may wrap it (DDP, compile). The attack always runs on ``net`` itself: a second forward
            through DDP before the backward would break its gradient reducer.
        attack: the recipe. ``set_epoch(e)`` sets the ε of the ramp (the loader calls it).
        test_set: this rank's share of the test set, for ``end_epoch`` (``None``: no evaluation).

    ``loss(images [B, 3, 32, 32] in [0, 1], labels [B]) -> scalar``: the cross-entropy over the
    ``B * noise_copies`` noisy adversarial copies. ``flops_per_image`` (per loaded image, forward +
    backward): ``m * (2 * steps + 3)`` forwards, an attack step costing ~2 and an update ~3.
    """

    def __init__(self, net: nn.Module, attack: AttackConfig, forward_flops: float | None = None, test_set=None,
                 *, eval_batch: int = 256, seed: int = 0):
        self.net, self.model, self.attack, self.test_set = net, net, attack, test_set
        self.eval_batch, self.seed = eval_batch, seed
        self.flops_per_image = (attack.noise_copies * (2 * attack.steps + 3) * forward_flops
                                if forward_flops else None)
        self.epsilon = epsilon_at(0, epsilon=attack.epsilon, ramp_epochs=attack.ramp_epochs)

    def set_epoch(self, epoch: int) -> None:
        self.epsilon = epsilon_at(epoch, epsilon=self.attack.epsilon, ramp_epochs=self.attack.ramp_epochs)

    def _noise(self, images: torch.Tensor, generator: torch.Generator | None = None, copies: int | None = None):
        shape = (images.shape[0], copies or self.attack.noise_copies, *images.shape[1:])
        return torch.randn(shape, generator=generator, device=images.device, dtype=images.dtype) * self.attack.noise_sd

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        noise = self._noise(images)
        self.net.eval()
        delta = pgd_l2(self.net, images, labels, noise, epsilon=self.epsilon, steps=self.attack.steps)
        self.net.train()
        logits = self.model(noisy_copies(images + delta, noise))
        return F.cross_entropy(logits.float(), labels.repeat_interleave(noise.shape[1]))

    def end_epoch(self, epoch: int) -> dict[str, float]:
        """Top-1 (%) of this epoch's model on the test set, one noisy copy per image as in the recipe's
        test: ``eval/clean/top1`` on ``x + noise``, ``eval/pgd/top1`` on ``x + δ + noise`` at this
        epoch's ε. Every rank scores its share; the counts are summed over ranks. The noise comes from
        its own generator (seeded by epoch), so the training RNG stream is untouched."""
        if self.test_set is None:
            return {}
        device = next(self.net.parameters()).device
        gen = torch.Generator(device=device).manual_seed(self.seed * 1000 + epoch)
        counts = torch.zeros(3, device=device)
        self.net.eval()
        loader = torch.utils.data.DataLoader(self.test_set, self.eval_batch)
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            noise = self._noise(images, gen, copies=1)
            delta = pgd_l2(self.net, images, labels, noise, epsilon=self.epsilon, steps=self.attack.steps)
            with torch.no_grad():
                clean = self.net(images + noise[:, 0]).argmax(1)
                attacked = self.net(images + delta + noise[:, 0]).argmax(1)
            counts += torch.stack([(clean == labels).sum(), (attacked == labels).sum(), labels.new_tensor(len(labels))])
        self.net.train()
        if dist.is_initialized():
            dist.all_reduce(counts)
        clean, attacked, n = counts.tolist()
        return {"eval/clean/top1": 100 * clean / max(n, 1), "eval/pgd/top1": 100 * attacked / max(n, 1),
                "eval/epsilon": self.epsilon}
