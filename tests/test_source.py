"""One data-source type (fastfc/data/source.py): a beton, a shard set and an image folder opened from
real files made here, each giving its count, kind, meta, label space, decoding, batches and the
fingerprint its feature caches were keyed by before the type existed (the formulas are written out
here, independently of the code); a shard set's border crop travels from its meta.json into its
batches; anything else is refused in one line; all of it but the batches without torch."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data_prep.beton import WriterSettings
from data_prep.imagenet import convert
from data_prep.shifts import list_set, main as convert_shifts, write_set
from fastfc.data.shards import eval_transform
from fastfc.data.shifts import ID_SET
from fastfc.data.source import open_source, source_kind
from fastfc.fixtures.photos import make_imagenet_tree

from .test_shift_sets import IMAGENET, MEAN, STD, framed, make_objectnet

REPO = Path(__file__).resolve().parents[1]
VAL_PER_CLASS, CLASSES = 3, 3


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """A 3-class real-photo tree's val split three ways: its image folder, imagenet-val shards of it,
    and a val beton (stored at 64 px) with its meta.json."""
    root = tmp_path_factory.mktemp("source")
    make_imagenet_tree(root / "tree", n_classes=CLASSES, train_per_class=1, val_per_class=VAL_PER_CLASS, quirks=False)
    val = root / "tree" / "val"
    write_set(list_set(ID_SET, val, IMAGENET), val, root / "shards", workers=1)
    convert(root / "tree", root / "betons", splits=("val",), settings=WriterSettings(max_resolution=64), workers=1)
    return {"folder": val, "shards": root / "shards" / ID_SET, "beton": root / "betons" / "val.beton"}


def folder_fingerprint(root: Path) -> str:
    """The image folder's cache key as fastfc computed it before: sha256 over each file's relative
    path, size, mtime (ns) and ImageNet index, classes in ImageNet order, names sorted."""
    files = sorted((IMAGENET.index(p.parent.name), p.relative_to(root).as_posix()) for p in root.glob("*/*"))
    h = hashlib.sha256()
    for label, rel in files:
        st = (root / rel).stat()
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0{label}\n".encode())
    return h.hexdigest()


def test_each_kind_has_its_count_meta_space_and_pre_refactor_fingerprint(sources):
    n = CLASSES * VAL_PER_CLASS
    folder, shards, beton = (open_source(sources[k]) for k in ("folder", "shards", "beton"))
    assert [s.kind for s in (folder, shards, beton)] == ["folder", "shards", "beton"]
    assert [s.count for s in (folder, shards, beton)] == [n, n, n]

    assert folder.fingerprint() == folder_fingerprint(sources["folder"])
    assert shards.fingerprint() == hashlib.sha256((sources["shards"] / "meta.json").read_bytes()).hexdigest()
    st = sources["beton"].stat()
    assert beton.fingerprint() == hashlib.sha256(f"{sources['beton'].resolve()}:{st.st_size}:{st.st_mtime_ns}"
                                                 .encode()).hexdigest()

    stored = json.loads((sources["shards"] / "meta.json").read_text())
    assert shards.meta == stored and folder.name == shards.name == ID_SET and beton.name == "val.beton"
    assert folder.meta["per_class"] == stored["per_class"] and sum(stored["per_class"]) == n
    # the folder and its shards are one 1000-way label space; the beton's is its own class list
    assert folder.space == shards.space and len(shards.space["classes"]) == 1000
    assert beton.space == {"set": "val.beton", "classes": sorted(p.name for p in sources["folder"].iterdir()),
                           "imagenet_indices": None, "projection": "none"}
    assert beton.meta["splits"]["val"]["count"] == n  # the beton folder's meta.json, checked against the beton
    assert folder.decoding == shards.decoding == {"exif_upright": False, "border_crop": 0}
    assert beton.decoding == {"exif_upright": WriterSettings().exif_upright, "border_crop": 0}


def test_batches_cover_every_image_once_over_ranks(sources):
    kw = {"resolution": 32, "mean": MEAN, "std": STD, "batch_size": 4, "num_workers": 0}
    got = {}
    for kind in ("folder", "shards"):
        source = open_source(sources[kind])
        parts = [b for rank in (0, 1) for b in source.batches(rank=rank, world_size=2, **kw)]
        rows = torch.cat([r for r, _, _ in parts])
        assert sorted(rows.tolist()) == list(range(source.count)), kind
        order = rows.argsort()
        got[kind] = (torch.cat([x for _, x, _ in parts])[order], torch.cat([y for _, _, y in parts])[order])
        assert got[kind][0].shape == (source.count, 3, 32, 32) and got[kind][0].dtype == torch.float32
    # the same JPEGs through the same decode and transform: the same pixels and labels
    assert torch.equal(got["folder"][0], got["shards"][0]) and torch.equal(got["folder"][1], got["shards"][1])
    beton = open_source(sources["beton"])
    parts = list(beton.batches(**kw))
    assert torch.cat([r for r, _, _ in parts]).tolist() == list(range(beton.count))
    labels = torch.cat([y for _, _, y in parts]).view(-1)
    assert torch.bincount(labels).tolist() == [VAL_PER_CLASS] * CLASSES  # labels in the beton's own classes


def test_the_border_crop_travels_in_the_sets_meta_json(tmp_path):
    src = make_objectnet(tmp_path / "objectnet-1.0")
    for out, flags in (("plain", []), ("crop", ["--objectnet-border-crop"])):
        argv = ["--set", "objectnet", "--src", str(src), "--out", str(tmp_path / out), "--workers", "1", *flags]
        assert convert_shifts(argv) == 0
    plain, crop = open_source(tmp_path / "plain" / "objectnet"), open_source(tmp_path / "crop" / "objectnet")
    assert plain.decoding == {"exif_upright": False, "border_crop": 0}
    assert crop.decoding == {"exif_upright": False, "border_crop": 2}
    assert crop.name == "objectnet" and crop.count == 2 and crop.space["projection"] == "objectnet-max"
    kw = {"resolution": 24, "mean": MEAN, "std": STD, "batch_size": 2, "num_workers": 0}
    (rows, images, _), = crop.batches(**kw)
    (_, uncropped, _), = plain.batches(**kw)
    transform = eval_transform(24, MEAN, STD)
    for row, image in zip(rows.tolist(), images):  # the stored PNG (banana/<row>) without its 2-px frame
        assert torch.equal(image, transform(framed(row).crop((2, 2, 98, 78))))
    assert not torch.equal(images, uncropped)


def test_a_path_that_is_no_source_is_refused_in_one_line(tmp_path, sources):
    with pytest.raises(FileNotFoundError) as e:
        open_source(tmp_path / "nope.beton")
    message = str(e.value)
    assert message.startswith(f"{tmp_path / 'nope.beton'}: no such file or folder; give a .beton")
    assert "\n" not in message and "data_prep.shifts" in message
    assert source_kind(sources["shards"]) == "shards" and source_kind(sources["beton"]) == "beton"
    broken = tmp_path / "broken"
    shutil.copytree(sources["shards"], broken)
    meta = json.loads((broken / "meta.json").read_text())
    del meta["set"]
    (broken / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"meta.json: names no set"):
        open_source(broken).name


def test_a_sources_record_is_read_without_torch(sources):
    """The CLI checks its inputs through a Source before torch: kind, name, count, space, decoding
    and fingerprint of a shard set and an image folder import none of torch, ffcv or webdataset."""
    code = ("import sys; from fastfc.data.source import open_source\n"
            f"for p in {[str(sources['folder']), str(sources['shards'])]!r}:\n"
            "    s = open_source(p); print(s.kind, s.name, s.count, len(s.space['classes']), s.decoding['border_crop'],"
            " len(s.fingerprint()))\n"
            "print(sorted(m for m in ('torch', 'ffcv', 'webdataset', 'torchvision') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    n = CLASSES * VAL_PER_CLASS
    assert proc.stdout.splitlines() == [f"folder {ID_SET} {n} 1000 0 64", f"shards {ID_SET} {n} 1000 0 64", "[]"], \
        proc.stderr
