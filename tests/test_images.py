"""One listing, decoding and label-file policy (fastfc.data.images) on every path: the ImageNet
converter, the shift-set converter and the shard reader give the same pixels for the same file, and
list, convert or skip the same files. Real files written at test time; real ffcv and webdataset."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from ffcv.reader import Reader
from PIL import Image

from data_prep.beton import ConversionError, WriterSettings
from data_prep.imagenet import convert, list_split, read_images
from data_prep.imagenet import main as imagenet_main  # the --exif-upright flag
from data_prep.shifts import list_set, read_imagenet_classes, write_set
from fastfc.data.images import decode_rgb, label_lines, load_rgb
from fastfc.data.shards import ShardReader, decode_image, iter_samples
from fastfc.fixtures.photos import make_imagenet_tree, source_photos

from .test_shift_sets import make_objectnet

IMAGENET = read_imagenet_classes()
W0, W1 = IMAGENET[1], IMAGENET[2]
RAW = WriterSettings(write_mode="raw")  # the beton stores the decoded pixels exactly


def photo(size=(48, 36)) -> Image.Image:
    return source_photos()[0][1].resize(size)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **kw)
    return out.getvalue()


def png48(width: int, height: int, value: int) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one), every sample ``value``."""
    rows = b"".join(b"\x00" + np.full((width, 3), value, dtype=">u2").tobytes() for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def grey16(value: int = 32768, size=(40, 30)) -> Image.Image:
    return Image.fromarray(np.full(size[::-1], value, dtype=np.uint16))  # mode I;16


def odd_images() -> dict[str, bytes]:
    """File name -> bytes of every kind of image the policy converts (modes, formats, EXIF)."""
    ramp = np.arange(40 * 30, dtype=np.uint32).reshape(30, 40) % 256 * 257  # 8-bit value v stored as v * 257
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    rgba = photo().convert("RGBA")
    rgba.putalpha(90)
    return {
        "grey16.png": encode(grey16(), "PNG"),
        "grey16_ramp.png": encode(Image.fromarray(ramp.astype(np.uint16)), "PNG"),
        "grey16_big_endian.tif": encode(Image.frombytes("I;16B", (40, 30), ramp.astype(">u2").tobytes()), "TIFF"),
        "int32.tif": encode(Image.fromarray(ramp.astype(np.int32)), "TIFF"),
        "rgb48.png": png48(40, 30, 32768),
        "cmyk.jpg": encode(photo().convert("CMYK"), "JPEG", quality=95),
        "palette_transparent.png": encode(photo().convert("P"), "PNG", transparency=0),
        "rgba.png": encode(rgba, "PNG"),
        "grey_alpha.png": encode(photo().convert("LA"), "PNG"),
        "bilevel.png": encode(photo().convert("1"), "PNG"),
        "exif_rotated.jpg": encode(photo(), "JPEG", quality=95, exif=exif),
        "animated.gif": encode(photo().convert("P"), "GIF"),
        "png_named.jpg": encode(photo(), "PNG"),
    }


def beton_pixels(beton: Path) -> list[np.ndarray]:
    md = Reader(str(beton)).metadata["f0"]
    return read_images(beton, list(range(len(md))), md)


# ------------------------------------------------------------------ decoding: one policy, every path

def test_16bit_mid_grey_png_reads_128_through_every_path(tmp_path):
    """A 16-bit mid-grey (32768) PNG in an ImageNet-R-style set, an 8-bit mid-grey control beside it."""
    src = tmp_path / "imagenet-r"
    for wnid, img in ((W0, grey16()), (W1, Image.new("L", (40, 30), 128))):
        (src / wnid).mkdir(parents=True)
        img.save(src / wnid / "grey.png")
    write_set(list_set("imagenet-r", src, IMAGENET), src, tmp_path / "shards", workers=1)
    by_path = {s.info["path"]: np.asarray(decode_image(s)) for s in iter_samples(tmp_path / "shards" / "imagenet-r")}
    assert by_path[f"{W0}/grey.png"].mean() == pytest.approx(128, abs=0.5)  # was 255: convert("RGB") clipped it
    assert by_path[f"{W1}/grey.png"].mean() == pytest.approx(128, abs=0.5)
    via_loader = [np.asarray(img).mean() for img, _, _ in ShardReader(tmp_path / "shards" / "imagenet-r")]
    assert via_loader == pytest.approx([128, 128], abs=0.5)

    root = tmp_path / "imagenet"
    for split in ("train", "val"):
        shutil.copytree(src, root / split)
    convert(root, tmp_path / "betons", settings=RAW, workers=1)
    for split in ("train", "val"):
        assert [img.mean() for img in beton_pixels(tmp_path / "betons" / f"{split}.beton")] == \
            pytest.approx([128, 128], abs=0.5)


def test_every_mode_gives_the_same_pixels_through_both_converters_and_the_shard_reader(tmp_path):
    files = odd_images()
    src = tmp_path / "imagenet-r"
    for wnid in (W0, W1):
        (src / wnid).mkdir(parents=True)
        for name, data in files.items():
            (src / wnid / name).write_bytes(data)
    expected = {name: load_rgb(src / W0 / name) for name in files}
    for name, data in files.items():  # the reader's decode of the bytes is the converter's decode
        assert np.array_equal(np.asarray(decode_rgb(data, name)[0]), expected[name]), name
    assert expected["grey16.png"].mean() == pytest.approx(128, abs=0.5)
    assert expected["rgb48.png"].mean() == pytest.approx(128, abs=0.5)
    for name in ("grey16_ramp.png", "grey16_big_endian.tif", "int32.tif"):  # v * 257 reads back v
        assert np.array_equal(expected[name][..., 0], np.arange(40 * 30).reshape(30, 40) % 256), name
    assert expected["exif_rotated.jpg"].shape == (36, 48, 3)  # stored 48 x 36 (w x h), read as stored
    assert all(a.dtype == np.uint8 and a.shape[2] == 3 for a in expected.values())

    write_set(list_set("imagenet-r", src, IMAGENET), src, tmp_path / "shards", workers=1)
    shards = {s.info["path"]: np.asarray(decode_image(s)) for s in iter_samples(tmp_path / "shards" / "imagenet-r")}
    assert len(shards) == 2 * len(files)  # TIFF and GIF too (stored as lossless PNG)
    for path, pixels in shards.items():
        assert np.array_equal(pixels, expected[Path(path).name]), path

    root = tmp_path / "imagenet"
    shutil.copytree(src, root / "train")
    convert(root, tmp_path / "betons", splits=("train",), settings=RAW, workers=1)
    listing = list_split(root, "train", [W0, W1])
    for path, pixels in zip(listing.files, beton_pixels(tmp_path / "betons" / "train.beton")):
        assert np.array_equal(pixels, expected[Path(path).name]), path


# ------------------------------------------------------------------ listing: one policy, both converters

def messy_class_folders(root: Path) -> list[str]:
    """Two class folders with every kind of entry; returns the names that must be converted."""
    good = ["a.jpg", "b c.jpg", "café ☕.jpg", "-dash.jpg", os.fsdecode(b"latin1-\xe9t\xe9.jpg"), "link.jpg"]
    data = encode(photo(), "JPEG")
    for wnid in (W0, W1):
        cls = root / wnid
        (cls / ".ipynb_checkpoints").mkdir(parents=True)
        (cls / ".ipynb_checkpoints" / "a.jpg").write_bytes(data)
        (cls / "extra").mkdir()
        (cls / "extra" / "x.jpg").write_bytes(data)
        for name in good[:-1]:
            (cls / name).write_bytes(data)
        (cls / "link.jpg").symlink_to("a.jpg")  # relative: the tree may move
        (cls / "dangling.jpg").symlink_to(root / "missing.jpg")
        (cls / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
        os.mkfifo(cls / "pipe.jpg")  # reading it would block forever
        (cls / "loop1.jpg").symlink_to("loop2.jpg")  # a symbolic link loop: ELOOP on every stat
        (cls / "loop2.jpg").symlink_to("loop1.jpg")
    (root / "README.txt").write_text("ImageNet-R, Hendrycks et al.\n")
    (root / "n00000000").symlink_to("n00000000")  # a class-folder-level loop
    (root / ".cache").mkdir()
    return sorted(good)


SKIPPED = {".DS_Store": "hidden", ".ipynb_checkpoints/": "hidden", "dangling.jpg": "broken symbolic link",
           "extra/": "a folder inside a class folder", "pipe.jpg": "not a regular file",
           "loop1.jpg": "cannot be followed or read", "loop2.jpg": "cannot be followed or read"}


def test_exif_orientation_is_ignored_by_default_and_applied_on_request_by_both_converters(tmp_path):
    """A photo saved at test time as a lossless PNG with EXIF orientation 6 ("turn 90° clockwise to
    display"): by default every path gives the stored pixels (torchvision's pil_loader, the released
    code); with --exif-upright, the stored pixels turned 90° clockwise, computed here by numpy."""
    stored = np.asarray(photo((48, 36)))  # 36 rows x 48 columns
    exif = Image.Exif()
    exif[0x0112] = 6
    src = tmp_path / "imagenet"
    for split in ("train", "val"):
        for wnid in (W0, W1):
            (src / split / wnid).mkdir(parents=True)
            (src / split / wnid / "tagged.png").write_bytes(encode(Image.fromarray(stored), "PNG", exif=exif))
    turned = np.rot90(stored, k=-1)  # clockwise: row r of the result is column r read bottom-up
    assert turned.shape == (48, 36, 3) and np.array_equal(turned[0, :, :], stored[::-1, 0, :])
    for upright, want in ((False, stored), (True, turned)):
        out = tmp_path / f"betons-{upright}"
        assert imagenet_main(["--src", str(src), "--out", str(out), "--splits", "train", "--write-mode", "raw",
                              "--workers", "1"] + (["--exif-upright"] if upright else [])) == 0
        assert json.loads((out / "meta.json").read_text())["writer"]["exif_upright"] is upright
        assert all(np.array_equal(px, want) for px in beton_pixels(out / "train.beton"))
        shards = tmp_path / f"shards-{upright}"
        meta = write_set(list_set("imagenet-val", src / "val", IMAGENET), src / "val", shards, workers=1,
                         exif_upright=upright)
        assert meta["exif_upright"] is upright and meta["border_crop"] == 0
        got = [np.asarray(img) for img, _, _ in ShardReader(shards / "imagenet-val")]
        assert len(got) == 2 and all(np.array_equal(px, want) for px in got)


def test_both_converters_convert_the_same_files_and_name_every_skipped_one(tmp_path):
    src = tmp_path / "imagenet-r"
    good = messy_class_folders(src)
    meta_r = write_set(list_set("imagenet-r", src, IMAGENET), src, tmp_path / "shards", workers=1)
    root = tmp_path / "imagenet"
    (root / "train").mkdir(parents=True)
    for entry in src.iterdir():  # the same tree as ImageNet's train split (symlinks kept as they are)
        os.rename(entry, root / "train" / entry.name)
    meta_i = convert(root, tmp_path / "betons", splits=("train",), workers=1)

    converted = sorted(Path(s.info["path"]).name for s in iter_samples(tmp_path / "shards" / "imagenet-r"))
    assert converted == sorted(good * 2) and meta_r["count"] == meta_i["splits"]["train"]["count"] == 2 * len(good)
    on_disk_r = json.loads((tmp_path / "shards" / "imagenet-r" / "meta.json").read_text())["skipped"]
    on_disk_i = json.loads((tmp_path / "betons" / "meta.json").read_text())["splits"]["train"]["skipped"]
    assert on_disk_r == meta_r["skipped"] and on_disk_i == meta_i["splits"]["train"]["skipped"]
    assert [s["file"] for s in on_disk_i] == ["train/" + s["file"] for s in on_disk_r]  # same files, same order
    assert [s["reason"] for s in on_disk_i] == [s["reason"] for s in on_disk_r]
    named = {s["file"]: s["reason"] for s in on_disk_r}
    assert named.pop(".cache/").startswith("hidden") and named.pop("README.txt").startswith("a file beside")
    assert named.pop("n00000000") == "cannot be followed or read (e.g. a symbolic link loop): Too many levels of symbolic links"
    for wnid in (W0, W1):
        for name, reason in SKIPPED.items():
            assert named.pop(f"{wnid}/{name}").startswith(reason), (wnid, name)
    assert named == {}


def test_odd_names_survive_the_per_class_subset(tmp_path):
    root = tmp_path / "imagenet"
    messy_class_folders(root / "train")
    meta = convert(root, tmp_path / "betons", splits=("train",), workers=1, per_class=3)
    assert meta["splits"]["train"]["per_class"] == {W0: 3, W1: 3}


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file_is_named_by_both_converters(tmp_path):
    src = tmp_path / "imagenet-r"
    messy_class_folders(src)
    (src / W0 / "a.jpg").chmod(0)
    with pytest.raises(ConversionError, match="cannot be read"):
        write_set(list_set("imagenet-r", src, IMAGENET), src, tmp_path / "shards", workers=1)
    meta = write_set(list_set("imagenet-r", src, IMAGENET), src, tmp_path / "shards", workers=1, skip_bad=True)
    assert any(s["file"] == f"{W0}/a.jpg" and "cannot be read" in s["reason"] for s in meta["skipped"])


# ------------------------------------------------------------------ label files

LOC_FORMS = {
    "utf-8 BOM + CRLF": lambda rows: ("\ufeff" + "\r\n".join(rows) + "\r\n").encode("utf-8"),
    "trailing blanks, empty last lines": lambda rows: ("\n".join(r + " \t" for r in rows) + "\n\n\n").encode(),
    "CR only, no final newline": lambda rows: "\r".join(rows).encode(),
    "utf-16 with BOM (Windows 'Unicode')": lambda rows: "\r\n".join(rows).encode("utf-16"),
}


@pytest.mark.parametrize("form", LOC_FORMS)
def test_val_label_file_in_every_form_converts(tmp_path, form):
    tree = make_imagenet_tree(tmp_path / "src", n_classes=3, train_per_class=3, val_per_class=2, quirks=False)
    rows = ["ImageId,PredictionString"]
    for wnid in tree.classes:
        for f in sorted((tree.root / "val" / wnid).iterdir()):
            f.rename(tree.root / "val" / f.name)
            rows.append(f"{f.stem},{wnid} 1 2 3 4")
        (tree.root / "val" / wnid).rmdir()
    csv = tmp_path / "LOC_val_solution.csv"
    csv.write_bytes(LOC_FORMS[form](rows))
    meta = convert(tree.root, tmp_path / "out", splits=("val",), val_labels=csv, workers=1)
    assert meta["splits"]["val"]["per_class"] == {wnid: 2 for wnid in tree.classes}


def test_label_lines_keep_line_numbers_and_drop_blanks(tmp_path):
    f = tmp_path / "labels.txt"
    f.write_bytes(b"\xef\xbb\xbfa.JPEG n01440764  \r\n\r\nb.JPEG n01443537\r\n\r\n")
    assert label_lines(f) == [(1, "a.JPEG n01440764"), (3, "b.JPEG n01443537")]


def test_objectnet_mapping_files_with_bom_and_crlf_give_the_same_label_space(tmp_path):
    plain = write_set(list_set("objectnet", make_objectnet(tmp_path / "a"), IMAGENET), tmp_path / "a",
                      tmp_path / "out_a", workers=1)
    src = make_objectnet(tmp_path / "b")
    for f in (src / "mappings").iterdir():
        f.write_bytes(b"\xef\xbb\xbf" + f.read_bytes().replace(b"\n", b"\r\n"))
    windows = write_set(list_set("objectnet", src, IMAGENET), src, tmp_path / "out_b", workers=1)
    assert windows["classes"] == plain["classes"] == ["Alarm clock", "Banana"]
    assert windows["imagenet_indices"] == plain["imagenet_indices"] == [[409, 530], [954]]
    assert windows["skipped"] == [{"file": "images/air_freshener/",  # an unmapped class: named, with its count
                                   "reason": "ObjectNet class not mapped to ImageNet-1k: its 1 images are dropped"}]
