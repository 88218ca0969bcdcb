"""fastfc.models: names, registry facts, seeded students, prefixes, checkpoints, real MobileNetV2 weights."""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path

import open_clip
import pytest
import torch
import torch.distributed as dist
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
from PIL import Image
from torch.nn.parallel import DistributedDataParallel as DDP

from fastfc.data.shards import eval_transform
from fastfc.encoders import ALIASES
from fastfc.models import (CLIP_MEAN, CLIP_STD, ENCODERS, IMAGENET_MEAN, IMAGENET_STD, CheckpointError,
                           build_encoder, build_student, build_teacher, canonical_name, load_weights,
                           mobilenet_v2_weights_path, open_clip_model_name, strip_prefixes)

CLIP_FACTS = {"RN50": (224, 1024), "RN101": (224, 512), "RN50x4": (288, 640), "RN50x16": (384, 768),
              "ViT-B-16": (224, 512)}  # docs/recipe.md
ESPRESSO = 967


def _x(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _embed(enc_visual, x):
    with torch.no_grad():
        return enc_visual.eval()(x)


def test_aliases_and_unknown_names():
    assert [canonical_name(n) for n in ("CLIP_RN50", "CLIP_RN101", "CLIP_RN50x4", "CLIP_RN50x16",
                                        "CLIP_ViT-B/16", "ViT-B/16", "ERM_ResNet50", "tiny")] == \
        ["RN50", "RN101", "RN50x4", "RN50x16", "ViT-B-16", "ViT-B-16", "resnet50", "tiny"]
    with pytest.raises(ValueError, match="RN50.*mobilenet_v2.*tiny"):
        canonical_name("RN18")
    assert ALIASES["CLIP_ViT-B-16"] == "ViT-B-16" and len(ALIASES) == 8


def test_the_registry_is_torch_free_and_every_builder_path_resolves():
    """Configs and the CLI read the registry before torch is imported; each entry's builder is importable."""
    import subprocess
    import sys

    code = "import sys, fastfc.encoders as e; print(len(e.ENCODERS), 'torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == [str(len(ENCODERS)), "False"]
    assert all(callable(spec.builder_function()) for spec in ENCODERS.values())
    assert [n for n, s in ENCODERS.items() if s.paper_init] == list(CLIP_FACTS)


def test_registry_facts_match_paper_and_open_clip():
    assert CLIP_MEAN == open_clip.OPENAI_DATASET_MEAN and CLIP_STD == open_clip.OPENAI_DATASET_STD
    for name, (size, dim) in CLIP_FACTS.items():
        spec, cfg = ENCODERS[name], open_clip.get_model_config(name)  # configs only: nothing is built
        assert (spec.backend, spec.input_size, spec.embed_dim) == ("open_clip", size, dim)
        assert (cfg["vision_cfg"]["image_size"], cfg["embed_dim"]) == (size, dim)
        assert (spec.mean, spec.std) == (CLIP_MEAN, CLIP_STD)
    for name, dim in (("resnet50", 2048), ("mobilenet_v2", 1280)):
        spec = ENCODERS[name]
        assert (spec.backend, spec.input_size, spec.embed_dim, spec.mean, spec.std) == \
            ("torchvision", 224, dim, IMAGENET_MEAN, IMAGENET_STD)
    tiny = ENCODERS["tiny"]
    assert (tiny.input_size, tiny.embed_dim, tiny.mean, tiny.std) == (32, 32, CLIP_MEAN, CLIP_STD)


def test_openai_weights_get_quickgelu_config():
    """OpenAI CLIP weights were trained with QuickGELU (docs/recipe.md); read from open_clip's tables."""
    assert open_clip_model_name("ViT-B-16", "openai") == "ViT-B-16-quickgelu"
    assert open_clip_model_name("ViT-B-16", "laion2b_s34b_b88k") == "ViT-B-16"
    # no tag (a random-init student, or weights from a file): the paper's OpenAI family, QuickGELU
    assert open_clip_model_name("ViT-B-16", None) == "ViT-B-16-quickgelu"
    assert open_clip_model_name("RN50", None) == "RN50-quickgelu"
    assert open_clip_model_name("ViT-B-16", None, quick_gelu=False) == "ViT-B-16"


def test_rn50_student_builds_at_native_resolution():
    enc = build_student("CLIP_RN50", seed=0)
    assert (enc.name, enc.backend, enc.head) == ("RN50", "open_clip", None)
    assert _embed(enc.visual, torch.randn(1, 3, 224, 224)).shape == (1, 1024)


def test_torchvision_baselines_split_visual_and_head():
    enc = build_encoder("ERM_ResNet50", seed=0)
    emb = _embed(enc.visual, torch.randn(1, 3, 64, 64))
    assert emb.shape == (1, 2048) and enc.head(emb).shape == (1, 1000)


def test_tiny_students_are_seeded():
    a, b, c = build_student("tiny", seed=0), build_student("tiny", seed=0), build_student("tiny", seed=1)
    sa, sb, sc = (e.visual.state_dict() for e in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    out = a.visual(_x(5))
    assert out.shape == (5, 32) and out.dtype == torch.float32 and out.requires_grad


def test_tiny_compiles_fullgraph_in_channels_last():
    """Dynamo captures the whole graph (no breaks); aot_eager skips the slow C++ codegen on CPU."""
    v = build_student("tiny", seed=0).visual.eval()
    x = _x().to(memory_format=torch.channels_last)
    compiled = torch.compile(v, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), v(x))


def test_strip_prefixes_any_nesting():
    sd = {"module._orig_mod.a.weight": 1, "_orig_mod.module.b.bias": 2, "module.model.visual.c": 3, "d": 4}
    assert strip_prefixes(sd) == {"a.weight": 1, "b.bias": 2, "model.visual.c": 3, "d": 4}
    with pytest.raises(ValueError, match="collide"):
        strip_prefixes({"module.x": 1, "x": 2})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_compiled_and_ddp_checkpoints_load_into_plain_model():
    src = build_student("tiny", seed=3).visual
    x, want = _x(), _embed(src, _x())
    states = {"compile": torch.compile(src).state_dict(),
              "nested by hand": {f"_orig_mod.module.{k}": v for k, v in src.state_dict().items()}}
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        states["DDP(compile)"] = DDP(torch.compile(src)).state_dict()
    finally:
        dist.destroy_process_group()
    assert next(iter(states["DDP(compile)"])).startswith("module._orig_mod.")
    for how, sd in states.items():
        dst = build_student("tiny", seed=4).visual
        load_weights(dst, sd)
        assert torch.equal(_embed(dst, x), want), how
    target = torch.compile(build_student("tiny", seed=4).visual)  # a wrapped target loads too
    load_weights(target, states["DDP(compile)"])
    assert torch.equal(_embed(target._orig_mod, x), want)


def test_original_paper_checkpoint_loads(tmp_path):
    src = build_student("tiny", seed=5).visual
    path = tmp_path / "distilled.pt"
    torch.save({f"module.model.visual.{k}": v for k, v in src.state_dict().items()}, path)
    dst = build_student("tiny", seed=6).visual
    load_weights(dst, path)
    assert torch.equal(_embed(dst, _x()), _embed(src, _x()))
    # fastfc's own file format, through build_encoder(weights=...)
    torch.save({"model": src.state_dict()}, tmp_path / "own.pt")
    enc = build_teacher("tiny", weights=tmp_path / "own.pt")
    assert torch.equal(_embed(enc.visual, _x()), _embed(src, _x()))


def test_wrong_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "mobilenet.pt"
    torch.save(torch.load(mobilenet_v2_weights_path(), weights_only=True), path)
    with pytest.raises(CheckpointError, match=r"mobilenet\.pt.*missing keys.*bn1.*unexpected keys.*classifier"):
        load_weights(build_student("tiny").visual, path)
    with pytest.raises(CheckpointError, match=r"mobilenet\.pt"):
        build_encoder("tiny", weights=path)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.pt"):
        load_weights(build_student("tiny").visual, tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_weights(build_student("tiny").visual, tmp_path / "absent.pt")


def test_teacher_is_frozen_and_stays_in_eval():
    enc = build_teacher("tiny")
    assert not any(p.requires_grad for p in enc.visual.parameters())
    enc.visual.train()  # e.g. a parent module's .train(): BatchNorm must keep the running stats
    assert not any(m.training for m in enc.visual.modules())
    student = build_student("tiny")
    assert all(p.requires_grad for p in student.visual.parameters()) and student.visual.training


def test_packaged_mobilenet_v2_classifies_espresso():
    """Real ImageNet weights (torchvision's checkpoint, shipped in a package) on a real photo."""
    assert IMAGENET_CLASSNAMES[ESPRESSO] == "espresso"
    path = mobilenet_v2_weights_path()
    assert path.name == "mobilenet_v2-b0353104.pth"
    enc = build_teacher("mobilenet_v2", weights="package")
    assert not any(p.requires_grad for m in (enc.visual, enc.head) for p in m.parameters())
    coffee = Path(importlib.util.find_spec("skimage").submodule_search_locations[0]) / "data" / "coffee.png"
    x = eval_transform(enc.input_size, enc.mean, enc.std)(Image.open(coffee).convert("RGB"))
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    with torch.no_grad():
        emb = enc.visual(x[None])
        probs = enc.head(emb).softmax(-1)[0]
    assert emb.shape == (1, 1280)
    assert IMAGENET_CLASSNAMES[int(probs.argmax())] == "espresso" and probs[ESPRESSO] > 0.5


def test_a_random_init_teacher_is_the_same_network_in_every_command():
    # features, probe and eval each build the encoder; without weights they used to get three
    # different random networks (three cache folders, a probe scored on another network)
    torch.manual_seed(1)
    a = build_teacher("tiny")
    after_a = torch.rand(1)
    torch.manual_seed(2)
    b = build_teacher("tiny")
    assert all(torch.equal(x, y) for x, y in zip(a.visual.state_dict().values(), b.visual.state_dict().values()))
    torch.manual_seed(1)
    assert torch.equal(torch.rand(1), after_a)  # the caller's RNG stream is untouched


def test_an_unknown_open_clip_tag_is_one_line_listing_the_known_ones():
    with pytest.raises(ValueError, match=r"RN50: unknown pretrained tag 'laion'; open_clip has openai, yfcc15m"):
        build_teacher("RN50", pretrained="laion")  # was open_clip's RuntimeError traceback
