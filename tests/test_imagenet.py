"""ImageNet → beton conversion on real photographs, read back through real ffcv."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from ffcv.reader import Reader
from ffcv.types import HeaderType
from PIL import Image, ImageOps

from data_prep.beton import ConversionError, WriterSettings, short_side_for
from data_prep.imagenet import VerifyError, convert, list_split, main, psnr, read_images, verify
from fastfc.data.betons import read_beton_meta
from fastfc.data.ffcv import make_loader
from fastfc.fixtures.photos import make_imagenet_tree

from .conftest import RED_CMYK, beton_index, mean_rgb, rel

REPO = Path(__file__).resolve().parents[1]


def beton_image(out: Path, split: str, index: int) -> np.ndarray:
    reader = Reader(str(out / f"{split}.beton"))
    return read_images(out / f"{split}.beton", [index], reader.metadata["f0"])[0]


# ------------------------------------------------------------------ decoding quirks, via the beton

def test_cmyk_pure_red_reads_back_red(photo_tree, converted):
    out, _ = converted
    img = beton_image(out, "train", beton_index(photo_tree.root, "train", RED_CMYK))
    assert img.shape == (64, 64, 3)
    assert np.all(np.abs(mean_rgb(img) - [255, 0, 0]) <= 10), mean_rgb(img)


def test_grayscale_reads_back_with_three_equal_channels(photo_tree, converted):
    out, _ = converted
    for name in ("gray1", "gray2", "gray3"):
        img = beton_image(out, "train", beton_index(photo_tree.root, "train", rel(photo_tree, photo_tree.quirks[name])))
        assert img.ndim == 3 and img.shape[2] == 3
        spread = img.astype(int).max(axis=2) - img.astype(int).min(axis=2)
        assert spread.max() <= 2, f"{name}: channels differ by up to {spread.max()}"
        assert img[..., 0].std() > 5  # a real photo, not a blank


def test_png_saved_as_jpeg_is_counted_and_decodes(photo_tree, converted):
    out, meta = converted
    path = photo_tree.quirks["png_as_jpeg"]
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    wnid = path.parent.name
    assert meta["splits"]["train"]["per_class"][wnid] == photo_tree.counts["train"][wnid]
    img = beton_image(out, "train", beton_index(photo_tree.root, "train", rel(photo_tree, path)))
    want = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape == want.shape
    assert psnr(img, want) > 30


def test_exif_rotated_image_reads_back_as_stored(photo_tree, converted):
    """The default, as the released code's pil_loader: the EXIF orientation tag is ignored
    (``--exif-upright`` turns it: tests/test_images.py)."""
    out, meta = converted
    path = photo_tree.quirks["exif_rotated"]
    stored = Image.open(path)
    assert stored.getexif().get(0x0112) == 6 and meta["writer"]["exif_upright"] is False
    img = beton_image(out, "train", beton_index(photo_tree.root, "train", rel(photo_tree, path)))
    assert img.shape[:2] == (stored.height, stored.width)
    assert psnr(img, np.asarray(stored.convert("RGB"))) > 30
    upright = np.asarray(ImageOps.exif_transpose(stored).convert("RGB"))
    assert img.shape != upright.shape


def test_huge_image_resized_and_tiny_kept(photo_tree, converted):
    out, meta = converted
    huge = beton_image(out, "train", beton_index(photo_tree.root, "train", rel(photo_tree, photo_tree.quirks["huge"])))
    tiny = beton_image(out, "train", beton_index(photo_tree.root, "train", rel(photo_tree, photo_tree.quirks["tiny"])))
    assert huge.shape == (375, 500, 3)
    assert tiny.shape == (20, 20, 3)
    assert meta["writer"]["max_resolution"] == 500


def test_labels_are_sorted_wnid_indices_and_counts_match(photo_tree, converted):
    out, meta = converted
    classes = sorted(photo_tree.classes)
    assert meta["classes"] == classes
    for split in ("train", "val"):
        labels = np.asarray(Reader(str(out / f"{split}.beton")).metadata["f1"])
        files = list_split(photo_tree.root, split, classes).files
        expected = [classes.index(Path(f).parent.name) for f in files]
        assert labels.tolist() == expected
        assert meta["splits"][split]["count"] == sum(photo_tree.counts[split].values()) == len(labels)
        assert meta["splits"][split]["per_class"] == photo_tree.counts[split]
        assert np.bincount(labels, minlength=len(classes)).tolist() == [photo_tree.counts[split][c] for c in classes]
    assert meta["fastfc_version"] and meta["writer"]["write_mode"] == "proportion"


# ------------------------------------------------------------------ bad input

def test_truncated_jpeg_error_names_it_and_skip_bad_records_it(tmp_path):
    tree = make_imagenet_tree(tmp_path / "src", n_classes=3, train_per_class=8, val_per_class=2,
                              quirks=False, truncated=True)
    bad = tree.quirks["truncated"]
    with pytest.raises(ConversionError, match=str(bad)) as err:
        convert(tree.root, tmp_path / "out", workers=2)
    assert "truncated" in str(err.value)
    assert not list((tmp_path / "out").glob("*.beton")) if (tmp_path / "out").exists() else True

    meta = convert(tree.root, tmp_path / "out", workers=2, skip_bad=True)
    skipped = meta["splits"]["train"]["skipped"]
    assert [s["file"] for s in skipped] == [rel(tree, bad)]
    assert "truncated" in skipped[0]["reason"]
    assert meta["splits"]["train"]["count"] == sum(tree.counts["train"].values()) - 1
    assert json.loads((tmp_path / "out" / "meta.json").read_text())["splits"]["train"]["skipped"] == skipped


@pytest.fixture
def small_tree(tmp_path):
    return make_imagenet_tree(tmp_path / "src", n_classes=3, train_per_class=3, val_per_class=2, quirks=False)


def test_proportion_mode_stores_each_image_the_same_way_on_every_conversion(tmp_path):
    tree = make_imagenet_tree(tmp_path / "src", n_classes=3, train_per_class=12, val_per_class=1, quirks=False)
    stored = []
    for workers in (1, 2):  # another number of writer processes deals the images out differently
        out = tmp_path / f"w{workers}"
        convert(tree.root, out, splits=("train",), workers=workers)  # proportion, p = 0.5
        md = Reader(str(out / "train.beton")).metadata["f0"]
        stored.append((md["mode"].copy(), read_images(out / "train.beton", list(range(len(md))), md)))
    (modes_1, images_1), (modes_2, images_2) = stored
    assert len(modes_1) == 36 and 6 <= int((modes_1 == modes_1[0]).sum()) <= 30  # a real mix of JPEG and raw
    assert np.array_equal(modes_1, modes_2)
    assert all(np.array_equal(a, b) for a, b in zip(images_1, images_2))


@pytest.mark.parametrize("content,reason", [(b"", "zero-byte"), (b"wnid,label\nnot an image\n", "not an image")])
def test_zero_byte_and_non_image_files_are_named(small_tree, tmp_path, content, reason):
    bad = small_tree.root / "train" / small_tree.classes[1] / "bad.JPEG"
    bad.write_bytes(content)
    with pytest.raises(ConversionError, match=reason) as err:
        convert(small_tree.root, tmp_path / "out", workers=1)
    assert str(bad) in str(err.value)


def test_empty_class_folder_is_named(small_tree, tmp_path):
    empty = small_tree.root / "train" / "n09999999"
    empty.mkdir()
    with pytest.raises(ConversionError, match="empty class folder") as err:
        convert(small_tree.root, tmp_path / "out", workers=1)
    assert str(empty) in str(err.value)


def test_class_in_val_but_not_train_is_named(small_tree, tmp_path):
    extra = small_tree.root / "val" / "n09999999"
    extra.mkdir()
    shutil.copy(next((small_tree.root / "val" / small_tree.classes[0]).iterdir()), extra / "x.JPEG")
    with pytest.raises(ConversionError, match="not in train") as err:
        convert(small_tree.root, tmp_path / "out", workers=1)
    assert "n09999999" in str(err.value)


def _flatten_val(tree) -> dict[str, str]:
    """Turn val/<wnid>/X.JPEG into the official flat val/X.JPEG; return {file: wnid}."""
    truth = {}
    for wnid in tree.classes:
        for f in sorted((tree.root / "val" / wnid).iterdir()):
            f.rename(tree.root / "val" / f.name)
            truth[f.name] = wnid
        (tree.root / "val" / wnid).rmdir()
    return truth


def test_flat_official_val_needs_labels_and_converts_with_them(small_tree, tmp_path):
    truth = _flatten_val(small_tree)
    with pytest.raises(ConversionError, match="--val-labels"):
        convert(small_tree.root, tmp_path / "out", workers=1)
    csv = tmp_path / "LOC_val_solution.csv"
    csv.write_text("ImageId,PredictionString\n" + "".join(
        f"{Path(f).stem},{w} 1 2 3 4\n" for f, w in sorted(truth.items(), reverse=True)))
    meta = convert(small_tree.root, tmp_path / "out", workers=1, splits=("val",), val_labels=csv)
    labels = np.asarray(Reader(str(tmp_path / "out" / "val.beton")).metadata["f1"])
    expected = [small_tree.classes.index(truth[f]) for f in sorted(truth, key=lambda f: (truth[f], f))]
    assert labels.tolist() == expected
    assert meta["splits"]["val"]["per_class"] == small_tree.counts["val"]


def test_devkit_integer_labels_are_refused_with_explanation(small_tree, tmp_path):
    _flatten_val(small_tree)
    gt = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
    gt.write_text("490\n361\n171\n")
    with pytest.raises(ConversionError, match="devkit"):
        convert(small_tree.root, tmp_path / "out", workers=1, val_labels=gt)


def test_existing_output_is_not_overwritten(small_tree, tmp_path):
    out = tmp_path / "out"
    convert(small_tree.root, out, workers=1)
    before = (out / "train.beton").read_bytes()
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert(small_tree.root, out, workers=1, settings=WriterSettings(write_mode="raw"))
    assert (out / "train.beton").read_bytes() == before
    meta = convert(small_tree.root, out, workers=1, settings=WriterSettings(write_mode="raw"), overwrite=True)
    assert meta["writer"]["write_mode"] == "raw"


def test_per_class_subset_is_deterministic(photo_tree, tmp_path):
    a = convert(photo_tree.root, tmp_path / "a", workers=2, per_class=4, splits=("val",))
    b = list_split(photo_tree.root, "val", photo_tree.classes, per_class=4)
    assert a["splits"]["val"]["per_class"] == {c: 4 for c in photo_tree.classes}
    assert b.files == list_split(photo_tree.root, "val", photo_tree.classes, per_class=4).files
    assert set(b.files) < set(list_split(photo_tree.root, "val", photo_tree.classes).files)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_conversion_killed_halfway_leaves_no_final_file(photo_tree, tmp_path, sig):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "data_prep.imagenet", "--src", str(photo_tree.root),
                             "--out", str(out), "--workers", "1", "--write-mode", "jpg", "--jpeg-quality", "100"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tmp = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:  # wait until the writer has started
        found = list(out.glob(".train.beton.tmp-*")) if out.exists() else []
        if found and found[0].stat().st_size > 0:
            tmp = found[0]
            break
        time.sleep(0.005)
    assert tmp is not None, "the writer never started"
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert not (out / "train.beton").exists() and not (out / "meta.json").exists()
    assert not (out / "val.beton").exists()
    if sig == signal.SIGTERM:  # a catchable kill also removes the temporary
        assert not tmp.exists()


HUNG_EXIT = """
import threading, time
from fastfc.atomic import exit_cleanly_on_sigterm
exit_cleanly_on_sigterm(grace_s=1.0)
threading.Thread(target=threading.Event().wait).start()  # not a daemon: the exit joins it forever
try:
    print("ready", flush=True)
    time.sleep(120)
finally:
    print("cleaned up", flush=True)
"""


def test_sigterm_ends_a_converter_whose_exit_hangs():
    # The kind of the CI hang: SIGTERM's SystemExit landed inside a multiprocessing queue's set-up, whose
    # feeder thread the interpreter's exit then joined forever. Whatever hangs the exit, the command ends.
    proc = subprocess.Popen([sys.executable, "-c", HUNG_EXIT], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM and proc.stdout.read() == "cleaned up\n"


# ------------------------------------------------------------------ verify

def test_verify_passes_on_a_good_conversion(photo_tree, converted):
    out, meta = converted
    report = verify(out, photo_tree.root, samples=40)
    assert report["train"]["count"] == meta["splits"]["train"]["count"]
    assert report["train"]["checked_images"] == 40
    assert 30 <= report["train"]["min_psnr_db"]


def test_verify_fails_on_one_flipped_label(photo_tree, converted, tmp_path):
    out, _ = converted
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    reader = Reader(str(bad / "val.beton"))
    offset = HeaderType.itemsize + reader.field_descriptors.nbytes
    md = np.memmap(bad / "val.beton", dtype=reader.metadata_type, mode="r+", offset=offset, shape=(reader.num_samples,))
    old = int(md[5]["f1"])
    md[5]["f1"] = (old + 1) % len(photo_tree.classes)
    md.flush()
    del md
    with pytest.raises(VerifyError, match="labels differ") as err:
        verify(bad, photo_tree.root, samples=4)
    assert f"label {old})" in str(err.value)  # the per-class count of the old class is short by one
    assert main(["--verify", str(bad), "--src", str(photo_tree.root)]) == 1


# ------------------------------------------------------------------ reading

def test_cpu_loader_gives_normalised_float_batches(converted):
    out, meta = converted
    loader = make_loader(out / "train.beton", train=True, batch_size=16, resolution=64,
                         mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), num_workers=2)
    images, labels = next(iter(loader))
    assert images.shape == (16, 3, 64, 64) and images.dtype == torch.float32
    assert labels.shape == (16,) and labels.dtype == torch.int64
    assert 0 <= int(labels.min()) and int(labels.max()) < len(meta["classes"])
    assert -2.5 < float(images.mean()) < 2.5 and 0.2 < float(images.std()) < 3  # (x/255-0.5)/0.25 in [-2, 2]
    assert float(images.min()) >= -2.001 and float(images.max()) <= 2.001
    evaluated = sum(len(y) for _, y in make_loader(out / "val.beton", train=False, batch_size=16, resolution=64,
                                                   mean=(0.5,) * 3, std=(0.25,) * 3, num_workers=2))
    assert evaluated == meta["splits"]["val"]["count"]  # drop_last is off for evaluation


def test_cli_help_and_missing_out(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert "--val-labels" in capsys.readouterr().out


def test_very_thin_image_is_resized_not_crashed(small_tree, tmp_path):
    thin = small_tree.root / "train" / small_tree.classes[0] / "thin.JPEG"
    Image.new("RGB", (5000, 2), (10, 200, 30)).save(thin)
    out = tmp_path / "out"
    convert(small_tree.root, out, workers=1)
    img = beton_image(out, "train", beton_index(small_tree.root, "train", rel(small_tree, thin)))
    assert img.shape == (1, 500, 3)


def test_short_side_bounds_the_shorter_side_and_verify_uses_it(small_tree, tmp_path, capsys):
    cls = small_tree.root / "train" / small_tree.classes[0]
    Image.new("RGB", (400, 300), (10, 200, 30)).save(cls / "landscape.JPEG")
    Image.new("RGB", (90, 120), (200, 10, 30)).save(cls / "small.JPEG")
    out = tmp_path / "out"
    assert main(["--src", str(small_tree.root), "--out", str(out), "--short-side", "100", "--workers", "1"]) == 0
    land = beton_image(out, "train", beton_index(small_tree.root, "train", rel(small_tree, cls / "landscape.JPEG")))
    small = beton_image(out, "train", beton_index(small_tree.root, "train", rel(small_tree, cls / "small.JPEG")))
    assert land.shape == (100, 133, 3)  # 300 -> 100 on the short side, 400 * 1/3 truncated
    assert small.shape == (120, 90, 3)  # never enlarged
    assert json.loads((out / "meta.json").read_text())["writer"]["short_side"] == 100
    assert main(["--verify", str(out), "--src", str(small_tree.root)]) == 0  # compares at the stored size
    assert "verify: OK" in capsys.readouterr().out
    # the sizes the README recommends per student resolution (crops keep >= 90% of the area)
    assert [short_side_for(r) for r in (224, 288, 384)] == [249, 320, 427]


@pytest.mark.parametrize("kwargs,message", [
    ({"per_class": 0}, "--per-class 0"), ({"workers": -2}, "--workers -2"),
    ({"splits": ()}, "--splits"), ({"splits": ("train", "train")}, "--splits"),
    ({"val_labels": "/nonexistent/LOC_val_solution.csv"}, None)])
def test_bad_options_are_named(small_tree, tmp_path, kwargs, message):
    if "val_labels" in kwargs:
        _flatten_val(small_tree)
        message = "not found"
    with pytest.raises(ConversionError, match=message):
        convert(small_tree.root, tmp_path / "out", **kwargs)


def test_missing_src_and_verify_without_meta_are_named(tmp_path):
    with pytest.raises(ConversionError, match="does not exist"):
        convert(tmp_path / "nope", tmp_path / "out")
    with pytest.raises(VerifyError, match="meta.json: not found"):
        verify(tmp_path, tmp_path)



def test_beton_meta_is_read_in_one_place_naming_the_file(converted, tmp_path):
    out, meta = converted
    assert read_beton_meta(out)["classes"] == meta["classes"]
    with pytest.raises(FileNotFoundError, match=r"meta\.json: not found.*python -m data_prep\.imagenet"):
        read_beton_meta(tmp_path)
    (tmp_path / "meta.json").write_text("{truncated")
    with pytest.raises(ValueError, match=f"{tmp_path / 'meta.json'}: unreadable .*python -m data_prep.imagenet"):
        read_beton_meta(tmp_path)
    (tmp_path / "meta.json").write_text("[1, 2]")  # JSON, but not a meta object
    with pytest.raises(ValueError, match=f"{tmp_path / 'meta.json'}: not the expected file"):
        read_beton_meta(tmp_path)


def test_a_file_that_is_not_a_beton_is_named(converted, tmp_path):
    from fastfc.data.betons import beton_samples

    out, meta = converted
    assert beton_samples(out / "train.beton") == meta["splits"]["train"]["count"]
    fake = tmp_path / "fake.beton"
    fake.write_text("hello")  # ffcv's reader raised IndexError: index 0 is out of bounds
    with pytest.raises(ValueError, match=f"{fake}: not a readable .beton .*python -m data_prep.imagenet"):
        beton_samples(fake)


def test_a_malformed_shard_meta_or_results_file_is_named(tmp_path):
    from fastfc.data.shards import read_meta
    from fastfc.report import compare

    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "meta.json").write_text('{"set": ')
    with pytest.raises(ValueError, match=f"{tmp_path / 'set' / 'meta.json'}: unreadable .*data_prep.shifts"):
        read_meta(tmp_path / "set")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_text("{}")  # was a KeyError traceback
    with pytest.raises(ValueError, match=f"{tmp_path / 'run' / 'results.json'}: not the expected file \\(no sets\\)"):
        compare([tmp_path / "run"])

def test_wrong_src_suggests_the_parent_and_leaves_no_empty_out(small_tree, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--src", str(small_tree.root / "train"), "--out", str(out)]) == 1
    assert f"try --src {small_tree.root}" in capsys.readouterr().err
    assert not out.exists()  # created for the run, removed again because nothing was written
    kept = tmp_path / "kept"
    kept.mkdir()
    assert main(["--src", str(tmp_path / "nope"), "--out", str(kept)]) == 1
    assert kept.is_dir()  # a folder the user made stays


def test_overwriting_one_split_keeps_the_other_listed_and_stale_temporaries_go(small_tree, tmp_path, capsys):
    out = tmp_path / "out"
    convert(small_tree.root, out, workers=1)
    stale = out / ".train.beton.tmp-999999999"  # a SIGKILLed run's leftover (no such pid)
    stale.write_bytes(b"x" * 10)
    meta = convert(small_tree.root, out, workers=1, splits=("val",), overwrite=True)
    assert set(meta["splits"]) == {"train", "val"} and not stale.exists()
    assert "left by an interrupted run" in capsys.readouterr().out
    assert verify(out, small_tree.root, samples=2)["train"]["count"] == sum(small_tree.counts["train"].values())


def test_subfolders_and_broken_links_are_named_not_silently_dropped(small_tree, tmp_path):
    cls = small_tree.root / "train" / small_tree.classes[0]
    (cls / "extra").mkdir()
    (cls / "dangling.JPEG").symlink_to(tmp_path / "missing.JPEG")
    meta = convert(small_tree.root, tmp_path / "out", workers=1, splits=("train",))
    prefix = f"train/{small_tree.classes[0]}/"
    assert meta["splits"]["train"]["skipped"] == [
        {"file": prefix + "dangling.JPEG", "reason": "broken symbolic link"},
        {"file": prefix + "extra/", "reason": "a folder inside a class folder (not descended into)"}]


def test_meta_json_describes_every_beton_and_readers_refuse_one_it_does_not(tmp_path, capsys):
    from fastfc.cli import main as fastfc_main
    from fastfc.data.betons import beton_samples

    root = tmp_path / "src"
    tree = make_imagenet_tree(root, n_classes=3, train_per_class=3, val_per_class=1, quirks=False, max_side=200)
    a, b, c = tree.classes
    aside = tmp_path / "aside"
    for split in ("train", "val"):
        (aside / split).mkdir(parents=True)
        shutil.move(root / split / b, aside / split / b)
    x = tmp_path / "x"
    assert main(["--src", str(root), "--out", str(x), "--workers", "1"]) == 0  # classes {A, C}
    for split in ("train", "val"):
        shutil.move(aside / split / b, root / split / b)  # B added to the source
    meta_before, train_before = (x / "meta.json").read_bytes(), (x / "train.beton").read_bytes()
    # before: exit 0, train.beton (A=0, C=1) left beside a meta.json listing [A, B, C]
    assert main(["--src", str(root), "--out", str(x), "--splits", "val", "--overwrite", "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert (f"{x / 'train.beton'} was written with 2 classes, and {root / 'train'} now has 3: converting only "
            "--splits val would leave it") in err and "--splits train,val (nothing was changed)" in err
    assert (x / "meta.json").read_bytes() == meta_before and (x / "train.beton").read_bytes() == train_before
    y = tmp_path / "y"
    meta = convert(root, y, workers=1)  # {A, B, C}
    assert meta["splits"]["train"]["bytes"] == (y / "train.beton").stat().st_size
    assert list(meta["splits"]["train"]["per_class"]) == [a, b, c] and beton_samples(y / "train.beton") == 9
    record = dict(meta["splits"]["train"])
    del record["bytes"]  # a meta.json of an earlier conversion: no sizes; accepted, counts still checked
    (y / "meta.json").write_text(json.dumps({**meta, "splits": {**meta["splits"], "train": record}}))
    assert beton_samples(y / "train.beton") == 9
    shutil.copy(x / "train.beton", y / "train.beton")  # a beton of another conversion under the name
    probe = ["probe", "--encoder", "tiny", "--train", str(y / "train.beton"), "--out", str(tmp_path / "p.pt"),
             "--cache", str(tmp_path / "cache"), "--workers", "1", "--epochs", "1"]
    assert fastfc_main(probe) == 1
    err = capsys.readouterr().err
    assert (f"{y / 'train.beton'}: 6 samples in {(x / 'train.beton').stat().st_size} bytes, but {y / 'meta.json'} "
            "records 9 in") in err and "--splits train --overwrite" in err and "Traceback" not in err
    (y / "meta.json").write_text(json.dumps({**meta, "splits": {"val": meta["splits"]["val"]}}))  # the old state
    with pytest.raises(ValueError, match=f"{y / 'train.beton'}: not described by {y / 'meta.json'} "
                                         r"\(it describes val\)"):
        make_loader(y / "train.beton", train=False, batch_size=2, resolution=32, mean=(0, 0, 0), std=(1, 1, 1))
    assert not (tmp_path / "p.pt").exists()


def test_a_full_disk_mid_write_is_one_line_naming_the_beton_and_leaves_nothing(small_tree, tmp_path):
    from .conftest import file_size_limit

    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run([sys.executable, "-m", "data_prep.imagenet", "--src", str(small_tree.root), "--out", str(out),
                           "--workers", "2", "--write-mode", "raw"], cwd=REPO, capture_output=True, text=True,
                          timeout=300, preexec_fn=file_size_limit(200_000))
    # before: "a writer process died (out of memory?) without naming a file", with a worker's traceback
    assert proc.returncode == 1, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {out / 'train.beton'}: could not write it: file too large (the file-size limit")
    assert "nothing was published and no temporary is left" in line and " free there" in line
    assert "Traceback" not in proc.stderr and "died" not in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == []


def test_conversion_finishes_with_progress_bars_disabled(small_tree, tmp_path):
    """TQDM_DISABLE=1 (benchmarks/gpu.sh sets it) left a disabled bar's count at 0: the writer waited forever."""
    done = subprocess.run([sys.executable, "-m", "data_prep.imagenet", "--src", str(small_tree.root), "--out",
                           str(tmp_path / "out"), "--splits", "train", "--workers", "1"], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "TQDM_DISABLE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "out" / "meta.json").read_text())["splits"]["train"]["count"] == 9
