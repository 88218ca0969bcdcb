"""Pins of the paper's code, point by point (docs/recipe.md): each test fails on a fastfc that
computes something else (QuickGELU, student init, distillation weight, probe clipping, the ViT
Gram/hidden terms, the toy's frozen bias, the fp32 feature cache)."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastfc.distill import DistillTask, ObjectiveConfig
from fastfc.features import extract
from fastfc.models import build_student, build_teacher
from fastfc.probe import ProbeRecipe, train_heads
from fastfc.toy import PRESETS, ToyConfig, build_model
from .test_distill import tiny_vit
from .test_probe import reference_probe

REPO = Path(__file__).resolve().parents[1]


def _embed(visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return visual.eval()(x)


# ----------------------------------------------------------------------------- 1. QuickGELU

@pytest.mark.parametrize("name", ["ViT-B-16", "RN50"])
@pytest.mark.parametrize("ddp_prefix", ["", "module."])
def test_original_checkpoint_loads_with_identical_embeddings(tmp_path, name, ddp_prefix):
    """A tower saved in the paper's format (``[module.]model.visual.*``) and loaded through the
    ``--weights`` path computes the source's embedding. The source is the QuickGELU tower the
    paper's OpenAI-family encoders are; under exact GELU the ViT's embedding is far off."""
    torch.manual_seed(0)
    source = open_clip.create_model(f"{name}-quickgelu").visual.eval()
    path = tmp_path / "distilled.pt"
    torch.save({f"{ddp_prefix}model.visual.{k}": v for k, v in source.state_dict().items()}, path)
    loaded = build_teacher(name, weights=path)  # what `fastfc features/probe/eval --weights` builds
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    want = _embed(source, x)
    assert (_embed(loaded.visual, x) - want).abs().max() < 1e-5
    gelu = open_clip.create_model(name).visual
    gelu.load_state_dict(source.state_dict())
    off = (_embed(gelu, x) - want).abs().max()
    assert off > 1e-2 if name == "ViT-B-16" else off < 1e-5  # the RN image path has no GELU


def test_vit_student_uses_quickgelu():
    student = build_student("ViT-B-16", seed=0)
    acts = {type(m.mlp.gelu).__name__ for m in student.visual.transformer.resblocks}
    assert acts == {"QuickGELU"}


# ----------------------------------------------------------------------------- 2. student init

# The original's re-init (models/clip/clip.py:reset_all_weights): model.apply visits children
# before parents, so nn.MultiheadAttention._reset_parameters runs after out_proj.reset_parameters.
# Each law below is written from PyTorch's documented defaults, not read from fastfc.

def _uniform(bound: float) -> tuple[str, float]:
    return ("uniform", bound)


def _law(key: str, t: torch.Tensor, shapes: dict[str, tuple[int, ...]]) -> tuple[str, float]:
    """(family, scale) of one tensor of a paper-init CLIP image tower: uniform bound or normal std."""
    leaf, owner = key.rsplit(".", 1)[-1], key.rsplit(".", 1)[0] if "." in key else ""
    if leaf == "num_batches_tracked" or leaf in ("in_proj_bias", "running_mean") or (
            leaf == "bias" and (owner.endswith("out_proj") or shapes.get(owner + ".running_var") or
                                owner.split(".")[-1].startswith("ln"))):
        return ("zeros", 0.0)  # BN/LN bias, attention in-bias and out_proj.bias (zeroed by the block)
    if leaf == "running_var" or (leaf == "weight" and len(t.shape) == 1):
        return ("ones", 1.0)  # BN/LN scale, BN running variance
    if leaf == "in_proj_weight":  # xavier-uniform over (3E, E)
        return _uniform(math.sqrt(6 / (t.shape[0] + t.shape[1])))
    if leaf == "weight":  # Conv/Linear kaiming-uniform(a=sqrt(5)): U(+-1/sqrt(fan_in))
        return _uniform(1 / math.sqrt(t[0].numel()))
    if leaf == "bias":  # Linear bias: U(+-1/sqrt(fan_in)) with fan_in from its weight
        return _uniform(1 / math.sqrt(math.prod(shapes[owner + ".weight"][1:])))
    if key == "attnpool.positional_embedding":
        return ("normal", t.shape[-1] ** -0.5)
    if key in ("class_embedding", "positional_embedding", "proj"):
        return ("normal", shapes["class_embedding"][0] ** -0.5)
    raise AssertionError(f"no law written for {key} {tuple(t.shape)}")


def _follows(t: torch.Tensor, family: str, scale: float) -> bool:
    t = t.double().flatten()
    if family == "zeros":
        return not t.any()
    if family == "ones":
        return torch.equal(t, torch.ones_like(t))
    n, std, top = t.numel(), t.std().item(), t.abs().max().item()
    std_ok = abs(std / (scale if family == "normal" else scale / math.sqrt(3)) - 1) < 0.05 + 4 / math.sqrt(n)
    if family == "uniform":  # bounded by the bound, and reaching near it
        return std_ok and top <= scale * (1 + 1e-6) and (n < 100 or top > 0.95 * scale)
    return std_ok and (n < 100 or top > 1.9 * scale)  # a normal exceeds the equal-std uniform's sqrt(3)


def _check_paper_init(visual: nn.Module) -> dict[str, int]:
    sd = visual.state_dict()
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    families: dict[str, int] = {}
    for key, t in sd.items():
        family, scale = _law(key, t, shapes)
        assert _follows(t, family, scale), (key, family, scale, t.double().std().item(), t.abs().max().item())
        families[family] = families.get(family, 0) + 1
    return families


@pytest.mark.parametrize("name", ["RN50", "ViT-B-16", pytest.param("RN101", marks=pytest.mark.slow),
                                  pytest.param("RN50x4", marks=pytest.mark.slow),
                                  pytest.param("RN50x16", marks=pytest.mark.slow)])
def test_student_init_follows_the_originals_law_per_tensor(name):
    student = build_student(name, seed=0).visual
    families = _check_paper_init(student)
    assert families["zeros"] > 0 and families["ones"] > 0 and families["uniform"] > 0 and families["normal"] > 0
    if name == "ViT-B-16":  # the block's _reset_parameters runs last: out_proj.bias exactly 0 in all 12
        biases = [b.attn.out_proj.bias for b in student.transformer.resblocks]
        assert len(biases) == 12 and not any(b.any() for b in biases)
        assert families["normal"] == 3
    else:
        assert families["normal"] == 1  # the attention pool's positional embedding


def test_student_init_laws_hold_for_a_reduced_vit_and_resnet():
    """The same laws on smaller towers of the same module kinds (fast, several block counts)."""
    from open_clip.modified_resnet import ModifiedResNet
    from open_clip.transformer import VisionTransformer

    from fastfc.models import paper_init

    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=8, width=64, layers=3, heads=2, mlp_ratio=2.0, output_dim=16)
    rn = ModifiedResNet(layers=(1, 2, 1, 1), output_dim=32, heads=2, image_size=64, width=16)
    for tower in (vit, rn):
        for p in tower.parameters():  # start far from every law, so a tensor paper_init misses fails
            nn.init.constant_(p, 7.0)
        _check_paper_init(paper_init(tower))
    assert all(not b.attn.out_proj.bias.any() for b in vit.transformer.resblocks)


def test_open_clip_init_stays_available():
    # open_clip's own init, kept as init="open_clip": zero last BN scale per bottleneck
    theirs = build_student("RN50", seed=0, init="open_clip").visual
    assert not theirs.layer1[0].bn3.weight.any()


def test_students_are_identical_across_ranks_and_init_is_validated():
    a, b = build_student("RN50", seed=3).visual, build_student("RN50", seed=3).visual
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(ValueError, match="unknown init 'xavier'"):
        build_student("RN50", init="xavier")


# ----------------------------------------------------------------------------- 3. distillation weight

def test_every_paper_config_uses_the_original_default_weight_and_init():
    configs = sorted((REPO / "launch" / "configs").glob("distill_*.toml"))
    assert len(configs) == 5
    for path in configs:
        cfg = tomllib.loads(path.read_text())
        assert cfg["objective"]["distill_weight"] == 0.9 and cfg["encoder"]["init"] == "paper", path.name
    assert ObjectiveConfig().distill_weight == 0.9


# ----------------------------------------------------------------------------- 4. probe clipping

def test_probe_heads_clip_each_gradient_at_one():
    """Large features give gradient norms far above 1: every head must equal a separate run of
    torch's AdamW with ``clip_grad_norm_(1.0)``, and differ from the unclipped run."""
    g = torch.Generator().manual_seed(0)
    x = 50 * torch.randn(64, 8, generator=g)
    y = torch.randint(0, 4, (64,), generator=g)
    recipe = ProbeRecipe(epochs=4, batch_size=16, lr=1e-2, warmup_steps=2, seed=3)
    wds = [1e-3, 0.5]
    weights, biases = train_heads(x, y, 4, wds, recipe, progress=False)
    for k, wd in enumerate(wds):
        w_ref, b_ref = reference_probe(x, y, 4, wd, recipe)
        assert torch.allclose(weights[k], w_ref, atol=1e-5) and torch.allclose(biases[k], b_ref, atol=1e-5)
        w_free, _ = reference_probe(x, y, 4, wd, ProbeRecipe(**{**recipe.__dict__, "grad_clip": math.inf}))
        assert (weights[k] - w_free).abs().max() > 1e-3


# ----------------------------------------------------------------------------- 5. ViT Gram / hidden terms

def _taps(visual: nn.Module, blocks: list[int]):
    """Hand-collected ``ln_1`` outputs and block outputs of the chosen blocks."""
    normed, hidden = [], []
    for i in blocks:
        block = visual.transformer.resblocks[i]
        block.ln_1.register_forward_hook(lambda m, a, out: normed.append(out))
        block.register_forward_hook(lambda m, a, out: hidden.append(out))
    return normed, hidden


def test_vit_terms_are_the_papers_gram_and_hidden_mses_averaged_over_blocks():
    teacher, student = tiny_vit(0), tiny_vit(1)
    objective = ObjectiveConfig(distill_weight=0.9, hidden_weight=0.3, attn_weight=0.7, blocks="0,2")
    task = DistillTask(teacher, student, objective, "vit")
    (t_norm, t_hid), (s_norm, s_hid) = _taps(teacher.visual, [0, 2]), _taps(student.visual, [0, 2])
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    loss = task.loss(images)
    width = teacher.visual.class_embedding.shape[0]
    gram = lambda h: torch.einsum("bie,bje->bij", h, h) / math.sqrt(width)  # noqa: E731
    emb = 0.9 * F.mse_loss(student.visual(images), teacher.visual(images))
    hidden = sum(F.mse_loss(s, t) for s, t in zip(s_hid[:2], t_hid[:2])) / 2
    attn = sum(F.mse_loss(gram(s), gram(t)) for s, t in zip(s_norm[:2], t_norm[:2])) / 2
    assert gram(s_norm[0]).shape == (3, 17, 17)
    assert torch.allclose(loss, emb + 0.3 * hidden + 0.7 * attn, rtol=1e-5)


# ----------------------------------------------------------------------------- 7. precision, toy

def test_toy_theory_output_layer_keeps_its_random_bias_frozen():
    cfg = ToyConfig(**PRESETS["theory"][1])
    frozen = build_model(cfg, torch.Generator().manual_seed(cfg.seed))[2]
    free = build_model(ToyConfig(**{**PRESETS["theory"][1], "freeze_output": False}),
                       torch.Generator().manual_seed(cfg.seed))[2]
    assert torch.equal(frozen.bias, free.bias) and frozen.bias.abs().item() > 0
    assert frozen.weight[0, 0].item() == 1 / cfg.hidden and frozen.weight[0, -1].item() == -1 / cfg.hidden
    assert not frozen.bias.requires_grad and not frozen.weight.requires_grad


def test_fp32_feature_cache_is_float32_and_separate(converted, tmp_path):
    out, meta = converted
    encoder = build_student("tiny", seed=0)
    half = extract(encoder, out / "val.beton", tmp_path, batch_size=16, num_workers=1)
    full = extract(encoder, out / "val.beton", tmp_path, batch_size=16, num_workers=1, precision="fp32")
    assert half.features.dtype == np.float16 and full.features.dtype == np.float32
    assert full.path != half.path and full.meta["precision"] == "fp32"
    assert np.allclose(full.features, half.features, atol=1e-2, rtol=1e-2)
    assert not np.array_equal(full.features, half.features.astype(np.float32))
    with pytest.raises(ValueError, match="precision must be one of bf16, fp32"):
        extract(encoder, out / "val.beton", tmp_path, precision="fp16")
