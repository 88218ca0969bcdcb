"""The CIFAR-10 experiment: data, ResNet-32, PGD on the smoothed classifier, visualisation, measures,
the commands end to end (real torchrun with gloo, the photo stand-in for CIFAR-10)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from fastfc.cifar.attack import AttackConfig, SmoothedPGDTask, epsilon_at, noisy_copies, pgd_l2, smoothed_nll
from fastfc.cifar.data import BACKGROUND, EpochLoader, PhotoCIFAR10, train_transform
from fastfc.cifar.data import test_transform as eval_transform  # not a test
from fastfc.cifar.model import CifarResNet, resnet32
from fastfc.cifar.run import resolve
from fastfc.cli import main as fastfc_main
from fastfc.cifar.visualize import (background_tint, colour_measures, round_steps, uniform_response_ratio,
                                    visualize_channels)
from fastfc.train import TrainConfig, build_optimizer, scheduled_lr

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained_tiny():
    """A tiny CIFAR ResNet (1 block per stage) fitted to 100 photo images with the recipe's Gaussian noise
    (σ = 0.25); returns (net, images, labels)."""
    data = PhotoCIFAR10(train=True, transform=eval_transform(), per_class=10)
    images = torch.stack([data[i][0] for i in range(len(data))])
    labels = torch.tensor(data.targets)
    torch.manual_seed(0)
    net = CifarResNet(blocks=1, widths=(8, 16, 32))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    for _ in range(80):
        loss = F.cross_entropy(net(images + 0.25 * torch.randn_like(images)), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.zero_grad(set_to_none=True)
    net.eval()
    assert (net(images + 0.25 * torch.randn_like(images)).argmax(1) == labels).float().mean() > 0.8  # learned
    return net, images, labels


# ------------------------------------------------------------------ model and data

def test_resnet32_has_the_papers_shape_and_parameter_count():
    net = resnet32()
    n = sum(p.numel() for p in net.parameters())
    assert 0.45e6 < n < 0.48e6, n  # "about 0.46 M" (1x1-conv shortcuts add 2.7 k)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 31  # + the linear layer: 32 weight layers
    seen = {}
    net.layer3[-1].conv2.register_forward_hook(lambda m, a, out: seen.setdefault("out", out))
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert seen["out"].shape == (2, 64, 8, 8)
    std = net.layer3[0].conv1.weight.std().item()  # N(0, sqrt(2 / (9 * 64)))
    assert std == pytest.approx((2 / (9 * 64)) ** 0.5, rel=0.05)


def test_background_padding_is_exactly_brick_red_and_raw_has_none():
    green = Image.new("RGB", (32, 32), (0, 255, 0))
    torch.manual_seed(0)
    background = train_transform("background")
    pixels = torch.cat([background(green).reshape(3, -1).T for _ in range(30)])
    padded = pixels[(pixels != torch.tensor([0.0, 1.0, 0.0])).any(1)]
    assert len(padded) > 0  # some crops moved the image and let the border in
    assert torch.equal(padded.unique(dim=0), torch.tensor([[150.0, 50.0, 50.0]]) / 255)  # ToTensor of uint8
    assert background(green).shape == (3, 32, 32)
    raw = torch.stack([train_transform("raw")(green) for _ in range(10)])
    assert torch.equal(raw, torch.stack([eval_transform()(green)] * 10))  # flip of a flat image: unchanged
    with pytest.raises(ValueError, match="raw, background"):
        train_transform("red")


def test_photo_stand_in_has_cifar10s_interface():
    train, test = PhotoCIFAR10(train=True, per_class=3), PhotoCIFAR10(train=False, per_class=3)
    assert train.data.shape == (30, 32, 32, 3) and train.data.dtype == np.uint8
    assert train.targets == [c for c in range(10) for _ in range(3)] and len(train.classes) == 10
    image, label = train[4]
    assert isinstance(image, Image.Image) and image.size == (32, 32) and label == 1
    assert not np.array_equal(train.data, test.data)  # other views of the same photographs
    assert np.array_equal(PhotoCIFAR10(per_class=3).data, train.data)  # deterministic


def test_epoch_loader_seeds_the_order_and_ramps_epsilon():
    data = PhotoCIFAR10(train=True, transform=eval_transform(), per_class=4)
    task = SmoothedPGDTask(nn.Linear(1, 1), AttackConfig())
    loader = EpochLoader(data, 8, seed=3, on_epoch=[task.set_epoch])
    assert len(loader) == 5
    orders = []
    for epoch in (0, 1, 0):
        loader.next_epoch = epoch
        orders.append(torch.cat([labels for _, labels in loader]))
        assert task.epsilon == epsilon_at(epoch)
    assert torch.equal(orders[0], orders[2]) and not torch.equal(orders[0], orders[1])


# ------------------------------------------------------------------ attack

def test_epsilon_ramp_matches_the_formula():
    for epoch in range(15):
        assert epsilon_at(epoch) == min(1, (epoch + 1) / 10) * 255 / 256
    assert epsilon_at(0) == pytest.approx(0.0996, abs=1e-4) and epsilon_at(9) == epsilon_at(30) == 255 / 256
    assert epsilon_at(1, epsilon=0.5, ramp_epochs=4) == 0.25


@pytest.mark.parametrize("epsilon", [0.1, 2.0, 40.0])
def test_pgd_keeps_delta_in_the_ball_and_the_image_in_range(trained_tiny, epsilon):
    net, images, labels = trained_tiny
    x = images[:16].clone()
    x[:, :, :4] = 1.0  # pixels at the range's edges, where the clamp matters
    x[:, :, -4:] = 0.0
    noise = torch.randn(16, 2, 3, 32, 32) * 0.25
    delta = pgd_l2(net, x, labels[:16], noise, epsilon=epsilon, steps=4)
    norms = delta.flatten(1).norm(dim=1)
    assert (norms <= epsilon * (1 + 1e-6)).all(), norms.max()
    assert ((x + delta) >= 0).all() and ((x + delta) <= 1).all()
    if epsilon <= 2.0:  # 4 steps of 2ε/4 reach the sphere: the projection was active
        assert norms.min() > 0.99 * epsilon
    assert all(p.grad is None for p in net.parameters())  # no weight gradients


def test_pgd_raises_the_smoothed_loss_of_a_trained_model(trained_tiny):
    net, images, labels = trained_tiny
    torch.manual_seed(1)
    noise = torch.randn(len(images), 2, 3, 32, 32) * 0.25
    delta = pgd_l2(net, images, labels, noise, epsilon=0.5, steps=4)
    random = torch.randn_like(delta)
    random = random / random.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    with torch.no_grad():
        clean = smoothed_nll(net, images, labels, noise).item()
        attacked = smoothed_nll(net, images + delta, labels, noise).item()
        jittered = smoothed_nll(net, (images + random).clamp(0, 1), labels, noise).item()
    assert attacked > 2 * clean and attacked > 2 * jittered, (clean, jittered, attacked)


class _Flat(nn.Module):
    """Logits that do not depend on the input: every gradient with respect to the image is exactly 0."""

    def forward(self, x):
        return (0 * x.flatten(1).sum(1, keepdim=True)).expand(-1, 10)


def test_pgd_on_a_zero_gradient_steps_an_unnormalised_gaussian_onto_the_sphere():
    """The original (``PGD_L2._attack_mutlinoise``): a zero-gradient image's step direction is
    ``randn`` itself, norm ~sqrt(3072), so each step lands on the ε-sphere after the projection."""
    x, labels = torch.full((3, 3, 32, 32), 0.5), torch.tensor([0, 1, 2])
    noise, epsilon, steps = torch.zeros(3, 2, 3, 32, 32), 0.5, 16
    torch.manual_seed(4)
    delta = pgd_l2(_Flat(), x, labels, noise, epsilon=epsilon, steps=steps)
    torch.manual_seed(4)
    want = torch.zeros_like(x)
    for _ in range(steps):  # the original's arithmetic, written out
        want = want + 2 * epsilon / steps * torch.randn_like(x)
        want = (x + want).clamp(0, 1) - x
        want = want * (epsilon / want.flatten(1).norm(dim=1).clamp_min(epsilon)).view(-1, 1, 1, 1)
    assert torch.allclose(delta, want, atol=1e-6)
    assert torch.allclose(delta.flatten(1).norm(dim=1), torch.full((3,), epsilon), rtol=1e-5)  # a unit step: 0.5 ε


def test_noisy_copies_keep_each_images_copies_together_and_the_memory_format():
    images = torch.rand(3, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    noise = torch.randn(3, 2, 3, 4, 4)
    copies = noisy_copies(images, noise)
    assert copies.shape == (6, 3, 4, 4) and copies.is_contiguous(memory_format=torch.channels_last)
    for row, (i, j) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]):  # labels.repeat_interleave(2)
        assert torch.equal(copies[row], images[i] + noise[i, j])


def test_task_loss_trains_on_the_noisy_adversarial_copies(trained_tiny):
    net, images, labels = trained_tiny
    task = SmoothedPGDTask(net, AttackConfig(), forward_flops=1.0)
    assert task.flops_per_image == 2 * (2 * 4 + 3)
    net.train()
    loss = task.loss(images[:8], labels[:8])
    loss.backward()
    assert net.training and loss.item() > 0 and all(p.grad is not None for p in net.parameters())
    net.zero_grad(set_to_none=True)
    net.eval()


# ------------------------------------------------------------------ train-loop options of the recipe

def test_step_schedule_and_sgd():
    cfg = TrainConfig(lr=0.1, schedule="step", lr_step_epochs=50, lr_gamma=0.1, warmup_steps=0,
                      optimizer="sgd", momentum=0.9, weight_decay=1e-4)
    lrs = [scheduled_lr(cfg, epoch * 10, total=2500, steps_per_epoch=10) for epoch in (0, 49, 50, 99, 100, 249)]
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 1e-5], rel=1e-12)
    assert scheduled_lr(cfg, 499, total=2500, steps_per_epoch=10) == 0.1  # last step of epoch 49
    opt = build_optimizer(cfg, [nn.Parameter(torch.zeros(2))], fused=False)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9
    assert opt.defaults["weight_decay"] == 1e-4
    assert isinstance(build_optimizer(TrainConfig(), [nn.Parameter(torch.zeros(2))], fused=False), torch.optim.AdamW)
    with pytest.raises(ValueError, match="optimizer must be one of adamw, sgd"):
        TrainConfig(optimizer="lamb")


# ------------------------------------------------------------------ visualisation and measures

def test_visualisation_raises_its_channels_activation():
    torch.manual_seed(0)
    net = resnet32()
    layer = net.layer3[-1].conv2
    vis = visualize_channels(net, layer, [0, 5, 63], rounds=2, steps=6)
    assert vis.images.shape == (3, 32, 32, 3) and vis.images.dtype == np.float32
    assert (vis.activation_end > vis.activation_start + 0.1).all(), (vis.activation_start, vis.activation_end)
    assert np.allclose(vis.images.min(axis=(1, 2, 3)), 0) and np.allclose(vis.images.max(axis=(1, 2, 3)), 1)
    assert all(p.grad is None for p in net.parameters())  # only the images were optimised
    clean = visualize_channels(net, layer, [0], rounds=1, steps=1, double_normalize=False)
    assert clean.activation_start[0] != pytest.approx(vis.activation_start[0])  # the paper's input differs


def test_round_steps_are_the_originals():
    assert [round_steps(r, 10, 200) for r in range(10)] == [200] * 6 + [260] * 4
    assert sum(round_steps(r, 10, 200) for r in range(10)) == 2_240
    assert [round_steps(r, 2, 8) for r in range(2)] == [8, 8]  # the smoke preset


def _reference_visualisation(net, layer, channels, i, *, rounds, steps, lr=0.05, seed=0):
    """``FilterVisualizer.visualize`` written out for one channel: Adam on the ImageNet-normalised
    tensor the model is fed, the L2 term on it, cv2.blur of the image between rounds, longer late rounds."""
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    start = (128 + 20 * torch.rand(len(channels), 3, 32, 32, generator=torch.Generator().manual_seed(seed))) / 255
    img, channel = start[i].permute(1, 2, 0).double().numpy(), channels[i]  # HWC, as the original's numpy image
    seen = {}
    hook = layer.register_forward_hook(lambda m, a, out: seen.__setitem__("out", out))
    for i in range(rounds):
        z = torch.from_numpy(((img - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)).requires_grad_()
        opt = torch.optim.Adam([z], lr=lr, weight_decay=0)
        for _ in range(int(steps * 1.3) if i > rounds / 2 else steps):
            opt.zero_grad()
            net(z)
            loss = -seen["out"][0, channel].mean() + 1e-2 * torch.norm(z - torch.full_like(z, 0.5), p=2)
            loss.backward()
            opt.step()
        out = z.detach()[0].double().numpy().transpose(1, 2, 0) * std + mean
        img = cv2.blur(out, (5, 5))
    hook.remove()
    return (out - out.min()) / (out.max() - out.min())


def test_visualisation_optimises_the_normalised_input_as_the_original():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
    net.requires_grad_(False)
    layer = net[2]
    vis = visualize_channels(net, layer, [0, 3], rounds=3, steps=10, lr=0.05)  # rounds of 10, 10, 13 steps
    for i, channel in enumerate((0, 3)):
        want = _reference_visualisation(net, layer, [0, 3], i, rounds=3, steps=10)
        # float32 here, float64 numpy there: 3e-4 on average after 33 Adam steps; 13 steps in the last
        # round replaced by 10 would be 4e-2 off, pixels optimised instead of the normalised input 0.3
        assert np.abs(vis.images[i] - want).mean() < 2e-3 and np.abs(vis.images[i] - want).max() < 5e-2, channel
    pixels = visualize_channels(net, layer, [0, 3], rounds=3, steps=10, lr=0.05, double_normalize=False)
    assert np.abs(pixels.images - vis.images).max() > 1e-2


def _detectors() -> tuple[nn.Module, nn.Conv2d]:
    """A 1x1 conv with channel 0 = R - (G + B) / 2 (a red detector), 1 = (R + G + B) / 3 (grey/brightness),
    2 = G - (R + B) / 2 (green)."""
    conv = nn.Conv2d(3, 3, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1, -0.5, -0.5], [1 / 3, 1 / 3, 1 / 3], [-0.5, 1, -0.5]]).view(3, 3, 1, 1))
    return nn.Sequential(conv), conv


def test_colour_measure_finds_the_red_detector_and_rejects_the_grey_one():
    net, conv = _detectors()
    vis = visualize_channels(net, conv, [0, 1, 2], rounds=2, steps=20, double_normalize=False)  # detectors of pixels
    m = colour_measures(vis.images, BACKGROUND)
    assert m["tinted_channels"] == [0], m
    red, grey, green = m["channel_tints"]
    assert red > 150 and abs(grey) < 20 and green < -50
    red_only = colour_measures(vis.images[:1], BACKGROUND)
    assert red_only["mean_colour"][0] > 200 and max(red_only["mean_colour"][1:]) < 30
    assert background_tint(np.array([150, 50, 50]), BACKGROUND) == pytest.approx(81.65, abs=0.01)
    assert background_tint(np.array([128, 128, 128]), BACKGROUND) == pytest.approx(0, abs=1e-9)
    flat = np.full((2, 4, 4, 3), 0.5, dtype=np.float32)
    assert colour_measures(flat, BACKGROUND)["distance_to_background"] == pytest.approx(
        np.linalg.norm(np.array([127.5, 127.5, 127.5]) - np.array(BACKGROUND)))


def test_uniform_response_ratio_is_red_over_grey():
    class RedChannel(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(()))

        def features(self, x):
            return self.scale * x[:, :1]

    assert uniform_response_ratio(RedChannel(), BACKGROUND) == pytest.approx(150 / 128)
    with pytest.raises(ValueError, match="is 0"):
        uniform_response_ratio(RedChannel(), BACKGROUND, reference=(0, 0, 0))


# ------------------------------------------------------------------ commands

def main(argv: list[str]) -> int:
    """``fastfc cifar ARGV`` through the one dispatcher and its error path."""
    return fastfc_main(["cifar", *argv])


@pytest.mark.parametrize("variant", ["raw", "background"])
def test_launch_configs_resolve_to_the_papers_recipe(variant, capsys):
    path = REPO / "launch" / "configs" / f"cifar_{variant}.toml"
    assert main(["train", "--config", str(path), "--dry-run"]) == 0
    out = json.loads(capsys.readouterr().out)
    cfg, plan = out["config"], out["plan"]
    assert cfg["data"]["variant"] == variant and cfg["train"]["out_dir"] == f"runs/cifar_{variant}"
    assert (cfg["train"]["optimizer"], cfg["train"]["lr"], cfg["train"]["schedule"]) == ("sgd", 0.1, "step")
    assert cfg["attack"]["epsilon"] == 255 / 256 and cfg["train"]["grad_clip"] == float("inf")
    assert plan["steps_per_epoch"] == 782 and plan["total_steps"] == 250 * 782  # 390 batches of 128 split in 2, + 80 in 2
    assert resolve("paper", variant=variant).train.epochs == 250  # the config restates the preset


def test_commands_refuse_bad_input_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--out", str(tmp_path)])  # no variant
    assert "--variant raw|background is required" in capsys.readouterr().err
    assert main(["visualize", str(tmp_path / "raw"), str(tmp_path / "bg"), "--out", str(tmp_path / "v")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"fastfc cifar visualize: error: {tmp_path / 'raw' / 'weights.pt'}: no trained weights")
    run = tmp_path / "bg"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"data": {"variant": "background"}}))
    torch.save(resnet32().state_dict(), run / "weights.pt")
    assert main(["visualize", str(run), str(run), "--out", str(tmp_path / "v")]) == 1
    assert "trained with --variant background, but given as the raw run" in capsys.readouterr().err
    (run / "weights.pt").write_bytes(b"not a checkpoint")
    (run / "config.json").write_text(json.dumps({"data": {"variant": "raw"}}))
    assert main(["visualize", str(run), str(run), "--out", str(tmp_path / "v")]) == 1
    assert "not a ResNet-32 state dict" in capsys.readouterr().err
    assert not (tmp_path / "v").exists()  # nothing written before the inputs were checked
    assert main(["train", "--variant", "raw", "--set", "data.source=imagenet", "--dry-run"]) == 1
    assert "data.source = 'imagenet'" in capsys.readouterr().err


@pytest.mark.slow
def test_smoke_run_end_to_end(tmp_path):
    """Both smoke trainings (raw under torchrun with 2 gloo ranks) and the visualisation, via the CLI."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-m", "fastfc", "cifar"]
    runs = {"raw": tmp_path / "raw", "background": tmp_path / "background"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                "-m", "fastfc", "cifar"]
    for variant, launcher in (("raw", torchrun), ("background", cli)):
        done = subprocess.run([*launcher, "train", "--variant", variant, "--out", str(runs[variant]),
                               "--preset", "smoke"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        summary = json.loads((runs[variant] / "summary.json").read_text())
        assert summary["step"] == summary["total_steps"] and not summary["stopped_early"]
        records = [json.loads(line) for line in (runs[variant] / "metrics.jsonl").read_text().splitlines()]
        evals = [r for r in records if "eval/pgd/top1" in r]
        assert [r["eval/epsilon"] for r in evals] == [epsilon_at(e, ramp_epochs=2) for e in range(2)]
        assert all(0 <= r["eval/pgd/top1"] <= 100 and 0 <= r["eval/clean/top1"] <= 100 for r in evals)
        assert all(np.isfinite(r["train/loss"]) for r in records if "train/loss" in r)
    sums = json.loads((runs["raw"] / "summary.json").read_text())["replica_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]  # DDP kept the ranks' replicas equal
    assert json.loads((runs["raw"] / "summary.json").read_text())["total_steps"] == 10  # 160 / (2 ranks x 16) x 2 epochs

    out = tmp_path / "features"
    done = subprocess.run([*cli, "visualize", str(runs["raw"]), str(runs["background"]), "--out", str(out),
                           "--preset", "smoke"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "stage-3 red/grey" in done.stdout
    measures = json.loads((out / "measures.json").read_text())
    for variant in runs:
        images = np.load(out / f"features_{variant}.npy")
        assert images.shape == (64, 32, 32, 3) and images.min() >= 0 and images.max() <= 1
        m = measures["models"][variant]
        assert m["mean_colour"] == pytest.approx(list(images.reshape(-1, 3).mean(0) * 255), abs=0.01)
        assert m["stage3_response_background_over_grey"] > 0 and m["activation_raised"] > 0.5
    assert (out / "features.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "features.pdf").read_bytes()[:5] == b"%PDF-"
    assert sorted(p.name for p in out.iterdir()) == ["features.pdf", "features.png", "features_background.npy",
                                                     "features_raw.npy", "measures.json"]  # no temporaries left
