"""Zero-shot heads (fastfc/zeroshot.py) on a real open_clip CLIP, tiny and randomly initialised.

No weights can be downloaded here, so the CLIP is open_clip's own ``CLIP`` class at toy width with
open_clip's real tokenizer; what is checked is the recipe: prompts x templates through the text
tower, the head's scale, and that the head's top-1 on raw embeddings is CLIP's cosine top-1.
"""

from __future__ import annotations

from dataclasses import replace

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

from fastfc.cli import main
from fastfc.fixtures.photos import IMAGENETTE_WNIDS
from fastfc.probe import ProbeRecipe, top1, train_heads
from fastfc.train import lr_at
from fastfc.zeroshot import build_clip, classnames_for, zero_shot_head

TEMPLATES = ("a photo of a {}.", lambda c: f"a sketch of the {c}.", "itap of a {}.")


@pytest.fixture(scope="module")
def tiny_clip():
    torch.manual_seed(0)
    model = CLIP(embed_dim=24, vision_cfg=CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=16, image_size=32),
                 text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))
    return model.eval(), open_clip.get_tokenizer("RN50")


def test_class_names_come_from_open_clip_by_wnid():
    assert classnames_for(["n01440764", "n02102040", "n03417042"]) == ["tench", "English Springer Spaniel", "garbage truck"]
    assert classnames_for(["n03417042", "n01440764"]) == ["garbage truck", "tench"]  # label order, not ImageNet order
    with pytest.raises(ValueError, match="n99999999"):
        classnames_for(["n01440764", "n99999999"])


def test_zero_shot_head_is_clips_classifier_on_raw_embeddings(tiny_clip):
    model, tokenizer = tiny_clip
    names = classnames_for(IMAGENETTE_WNIDS)
    weight, bias = zero_shot_head(model, tokenizer, names, TEMPLATES, progress=False)
    scale = float(model.logit_scale.detach().exp())
    assert weight.shape == (10, 24) and weight.dtype == torch.float32 and torch.equal(bias, torch.zeros(10))
    assert torch.allclose(weight.norm(dim=1), torch.full((10,), scale), rtol=1e-5)
    with torch.no_grad():  # class 3 from scratch: normalised prompt embeddings, averaged, normalised, scaled
        prompts = [t.format(names[3]) if isinstance(t, str) else t(names[3]) for t in TEMPLATES]
        text = F.normalize(model.encode_text(tokenizer(prompts)), dim=-1).mean(0)
        assert torch.allclose(weight[3], scale * F.normalize(text, dim=0), atol=1e-5)
        images = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        embedding = model.encode_image(images)  # what fastfc's probes read: not normalised
        cosine = F.normalize(embedding, dim=-1) @ F.normalize(weight, dim=-1).T
    logits = embedding @ weight.T + bias
    assert torch.allclose(logits / embedding.norm(dim=1, keepdim=True), scale * cosine, atol=1e-4)
    assert torch.equal(logits.argmax(1), cosine.argmax(1))


def test_probe_starts_from_the_given_head():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 24, generator=g).half(), torch.randint(0, 10, (64,), generator=g)
    init = (torch.randn(10, 24, generator=g), torch.randn(10, generator=g))
    w0, b0 = train_heads(x, y, 10, [1e-3], ProbeRecipe(epochs=0), progress=False, init=init)
    assert torch.equal(w0[0], init[0]) and torch.equal(b0[0], init[1])  # 0 epochs: the head itself
    recipe = ProbeRecipe(epochs=2, batch_size=16, warmup_steps=2)
    w1, _ = train_heads(x, y, 10, [1e-3], recipe, progress=False, init=init)
    w2, _ = train_heads(x, y, 10, [1e-3], recipe, progress=False)
    assert 0 < (w1[0] - init[0]).abs().max() < 0.1  # trained, from there
    assert (w1[0] - w2[0]).abs().max() > 0.5  # not from the default initialisation
    with pytest.raises(ValueError, match=r"need \(10, 24\)"):
        train_heads(x, y, 10, [1e-3], recipe, progress=False, init=(init[0][:, :8], init[1]))


def test_a_probe_from_a_zero_shot_head_trains_on_normalised_features():
    """``recipe.normalize`` (set by ``--zero-shot``): every head equals torch's AdamW on a Linear fed
    ``x / |x|``, as the original's ``ClassificationHead(normalize=True)``; and differs from raw."""
    g = torch.Generator().manual_seed(0)
    x, y = 30 * torch.randn(96, 24, generator=g), torch.randint(0, 10, (96,), generator=g)
    init = (100 * F.normalize(torch.randn(10, 24, generator=g), dim=1), torch.zeros(10))  # a zero-shot-like head
    recipe = ProbeRecipe(epochs=3, batch_size=32, lr=1e-2, warmup_steps=2, weight_decay=0.1, seed=5, normalize=True)
    head = torch.nn.Linear(24, 10)
    with torch.no_grad():
        head.weight.copy_(init[0]), head.bias.copy_(init[1])
    opt = torch.optim.AdamW(head.parameters(), lr=recipe.lr, weight_decay=0.1)
    order_g, step, total = torch.Generator().manual_seed(5), 0, 3 * 3
    for _ in range(3):
        order = torch.randperm(96, generator=order_g)
        for i in range(3):
            idx = order[i * 32:(i + 1) * 32]
            opt.param_groups[0]["lr"] = lr_at(step, base=recipe.lr, warmup=2, total=total)
            inputs = x[idx] / x[idx].norm(dim=-1, keepdim=True)
            loss = F.cross_entropy(head(inputs), y[idx])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
            opt.step()
            step += 1
    w, b = train_heads(x, y, 10, [0.1], recipe, progress=False, init=init)
    assert (w[0] - head.weight).abs().max() < 1e-5 and (b[0] - head.bias).abs().max() < 1e-5
    raw, _ = train_heads(x, y, 10, [0.1], replace(recipe, normalize=False), progress=False, init=init)
    assert (raw[0] - head.weight).abs().max() > 1e-3
    xn = x / x.norm(dim=-1, keepdim=True)
    assert top1(x, y, w[0], b[0], normalize=True) == ((xn @ w[0].T + b[0]).argmax(1) == y).float().mean().item()


def test_zero_shot_needs_a_clip_encoder_and_cached_features(tmp_path):
    with pytest.raises(ValueError, match="text tower"):
        build_clip("mobilenet_v2", "openai")
    paths = ["--train", str(tmp_path / "train.beton"), "--out", str(tmp_path / "probe.pt")]
    with pytest.raises(SystemExit, match="drop --from-images"):
        main(["probe", "--encoder", "RN50", "--pretrained", "openai", "--zero-shot", "openai", "--from-images", *paths])
    with pytest.raises(SystemExit, match="--epochs 0 keeps the initial head"):
        main(["probe", "--encoder", "RN50", "--pretrained", "openai", "--epochs", "0", *paths])
    with pytest.raises(SystemExit) as bad:
        main(["probe", "--encoder", "RN50", "--epochs", "-1", *paths])
    assert bad.value.code == 2  # argparse: "--epochs: must be >= 0"
    assert not (tmp_path / "probe.pt").exists()
