"""fastfc.data.shards on real webdataset tars of real photographs (no mocks)."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from fastfc.data.shards import (ShardFormatError, check_count, crop_border, decode_image,
                                eval_transform, iter_samples, make_shard_loader, read_meta)
from fastfc.fixtures.photos import source_photos

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
PIL_FORMAT = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "bmp": "BMP"}
REPO = Path(__file__).resolve().parents[1]


def photo(i: int, w: int = 56, h: int = 44) -> Image.Image:
    """A small real-photo RGB crop, different for each i."""
    photos = source_photos()
    _, im = photos[i % len(photos)]
    x0, y0 = (37 * i) % (im.width - 2 * w), (23 * i) % (im.height - 2 * h)
    return im.resize((w, h), Image.BICUBIC, box=(x0, y0, x0 + 2 * w, y0 + 2 * h))


def encode(img: Image.Image, ext: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=PIL_FORMAT[ext], **({"quality": 90} if ext in ("jpg", "jpeg") else {}))
    return buf.getvalue()


def make_samples(n: int, exts=("jpg", "png")) -> list[dict]:
    return [dict(ext=exts[i % len(exts)], image=encode(photo(i), exts[i % len(exts)]), cls=i % 7,
                 path=f"n0000000{i % 7}/img_{i}.{exts[i % len(exts)]}", imagenet=[3 * (i % 7)])
            for i in range(n)]


def write_set(set_dir: Path, samples: list[dict], shard_sizes: list[int], name: str = "toy",
              extra: dict | None = None) -> dict:
    """Write shards + meta.json in the converter's format; ``extra`` = {sample index: {ext: bytes|None}}."""
    assert sum(shard_sizes) == len(samples)
    set_dir.mkdir(parents=True, exist_ok=True)
    shards, i = [], 0
    for s, size in enumerate(shard_sizes):
        fname = f"{name}-{s:06d}.tar"
        with wds.TarWriter(str(set_dir / fname), encoder=False) as tw:
            for _ in range(size):
                smp = samples[i]
                rec = {"__key__": f"{i:08d}", smp["ext"]: smp["image"], "cls": str(smp["cls"]).encode(),
                       "json": json.dumps({"path": smp["path"], "imagenet": smp["imagenet"]}).encode()}
                for k, v in (extra or {}).get(i, {}).items():  # None removes a member
                    rec.pop(k) if v is None else rec.__setitem__(k, v)
                tw.write(rec)
                i += 1
        shards.append({"name": fname, "count": size,
                       "sha256": hashlib.sha256((set_dir / fname).read_bytes()).hexdigest()})
    meta = {"set": name, "classes": [f"n0000000{c}" for c in range(7)],
            "imagenet_indices": [[3 * c] for c in range(7)], "projection": "mask",
            "count": len(samples), "shards": shards, "skipped": [], "fastfc_version": "0.1.0"}
    (set_dir / "meta.json").write_text(json.dumps(meta))
    return meta


def read_all(set_dir, *, world_size, num_workers, batch_size=3, res=16):
    """{rank: (keys, labels)} read through the real DataLoader of each simulated rank."""
    out = {}
    for rank in range(world_size):
        keys, labels = [], []
        loader = make_shard_loader(set_dir, transform=eval_transform(res, MEAN, STD), batch_size=batch_size,
                                   num_workers=num_workers, rank=rank, world_size=world_size)
        for x, y, k in loader:
            assert x.shape == (len(k), 3, res, res) and x.dtype == torch.float32 and y.dtype == torch.int64
            assert isinstance(k, list) and all(isinstance(key, str) for key in k)
            keys += k
            labels += y.tolist()
        out[rank] = (keys, labels)
    return out


def test_imagenet_a_style_names(tmp_path):
    paths = ["n03196217/0.000116_digital clock _ digital clock_0.865662.jpg",
             "n01694178/0.000348_chameleon _ box turtle_0.55540705.jpg"]
    samples = [dict(ext="jpg", image=encode(photo(i), "jpg"), cls=c, path=p, imagenet=[inet])
               for i, (p, c, inet) in enumerate(zip(paths, (5, 2), (530, 47)))]
    write_set(tmp_path, samples, [2], name="imagenet-a")
    raw = list(iter_samples(tmp_path))
    assert [(s.key, s.label, s.info["path"], s.info["imagenet"], s.image) for s in raw] == [
        ("00000000", 5, paths[0], [530], samples[0]["image"]),
        ("00000001", 2, paths[1], [47], samples[1]["image"])]
    (x, y, k), = list(make_shard_loader(tmp_path, transform=eval_transform(32, MEAN, STD),
                                        batch_size=8, num_workers=0))
    assert k == ["00000000", "00000001"] and y.tolist() == [5, 2] and x.shape == (2, 3, 32, 32)


def test_round_trip_pixels_and_labels(tmp_path):
    exts = ("jpg", "png", "jpeg", "webp", "bmp")
    samples = make_samples(10, exts)
    write_set(tmp_path, samples, [6, 4])
    tf = eval_transform(24, MEAN, STD)
    raw = list(iter_samples(tmp_path))
    assert [s.key for s in raw] == [f"{i:08d}" for i in range(10)]
    for i, s in enumerate(raw):
        src = samples[i]
        assert (s.ext, s.image, s.label, s.shard) == (
            src["ext"], src["image"], src["cls"], f"toy-00000{0 if i < 6 else 1}.tar")
        decoded = np.asarray(decode_image(s))
        assert np.array_equal(decoded, np.asarray(Image.open(io.BytesIO(src["image"])).convert("RGB")))
        if src["ext"] in ("png", "bmp"):  # lossless: identical to the source pixels
            assert np.array_equal(decoded, np.asarray(photo(i)))
    got = {}
    for x, y, k in make_shard_loader(tmp_path, transform=tf, batch_size=4, num_workers=2):
        got.update((key, (img, lab)) for key, img, lab in zip(k, x, y.tolist()))
    assert sorted(got) == [f"{i:08d}" for i in range(10)]
    for i, src in enumerate(samples):
        img, lab = got[f"{i:08d}"]
        assert lab == src["cls"]
        assert torch.equal(img, tf(Image.open(io.BytesIO(src["image"])).convert("RGB")))


def test_sample_split_three_shards(tmp_path):
    """3 shards < G = 2 ranks x 2 workers -> split by sample position, exactly once."""
    samples = make_samples(12)
    write_set(tmp_path, samples, [4, 3, 5])
    out = read_all(tmp_path, world_size=2, num_workers=2)
    keys = out[0][0] + out[1][0]
    assert sorted(keys) == [f"{i:08d}" for i in range(12)] and len(set(keys)) == 12
    assert {k: lab for r in out for k, lab in zip(*out[r])} == {f"{i:08d}": s["cls"] for i, s in enumerate(samples)}
    check_count(tmp_path, len(keys))
    # global worker g walks shard g % 3 only; shard 0 (keys 0-3) is shared by g = 0 and 3
    want = {0: [0, 2], 1: [4, 5, 6], 2: [7, 8, 9, 10, 11], 3: [1, 3]}
    for rank in range(2):
        for worker in range(2):
            got = [int(s.key) for s in iter_samples(tmp_path, rank=rank, world_size=2, worker=worker, num_workers=2)]
            assert got == want[rank * 2 + worker]


def test_shard_split_five_shards(tmp_path):
    """5 shards >= G = 4 -> shard i to global worker i % 4, exactly once."""
    sizes = [2, 3, 1, 2, 2]
    write_set(tmp_path, make_samples(10), sizes)
    out = read_all(tmp_path, world_size=2, num_workers=2)
    keys = out[0][0] + out[1][0]
    assert sorted(keys) == [f"{i:08d}" for i in range(10)] and len(set(keys)) == 10
    check_count(tmp_path, len(keys))
    starts = np.cumsum([0] + sizes)
    g0 = [s.key for s in iter_samples(tmp_path, rank=0, world_size=2, worker=0, num_workers=2)]
    assert g0 == [f"{i:08d}" for i in [*range(starts[0], starts[1]), *range(starts[4], starts[5])]]


def test_rank_without_data_yields_nothing(tmp_path):
    write_set(tmp_path, make_samples(1), [1])
    out = read_all(tmp_path, world_size=2, num_workers=2)
    assert out[0][0] == ["00000000"] and out[1] == ([], [])


def test_torchrun_two_ranks_two_workers(tmp_path):
    """Real torchrun, gloo, 2 ranks x 2 workers on 1 shard of 10 (and a 1-sample set: rank 1 empty)."""
    write_set(tmp_path / "ten", make_samples(10), [10])
    write_set(tmp_path / "one", make_samples(1), [1])
    script = tmp_path / "read_ranks.py"
    script.write_text(textwrap.dedent("""
        import json, sys
        import torch, torch.distributed as dist
        from fastfc.data.shards import check_count, eval_transform, make_shard_loader
        dist.init_process_group("gloo")
        rank, out = dist.get_rank(), {}
        for set_dir in sys.argv[2:]:
            keys, labels = [], []
            tf = eval_transform(16, (0.5,) * 3, (0.5,) * 3)
            for x, y, k in make_shard_loader(set_dir, transform=tf, batch_size=3, num_workers=2):
                assert x.shape == (len(k), 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
                keys += list(k); labels += y.tolist()
            n = torch.tensor([len(keys)])
            dist.all_reduce(n)
            check_count(set_dir, int(n))
            out[set_dir] = {"keys": keys, "labels": labels, "total": int(n)}
        with open(f"{sys.argv[1]}/rank{rank}.json", "w") as f:
            json.dump({"world": dist.get_world_size(), **out}, f)
        dist.destroy_process_group()
    """))
    sets = [str(tmp_path / "ten"), str(tmp_path / "one")]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script), str(tmp_path), *sets], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    ten = [r[sets[0]] for r in ranks]
    keys = ten[0]["keys"] + ten[1]["keys"]
    assert sorted(keys) == [f"{i:08d}" for i in range(10)] and len(set(keys)) == 10
    assert ten[0]["keys"] and ten[1]["keys"]  # both ranks got a share
    assert ten[0]["total"] == ten[1]["total"] == read_meta(sets[0])["count"] == 10
    assert {k: lab for t in ten for k, lab in zip(t["keys"], t["labels"])} == {f"{i:08d}": i % 7 for i in range(10)}
    one = [r[sets[1]] for r in ranks]
    assert one[0]["keys"] == ["00000000"] and one[1]["keys"] == [] and one[1]["total"] == 1


class _Payload:
    """Unpickling this creates the marker file (proves a member was never unpickled)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("member", ["pyd", "pickle", "pth", "npy"])
def test_unexpected_member_refused(tmp_path, member):
    marker = tmp_path / "UNPICKLED"
    # the forbidden member sits in sample 3 of shard 1; with 2 ranks x 2 workers, global workers 1 and 3
    # walk shard 1 and keep samples 3, 5 and 4: both must refuse -- and nothing may be unpickled
    write_set(tmp_path / "set", make_samples(6), [3, 3], extra={3: {member: pickle.dumps(_Payload(marker))}})
    shard = str(tmp_path / "set" / "toy-000001.tar")
    for rank in range(2):
        with pytest.raises(ShardFormatError, match=f"toy-000001.tar.*00000003.{member}"):
            list(iter_samples(tmp_path / "set", rank=rank, world_size=2, worker=1, num_workers=2))
    with pytest.raises(ValueError, match=shard):
        for _ in make_shard_loader(tmp_path / "set", transform=eval_transform(16, MEAN, STD),
                                   batch_size=2, num_workers=0):
            pass
    assert not marker.exists()


def test_missing_member_and_bad_counts(tmp_path):
    samples = make_samples(4)
    meta = write_set(tmp_path, samples, [4])
    with pytest.raises(RuntimeError, match=str(tmp_path)):
        check_count(tmp_path, 3)
    check_count(tmp_path, torch.tensor(4))
    meta["shards"][0]["count"] = 5  # meta disagrees with the shard
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(RuntimeError, match="toy-000000.tar.*4 samples.*5"):
        list(iter_samples(tmp_path))
    write_set(tmp_path / "nocls", samples, [4], extra={1: {"cls": None}})
    with pytest.raises(ShardFormatError, match=r"toy-000000.tar: sample '00000001' has members \['json', 'png'\]"):
        list(iter_samples(tmp_path / "nocls"))
    write_set(tmp_path / "twoimg", samples, [4], extra={2: {"png": encode(photo(2), "png")}})
    with pytest.raises(ShardFormatError, match="'00000002'.*need exactly one image"):
        list(iter_samples(tmp_path / "twoimg"))


def test_duplicate_key_is_refused_by_every_reader(tmp_path):
    """A key that comes back later in the shard is found even by a reader that skips it (sample split)."""
    samples = make_samples(3)
    (tmp_path / "set").mkdir()
    with wds.TarWriter(str(tmp_path / "set" / "toy-000000.tar"), encoder=False) as tw:
        for i, key in enumerate(["00000000", "00000001", "00000000"]):
            tw.write({"__key__": key, samples[i]["ext"]: samples[i]["image"], "cls": b"1",
                      "json": json.dumps({"path": "x", "imagenet": [1]}).encode()})
    (tmp_path / "set" / "meta.json").write_text(json.dumps({"count": 3, "shards": [{"name": "toy-000000.tar", "count": 3}]}))
    for worker in range(2):
        with pytest.raises(ShardFormatError, match="'00000000' appears twice"):
            list(iter_samples(tmp_path / "set", worker=worker, num_workers=2))


def test_eval_transform_matches_torchvision_resize_centercrop():
    """The one-resample Resize + CenterCrop gives torchvision's output (CLIP's preprocess) on real photos."""
    from torchvision import transforms as T

    reference = T.Compose([T.Resize(32, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(32),
                           T.ToTensor(), T.Normalize(MEAN, STD)])
    ours = eval_transform(32, MEAN, STD)
    sizes = [(56, 44), (44, 56), (200, 97), (33, 80), (32, 40), (20, 24), (150, 150)]
    diffs = []
    for i, (w, h) in enumerate(sizes):
        img = photo(i, w, h)
        a, b = reference(img), ours(img)
        assert a.shape == b.shape == (3, 32, 32) and b.dtype == torch.float32
        diffs.append(((a - b) * torch.tensor(STD).view(3, 1, 1) * 255).abs())  # in grey levels
    d = torch.stack(diffs)
    assert d.max() <= 6 and d.mean() < 0.1 and (d > 0.5).float().mean() < 0.05
    exact = photo(7, 32, 48)  # no resize on the short side: the crop is the centre rows, exactly
    assert torch.allclose(ours(exact), reference(exact), atol=1e-5)


def test_read_meta_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"meta\.json.*python -m data_prep\.shifts"):
        read_meta(tmp_path / "imagenet-r")


def test_objectnet_border_crop():
    inner = photo(3, 36, 26)
    framed = Image.new("RGB", (40, 30), (255, 0, 0))
    framed.paste(inner, (2, 2))
    framed = Image.open(io.BytesIO(encode(framed, "png")))
    cropped = crop_border(framed, 2)
    arr = np.asarray(cropped.convert("RGB"))
    assert cropped.size == (36, 26) and np.array_equal(arr, np.asarray(inner))
    edges = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    assert not np.any(np.all(edges == (255, 0, 0), axis=1))
    # then the eval transform (mean 0, std 1 = the un-normalised crop): inner size -> exact inner pixels
    x = eval_transform(26, (0, 0, 0), (1, 1, 1))(crop_border(framed.convert("RGB"), 2))
    want = torch.from_numpy(np.asarray(inner)[:, 5:31].copy()).permute(2, 0, 1).float() / 255
    assert x.dtype == torch.float32 and x.shape == (3, 26, 26) and torch.allclose(x, want, rtol=0, atol=1e-6)
    # without the crop the frame reaches the output edge
    y = eval_transform(30, (0, 0, 0), (1, 1, 1))(framed.convert("RGB"))
    assert torch.equal(y[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    with pytest.raises(ValueError):
        crop_border(Image.new("RGB", (4, 10)), 2)
