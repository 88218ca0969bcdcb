"""Shift sets → shards in their own label spaces, read back and scored (real webdataset, real files)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_prep.beton import ConversionError
from data_prep.shifts import list_set, main, read_imagenet_classes, write_set
from fastfc.data import shifts
from fastfc.data.shards import ShardReader, decode_image, eval_transform, iter_samples, make_shard_loader
from fastfc.fixtures.photos import source_photos

IMAGENET = read_imagenet_classes()  # the 1000 sorted WNIDs timm ships
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def photo(i: int, size=(120, 90)) -> Image.Image:
    """A real photograph, resized."""
    photos = source_photos()
    return photos[i % len(photos)][1].resize(size)


def tinted(i: int, channel: int) -> Image.Image:
    """A real photograph with one channel boosted, so a stub model can tell classes apart."""
    arr = np.asarray(photo(i)).astype(int)
    arr[..., channel] = np.clip(arr[..., channel] + 120, 0, 255)
    return Image.fromarray(arr.astype(np.uint8))


def framed(i: int) -> Image.Image:
    """A real photograph with ObjectNet's red frame, 2 px wide."""
    arr = np.asarray(photo(i, (100, 80))).copy()
    arr[:2], arr[-2:], arr[:, :2], arr[:, -2:] = (255, 0, 0), (255, 0, 0), (255, 0, 0), (255, 0, 0)
    return Image.fromarray(arr)


def convert(name: str, src: Path, out: Path, **kw) -> dict:
    return write_set(list_set(name, src, IMAGENET), src, out, workers=2, **kw)


def read_all(set_dir: Path) -> list:
    return list(iter_samples(set_dir))


class ColourStub(torch.nn.Module):
    """A stand-in classifier: ImageNet logits one-hot at ``red_index`` for red-tinted images and at
    ``blue_index`` otherwise, plus a larger distractor logit at ``distractor`` (outside the set)."""

    def __init__(self, red_index: int, blue_index: int, distractor: int | None = None):
        super().__init__()
        self.red_index, self.blue_index, self.distractor = red_index, blue_index, distractor

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B,3,H,W] -> [B,1000]
        red = x[:, 0].mean(dim=(1, 2)) > x[:, 2].mean(dim=(1, 2))
        logits = torch.zeros(x.shape[0], 1000)
        logits[torch.arange(len(x)), torch.where(red, self.red_index, self.blue_index)] = 1.0
        if self.distractor is not None:
            logits[:, self.distractor] = 5.0
        return logits


def score(set_dir: Path, model: torch.nn.Module) -> tuple[int, int]:
    meta = json.loads((set_dir / "meta.json").read_text())
    loader = make_shard_loader(set_dir, transform=eval_transform(32, MEAN, STD),
                               batch_size=4, num_workers=0)
    correct = n = 0
    for images, labels, _ in loader:
        correct += shifts.top1_correct(model(images), labels, meta["imagenet_indices"])
        n += len(labels)
    return correct, n


# ------------------------------------------------------------------ ImageNetV2

def test_v2_label_is_int_folder_not_string_sort(tmp_path):
    src = tmp_path / "imagenetv2-matched-frequency"
    for i, folder in enumerate(["0", "1", "2", "10", "100", "999"]):
        (src / folder).mkdir(parents=True)
        photo(i).save(src / folder / f"{i:040x}.jpeg")
    meta = convert("imagenet-v2", src, tmp_path / "out")
    samples = read_all(tmp_path / "out" / "imagenet-v2")
    assert {s.info["path"].split("/")[0]: s.label for s in samples} == {f: int(f) for f in ["0", "1", "2", "10", "100", "999"]}
    assert sorted(s.label for s in samples) == [0, 1, 2, 10, 100, 999]
    assert meta["projection"] == "none" and meta["classes"] == IMAGENET and meta["count"] == 6
    assert all(s.info["imagenet"] == [s.label] for s in samples)


@pytest.mark.parametrize("folder", ["abc", "1000", "-1"])
def test_v2_folder_outside_0_999_is_named(tmp_path, folder):
    (tmp_path / folder).mkdir()
    photo(0).save(tmp_path / folder / "a.jpeg")
    with pytest.raises(shifts.LabelSpaceError, match="integer in 0..999") as err:
        list_set("imagenet-v2", tmp_path, IMAGENET)
    assert str(tmp_path / folder) in str(err.value)


# ------------------------------------------------------------------ ImageNet-R / -A

def make_ra(src: Path, names: dict[str, list[str]] | None = None) -> Path:
    names = names or {"n01498041": ["a.jpg", "b.jpg"], "n01531178": ["c.jpg", "d.jpg", "e.jpg"]}
    for channel, (wnid, files) in zip((0, 2), names.items()):
        (src / wnid).mkdir(parents=True)
        for i, f in enumerate(files):
            tinted(i, channel).save(src / wnid / f, "JPEG")
    return src


@pytest.mark.parametrize("name", ["imagenet-r", "imagenet-a"])
def test_mask_projection_scores_within_the_sets_classes(tmp_path, name):
    meta = convert(name, make_ra(tmp_path / name), tmp_path / "out")
    assert meta["classes"] == ["n01498041", "n01531178"]
    assert meta["imagenet_indices"] == [[6], [11]] and meta["projection"] == "mask"
    set_dir = tmp_path / "out" / name
    assert score(set_dir, ColourStub(6, 11)) == (5, 5)
    # A larger logit outside the set's classes must not matter: the mask restricts the argmax.
    assert score(set_dir, ColourStub(6, 11, distractor=500)) == (5, 5)
    assert score(set_dir, ColourStub(11, 6)) == (0, 5)  # and the stub can be wrong


def test_imagenet_a_file_names_with_dots_read_back(tmp_path):
    names = {"n01498041": ["0.000116_digital clock _ digital clock_0.865662.jpg"],
             "n01531178": ["0.000348_chameleon _ box turtle_0.55540705.jpg"]}
    convert("imagenet-a", make_ra(tmp_path / "imagenet-a", names), tmp_path / "out")
    samples = read_all(tmp_path / "out" / "imagenet-a")
    assert [(s.key, s.label, Path(s.info["path"]).name) for s in samples] == [
        ("00000000", 0, names["n01498041"][0]), ("00000001", 1, names["n01531178"][0])]
    assert all(decode_image(s).size == (120, 90) for s in samples)


@pytest.mark.parametrize("folder", ["dogs", "n99999999"])
def test_r_folder_that_is_not_an_imagenet_wnid_is_named(tmp_path, folder):
    src = make_ra(tmp_path / "r")
    (src / folder).mkdir()
    photo(0).save(src / folder / "x.jpg")
    with pytest.raises(shifts.LabelSpaceError, match="not one of the 1000 ImageNet WNIDs") as err:
        list_set("imagenet-r", src, IMAGENET)
    assert str(src / folder) in str(err.value)


def test_sketch_is_1000_way_by_wnid(tmp_path):
    src = make_ra(tmp_path / "sketch")
    meta = convert("imagenet-sketch", src, tmp_path / "out")
    labels = [s.label for s in read_all(tmp_path / "out" / "imagenet-sketch")]
    assert labels == [6, 6, 11, 11, 11] and len(meta["classes"]) == 1000


# ------------------------------------------------------------------ ObjectNet

def make_objectnet(root: Path, *, drop_file: str | None = None) -> Path:
    """objectnet-1.0 layout: images/<folder>/*.png and the four mapping files in the real format.

    The 2012-id order is a permutation of the PyTorch order, as in the real files, so a reader
    that skipped pytorch_to_imagenet_2012_id.json would get the wrong ImageNet index.
    """
    for folder, n in (("banana", 2), ("air_freshener", 1)):
        (root / "images" / folder).mkdir(parents=True)
        for i in range(n):
            framed(i).save(root / "images" / folder / f"{i:016x}.png")
    m = root / "mappings"
    m.mkdir()
    line_of = {i: (7 * i + 3) % 1000 for i in range(1000)}  # PyTorch index -> line of the 2012 list
    names = [f"imagenet class on line {j}" for j in range(1000)]
    names[line_of[954]] = "banana"
    names[line_of[409]], names[line_of[530]] = "analog clock", "digital clock"
    files = {
        "folder_to_objectnet_label.json": {"banana": "Banana", "air_freshener": "Air freshener",
                                           "alarm_clock": "Alarm clock"},
        "objectnet_to_imagenet_1k.json": {"Banana": "banana", "Alarm clock": "analog clock; digital clock"},
        "pytorch_to_imagenet_2012_id.json": {str(i): j for i, j in line_of.items()},
    }
    for name, content in files.items():
        (m / name).write_text(json.dumps(content))
    (m / "imagenet_to_label_2012_v2").write_text("\n".join(names) + "\n")
    if drop_file:
        (m / drop_file).unlink()
    return root


def test_objectnet_max_over_mapped_logits_drops_unmapped_classes(tmp_path):
    meta = convert("objectnet", make_objectnet(tmp_path / "objectnet-1.0"), tmp_path / "out")
    assert meta["classes"] == ["Alarm clock", "Banana"]
    assert meta["imagenet_indices"] == [[409, 530], [954]] and meta["projection"] == "objectnet-max"
    assert meta["count"] == 2 and meta["dropped"] == {"folders": {"air_freshener": 1}, "images": 1}
    set_dir = tmp_path / "out" / "objectnet"
    assert score(set_dir, ColourStub(954, 954)) == (2, 2)
    assert score(set_dir, ColourStub(530, 530)) == (0, 2)  # a clock is not a banana


def test_objectnet_border_crop_is_off_by_default_and_recorded_when_asked(tmp_path):
    """Default: the images as stored, frame and all (the released code's test set); with
    --objectnet-border-crop, meta.json says 2 px and the reader gives the stored pixels without the frame."""
    src = make_objectnet(tmp_path / "objectnet-1.0")
    want = {f"images/banana/{i:016x}.png": np.asarray(framed(i)) for i in range(2)}  # the PNGs hold these pixels
    assert main(["--set", "objectnet", "--src", str(src), "--out", str(tmp_path / "plain"), "--workers", "1"]) == 0
    assert main(["--set", "objectnet", "--src", str(src), "--out", str(tmp_path / "crop"), "--workers", "1",
                 "--objectnet-border-crop"]) == 0
    for out, crop in (("plain", 0), ("crop", 2)):
        set_dir = tmp_path / out / "objectnet"
        assert json.loads((set_dir / "meta.json").read_text())["border_crop"] == crop
        paths = [s.info["path"] for s in read_all(set_dir)]
        got = [np.asarray(img) for img, _, _ in ShardReader(set_dir)]
        assert [g.shape for g in got] == [(80 - 2 * crop, 100 - 2 * crop, 3)] * 2
        for path, pixels in zip(paths, got):
            stored = want[path]
            assert np.array_equal(pixels, stored[crop:80 - crop, crop:100 - crop])
            assert (pixels[0, 0].tolist() == [255, 0, 0]) == (crop == 0)  # the red frame, or none left


def test_border_crop_refused_for_a_set_without_a_frame(tmp_path, capsys):
    src = make_ra(tmp_path / "r")
    assert main(["--set", "imagenet-r", "--src", str(src), "--out", str(tmp_path / "out"),
                 "--objectnet-border-crop"]) == 1
    assert "--objectnet-border-crop: imagenet-r has no border to crop" in capsys.readouterr().err
    assert not (tmp_path / "out" / "imagenet-r" / "meta.json").exists()


@pytest.mark.parametrize("missing", ["objectnet_to_imagenet_1k.json", "pytorch_to_imagenet_2012_id.json"])
def test_objectnet_missing_mapping_file_is_named(tmp_path, missing):
    root = make_objectnet(tmp_path / "objectnet-1.0", drop_file=missing)
    with pytest.raises(shifts.LabelSpaceError, match=missing):
        list_set("objectnet", root, IMAGENET)


def test_objectnet_src_one_level_too_deep_suggests_the_parent(tmp_path):
    root = make_objectnet(tmp_path / "objectnet-1.0")
    with pytest.raises(ConversionError, match=f"try --src {root}$"):
        list_set("objectnet", root / "images", IMAGENET)


# ------------------------------------------------------------------ bytes, errors, reproducibility

def test_round_trip_keeps_bytes_and_labels_and_is_reproducible(tmp_path):
    src = make_ra(tmp_path / "r")
    Image.open(src / "n01498041" / "a.jpg").save(src / "n01498041" / "png_named.jpg", "PNG")
    meta = convert("imagenet-r", src, tmp_path / "out1", shard_bytes=20_000)
    convert("imagenet-r", src, tmp_path / "out2", shard_bytes=20_000)
    set_dir = tmp_path / "out1" / "imagenet-r"
    assert len(meta["shards"]) > 1 and sum(s["count"] for s in meta["shards"]) == meta["count"] == 6
    samples = read_all(set_dir)
    assert [s.key for s in samples] == [f"{i:08d}" for i in range(6)]
    for s in samples:
        assert s.image == (src / s.info["path"]).read_bytes()
        assert s.label == meta["classes"].index(Path(s.info["path"]).parent.name)
        assert s.ext == ("png" if "png_named" in s.info["path"] else "jpg")  # named by content
    for shard in meta["shards"]:
        data = (set_dir / shard["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == shard["sha256"]
        assert data == (tmp_path / "out2" / "imagenet-r" / shard["name"]).read_bytes()
    assert not list(set_dir.glob(".*"))  # no temporaries left


def test_unreadable_image_is_named_and_skip_bad_lists_it(tmp_path):
    src = make_ra(tmp_path / "r")
    bad = src / "n01531178" / "broken.jpg"
    data = (src / "n01531178" / "c.jpg").read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match="truncated") as err:
        convert("imagenet-r", src, tmp_path / "out")
    assert str(bad) in str(err.value)
    assert not (tmp_path / "out" / "imagenet-r" / "meta.json").exists()
    meta = convert("imagenet-r", src, tmp_path / "out", skip_bad=True)
    assert [s["file"] for s in meta["skipped"]] == ["n01531178/broken.jpg"] and meta["count"] == 5


def test_checking_files_stops_its_workers_without_a_signal(tmp_path):
    # multiprocessing.Pool.terminate() stops workers with SIGTERM, which a worker still starting up
    # loses (CPython clears signals that arrive before its after-fork set-up); the parent then waits
    # for it forever: a CI run hung so on a 2-file set. With SIGTERM ignored, as in a worker that lost
    # it, the old code hung every time. Checking must end both on reading to the end and on a bad file.
    src = make_ra(tmp_path / "r")
    code = f"""
import signal, sys
from pathlib import Path
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # forked workers inherit it
from data_prep.beton import ConversionError
from data_prep.shifts import list_set, read_imagenet_classes, write_set
src, classes = Path({str(src)!r}), read_imagenet_classes()
meta = write_set(list_set("imagenet-r", src, classes), src, Path({str(tmp_path / "out")!r}), workers=2)
(src / "n01531178" / "broken.jpg").write_bytes(b"not an image")
try:
    write_set(list_set("imagenet-r", src, classes), src, Path({str(tmp_path / "out2")!r}), workers=2)
except ConversionError as e:
    print("refused", Path(str(e).split(":")[0]).name)
print("converted", meta["count"])
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["refused", "broken.jpg", "converted", "5"]


def test_existing_set_needs_overwrite_and_cli_reports_errors(tmp_path, capsys):
    src = make_ra(tmp_path / "r")
    argv = ["--set", "imagenet-r", "--src", str(src), "--out", str(tmp_path / "out"), "--workers", "1"]
    assert main(argv) == 0
    assert "5 images in 2 of 2 classes" in capsys.readouterr().out
    assert main(argv) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main(argv + ["--overwrite"]) == 0
    assert main(argv + ["--overwrite", "--shard-size", "-1"]) == 1
    assert "--shard-size must be positive" in capsys.readouterr().err
    assert main(["--set", "imagenet-v2", "--src", str(src), "--out", str(tmp_path / "o")]) == 1
    assert "integer in 0..999" in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")
    assert main(["--set", "imagenet-r", "--src", str(src), "--out", str(tmp_path / "afile")]) == 1
    assert "afile" in capsys.readouterr().err  # one line, not a NotADirectoryError traceback
    assert main(["--set", "imagenet-r", "--src", str(src / "n01498041"), "--out", str(tmp_path / "o")]) == 1
    assert f"try --src {src}" in capsys.readouterr().err
    assert main(["--set", "imagenet-sketch", "--src", str(src), "--out", str(tmp_path / "sketch"), "--workers", "1"]) == 0
    out, err = capsys.readouterr()
    assert "5 images in 2 of 1000 classes" in out and "2 of its 1000 classes" in err  # a subset is said so


def test_imagenet_classes_must_be_the_full_sorted_list(tmp_path):
    partial = tmp_path / "meta.json"
    partial.write_text(json.dumps({"classes": IMAGENET[:10]}))
    with pytest.raises(ConversionError, match="1000 sorted ImageNet WNIDs"):
        read_imagenet_classes(partial)
    full = tmp_path / "full.json"
    full.write_text(json.dumps({"classes": IMAGENET}))
    assert read_imagenet_classes(full) == IMAGENET
    assert IMAGENET[6] == "n01498041" and IMAGENET[954] == "n07753592"  # stingray, banana


# ------------------------------------------------------------------ the registry

def test_each_registry_entry_carries_its_rules():
    rules = {name: s.label_rule for name, s in shifts.REGISTRY.items()}
    assert rules == {"imagenet-val": shifts.wnid_folders, "imagenet-v2": shifts.int_folders,
                     "imagenet-sketch": shifts.wnid_folders, "imagenet-r": shifts.present_wnids,
                     "imagenet-a": shifts.present_wnids, "objectnet": shifts.objectnet_mapping}
    for s in shifts.REGISTRY.values():
        assert s.projection in shifts.PROJECTIONS and bool(s.mappings) == bool(s.mapping_files), s.name
    assert len({s.release for s in shifts.REGISTRY.values()}) == len(shifts.REGISTRY)
    objectnet = shifts.get("objectnet")
    assert (objectnet.images_dir, objectnet.mappings) == ("images", "mappings")
    assert objectnet.mapping_files == shifts.OBJECTNET_MAPPING_FILES


def test_converter_listing_is_the_registry_entrys(tmp_path):
    src = make_ra(tmp_path / "r")
    assert list_set("imagenet-r", src, IMAGENET) == shifts.get("imagenet-r").list(src, IMAGENET)


def test_an_output_folder_that_is_or_holds_or_sits_in_its_source_is_refused_before_writing(tmp_path, capsys):
    from data_prep.imagenet import main as imagenet_main
    from fastfc.cli import main as fastfc_main

    data = tmp_path / "data"
    src = make_ra(data / "imagenet-r")
    before = sorted(p.name for p in src.iterdir())
    # before: exit 0, shards and meta.json written among the source's class folders
    assert main(["--set", "imagenet-r", "--src", str(src), "--out", str(data), "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert f"the set folder {src} is --src {src}: the output would land among the inputs" in err
    assert sorted(p.name for p in src.iterdir()) == before and err.count("\n") == 1
    assert main(["--set", "imagenet-r", "--src", str(src), "--out", str(src / "n01498041"), "--workers", "1"]) == 1
    assert f"is inside --src {src}" in capsys.readouterr().err
    assert imagenet_main(["--src", str(data), "--out", str(data / "betons")]) == 1
    assert f"--out {data / 'betons'} is inside --src {data}" in capsys.readouterr().err
    assert not (data / "betons").exists()
    flags = ["--encoder", "tiny", "--workers", "1"]
    assert fastfc_main(["features", *flags, "--cache", str(src / "cache"), str(src)]) == 1
    assert f"--cache {src / 'cache'} is inside source {src}" in capsys.readouterr().err
    assert main(["--set", "imagenet-r", "--src", str(src), "--out", str(tmp_path / "shards"), "--workers", "1"]) == 0
    probe = tmp_path / "probe.pt"
    probe.write_bytes(b"")
    evalf = ["eval", *flags, "--probe", str(probe), "--shards", str(tmp_path / "shards"), "--cache", str(tmp_path / "c")]
    assert fastfc_main([*evalf, "--out", str(tmp_path / "shards")]) == 1
    assert f"--out {tmp_path / 'shards'} contains the set {tmp_path / 'shards' / 'imagenet-r'}" in capsys.readouterr().err
    assert not (src / "cache").exists() and not (tmp_path / "shards" / "results.json").exists()


def test_a_full_disk_mid_shard_is_one_line_naming_the_shard_and_leaves_no_temporary(tmp_path):
    from fastfc.atomic import size_text

    from .conftest import file_size_limit

    src = make_ra(tmp_path / "imagenet-r")
    needed = size_text(sum(f.stat().st_size + 3 * 512 for f in src.rglob("*.jpg")))
    out = tmp_path / "shards"
    proc = subprocess.run([sys.executable, "-m", "data_prep.shifts", "--set", "imagenet-r", "--src", str(src), "--out",
                           str(out), "--workers", "1"], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                          text=True, timeout=120, preexec_fn=file_size_limit(8_000))
    # before: exit 1 with "[Errno 27] File too large", and imagenet-r/.imagenet-r-000000.tar.tmp-<pid> left behind
    assert proc.returncode == 1
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {out / 'imagenet-r' / 'imagenet-r-000000.tar'}: could not write it: file too large")
    assert f"after 8.0 kB; it needs about {needed}" in line and "Traceback" not in proc.stderr
    assert list((out / "imagenet-r").iterdir()) == []


def test_a_second_writer_of_the_same_set_is_refused_and_a_dead_writers_lock_taken_over(tmp_path, capsys):
    import os
    import socket

    from fastfc.atomic import output_lock

    src = make_ra(tmp_path / "imagenet-r")
    set_dir = tmp_path / "out" / "imagenet-r"
    set_dir.mkdir(parents=True)
    argv = ["--set", "imagenet-r", "--src", str(src), "--out", str(tmp_path / "out"), "--workers", "1"]
    with output_lock(set_dir):  # this test process is a first writer, still at work
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert f"another process ({os.getpid()}@{socket.gethostname()}) is writing it, as {set_dir / '.fastfc.lock'}" in err
        assert sorted(p.name for p in set_dir.iterdir()) == [".fastfc.lock"]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (set_dir / ".fastfc.lock").write_text(f"{dead.stdout.strip()}@{socket.gethostname()}")  # a killed writer's
    assert main(argv) == 0
    assert sorted(p.name for p in set_dir.iterdir()) == ["imagenet-r-000000.tar", "meta.json"]
