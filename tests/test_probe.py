"""Feature cache, linear probes, evaluation and comparison: real ffcv, real shards, real torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from data_prep.shifts import list_set, write_set
from fastfc import evaluate as evallib
from fastfc.features import extract
from fastfc.models import build_student, build_teacher
from fastfc.fixtures.photos import make_imagenet_tree
from fastfc.probe import ProbeRecipe, init_head, load_probe, save_probe, sweep, top1, train_classes, train_heads
from fastfc.report import compare
from fastfc.result_files import write_results
from fastfc.train import lr_at

from .test_shift_sets import IMAGENET, make_objectnet, make_ra, photo

REPO = Path(__file__).resolve().parents[1]


def reference_probe(x, y, num_classes, wd, recipe):
    """A plain probe with torch's own AdamW and nn.Linear: what each batched head must equal."""
    weight, bias = init_head(x.shape[1], num_classes, recipe.seed)
    head = nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        head.weight.copy_(weight), head.bias.copy_(bias)
    opt = torch.optim.AdamW(head.parameters(), lr=recipe.lr, weight_decay=wd)
    n = len(y)
    spe = -(-n // recipe.batch_size)
    g, step = torch.Generator().manual_seed(recipe.seed), 0
    for _ in range(recipe.epochs):
        order = torch.randperm(n, generator=g)
        for i in range(spe):
            idx = order[i * recipe.batch_size:(i + 1) * recipe.batch_size]
            for group in opt.param_groups:
                group["lr"] = lr_at(step, base=recipe.lr, warmup=recipe.warmup_steps, total=recipe.epochs * spe)
            loss = F.cross_entropy(head(x[idx].float()), y[idx])
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(head.parameters(), recipe.grad_clip)
            opt.step()
            step += 1
    return head.weight.detach(), head.bias.detach()


def test_wd_sweep_heads_equal_separate_runs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 16, generator=g).half()
    y = torch.randint(0, 5, (300,), generator=g)
    recipe = ProbeRecipe(epochs=3, batch_size=32, lr=1e-2, warmup_steps=5, seed=7)
    wds = [1e-6, 1e-2, 0.5, 5.0]
    weights, biases = train_heads(x, y, 5, wds, recipe, progress=False)
    for k, wd in enumerate(wds):
        w_ref, b_ref = reference_probe(x, y, 5, wd, recipe)
        assert torch.allclose(weights[k], w_ref, atol=1e-5) and torch.allclose(biases[k], b_ref, atol=1e-5), wd
    assert not torch.allclose(weights[0], weights[-1], atol=1e-3)  # the decays really differ
    best, scores = sweep(x, y, 5, wds, recipe)
    assert best in wds and set(scores) == set(wds) and all(0 <= s <= 1 for s in scores.values())


def test_original_probe_file_loads_with_identical_logits(tmp_path):
    weight, bias = torch.randn(1000, 32), torch.randn(1000)
    torch.save({"module.weight": weight, "module.bias": bias}, tmp_path / "orig.pt")
    w, b, info = load_probe(tmp_path / "orig.pt")
    x = torch.randn(4, 32)
    assert torch.equal(x @ w.T + b, x @ weight.T + bias) and info == {}
    save_probe(tmp_path / "ours.pt", weight, bias, {"classes": IMAGENET})
    assert set(torch.load(tmp_path / "ours.pt", weights_only=True)) == {"weight", "bias"}
    assert load_probe(tmp_path / "ours.pt")[2]["classes"] == IMAGENET
    torch.save({"something": torch.zeros(3)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt"):
        load_probe(tmp_path / "bad.pt")
    (tmp_path / "ours.json").write_text("{")  # a damaged record beside a good probe: named, not a bare JSON error
    with pytest.raises(ValueError, match=f"{tmp_path / 'ours.json'}: unreadable"):
        load_probe(tmp_path / "ours.pt")


def test_feature_cache_is_reused_and_a_stale_one_rebuilt(converted, tmp_path):
    out, meta = converted
    encoder = build_student("tiny", seed=0)
    first = extract(encoder, out / "val.beton", tmp_path, batch_size=16, num_workers=1)
    assert first.features.shape == (meta["splits"]["val"]["count"], 32) and first.features.dtype == np.float16
    stamp = (first.path / "features.npy").stat().st_mtime_ns
    again = extract(encoder, out / "val.beton", tmp_path, batch_size=16, num_workers=1)
    assert again.path == first.path and (again.path / "features.npy").stat().st_mtime_ns == stamp
    with torch.no_grad():
        next(encoder.visual.parameters()).add_(0.5)  # another checkpoint
    changed = extract(encoder, out / "val.beton", tmp_path, batch_size=16, num_workers=1)
    assert changed.path != first.path and not np.array_equal(changed.features, first.features)
    assert np.array_equal(changed.labels, first.labels)
    (changed.path / "meta.json").write_text('{"count": ')  # a damaged record: rebuilt, not an error
    rebuilt = extract(encoder, out / "val.beton", tmp_path, batch_size=16, num_workers=1)
    assert rebuilt.path == changed.path and np.array_equal(rebuilt.features, changed.features)
    assert json.loads((rebuilt.path / "meta.json").read_text())["count"] == meta["splits"]["val"]["count"]


def test_a_cache_being_filled_is_refused_to_a_second_command_and_a_full_disk_leaves_no_temporary(converted, tmp_path):
    import shutil
    import socket

    from fastfc.atomic import output_lock

    from .conftest import file_size_limit

    out, meta = converted
    encoder = build_student("tiny", seed=0)
    first = extract(encoder, out / "val.beton", tmp_path, batch_size=16, num_workers=1)
    (first.path / "meta.json").unlink()  # the record is written last: a cache still being filled
    with output_lock(first.path):  # this test process: the first command, still filling it
        with pytest.raises(FileExistsError, match=f"another process \\({os.getpid()}@{socket.gethostname()}\\) is writing"):
            extract(encoder, out / "val.beton", tmp_path, batch_size=16, num_workers=1)
    again = extract(encoder, out / "val.beton", tmp_path, batch_size=16, num_workers=1)
    assert np.array_equal(again.features, first.features)
    shutil.rmtree(tmp_path / "full", ignore_errors=True)
    proc = subprocess.run([sys.executable, "-m", "fastfc", "features", "--encoder", "tiny", "--cache",
                           str(tmp_path / "full"), "--workers", "1", str(out / "val.beton")], cwd=REPO,
                          capture_output=True, text=True, timeout=300, preexec_fn=file_size_limit(2_000))
    assert proc.returncode == 1
    line = proc.stderr.strip().splitlines()[-2]
    need = meta["splits"]["val"]["count"] * 32 * 2
    assert "features.npy: could not write it: file too large" in line and f"it needs about {need / 1e3:.1f} kB" in line
    assert "Traceback" not in proc.stderr
    assert [p.name for p in (tmp_path / "full").rglob("*")] == [first.path.name]  # the folder, empty


@pytest.mark.slow
def test_probe_on_the_real_teacher_beats_chance_and_a_random_encoder(converted, tmp_path):
    out, meta = converted
    recipe = ProbeRecipe(epochs=10, batch_size=32, lr=1e-3, warmup_steps=20, weight_decay=0.1)
    scores = {}
    for name, encoder in {"teacher": build_teacher("mobilenet_v2", weights="package"),
                          "random": build_teacher("mobilenet_v2")}.items():
        train = extract(encoder, out / "train.beton", tmp_path, batch_size=50, num_workers=2)
        val = extract(encoder, out / "val.beton", tmp_path, batch_size=50, num_workers=2)
        w, b = train_heads(train.features, train.labels, len(meta["classes"]), [0.1], recipe, progress=False)
        scores[name] = top1(val.features, val.labels, w[0], b[0])
    # Seen here: teacher 0.97, random-init 0.10 (chance 0.10, 10 classes, 100 val images).
    assert scores["teacher"] > 0.6 and scores["teacher"] > scores["random"] + 0.3, scores


def _shift_sets(root: Path) -> dict[str, Path]:
    v2 = root / "v2"
    for i, folder in enumerate(["6", "11", "954"]):
        (v2 / folder).mkdir(parents=True)
        photo(i).save(v2 / folder / "a.jpeg")
    sources = {"imagenet-v2": v2, "imagenet-r": make_ra(root / "r"), "objectnet": make_objectnet(root / "objectnet")}
    for name, src in sources.items():
        write_set(list_set(name, src, IMAGENET), src, root / "shards", workers=1)
    return {name: root / "shards" / name for name in sources}


def test_projections_and_totals_with_stub_logits(tmp_path):
    sets = _shift_sets(tmp_path)
    probe_classes = IMAGENET  # a 1000-way probe: columns are ImageNet indices
    for name, set_dir in sets.items():
        meta = json.loads((set_dir / "meta.json").read_text())
        columns, projection = evallib.set_columns(set_dir, probe_classes)
        assert projection == meta["projection"]
        from fastfc.data.shards import iter_samples
        labels = torch.tensor([s.label for s in iter_samples(set_dir)])
        assert len(labels) == meta["count"]
        truth = torch.tensor([s.info["imagenet"][0] for s in iter_samples(set_dir)])
        logits = torch.zeros(len(labels), 1000)
        logits[torch.arange(len(labels)), truth] = 1.0
        logits[:, 500] = 0.5  # outside R's mask and ObjectNet's mapped classes
        expected = len(labels) if name != "imagenet-v2" else len(labels)
        assert evallib.score(logits, labels, columns) == expected, name
    # A probe over a subset of classes scores like a mask: R's classes are 6 and 11.
    cols, _ = evallib.set_columns(sets["imagenet-r"], [IMAGENET[11], IMAGENET[6]])
    assert cols == [[1], [0]]


def test_two_rank_extraction_equals_one_process(converted, tmp_path):
    out, _ = converted
    sets = _shift_sets(tmp_path / "sets")
    five = sets["imagenet-r"]  # 5 images
    sources = [str(out / "val.beton"), str(five)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "tests/dist_extract.py", str(tmp_path / "one"), str(tmp_path / "one.json"), *sources],
                   cwd=REPO, env=env, check=True, capture_output=True, timeout=300)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "tests/dist_extract.py", str(tmp_path / "two"), str(tmp_path / "two.json"), *sources],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert two["world"] == 2
    for source in sources:
        a, b = Path(one["paths"][source]), Path(two["paths"][source])
        # same images in the same order; batches differ (4+1 vs 3 and 2), and CPU kernels may round a
        # batch of 2 differently from a batch of 4: up to one float16 step apart, not bit for bit
        fa, fb = np.load(a / "features.npy").astype(np.float32), np.load(b / "features.npy").astype(np.float32)
        assert fa.shape == fb.shape and np.allclose(fa, fb, rtol=2e-3, atol=1e-4), (source, np.abs(fa - fb).max())
        assert np.array_equal(np.load(a / "labels.npy"), np.load(b / "labels.npy"))
    assert np.load(Path(two["paths"][str(five)]) / "labels.npy").shape == (5,)


def test_evaluate_writes_results_and_compare_reports_the_gap(converted, tmp_path):
    out, meta = converted
    sets = _shift_sets(tmp_path / "sets")
    encoder = build_student("tiny", seed=0)
    runs = []
    for name, seed in (("teacher", 0), ("student", 1)):
        weight, bias = init_head(32, len(meta["classes"]), seed)
        results = evallib.evaluate(encoder, weight, bias, meta["classes"],
                                   {"imagenet-val": out / "val.beton", **sets}, tmp_path / "cache", num_workers=1)
        assert results["sets"]["imagenet-val"]["n"] == meta["splits"]["val"]["count"]
        assert results["sets"]["imagenet-r"]["n"] == 5 and results["sets"]["objectnet"]["n"] == 2
        assert results["sets"]["objectnet"]["decoding"] == {"exif_upright": False, "border_crop": 0}  # the defaults
        assert results["sets"]["imagenet-val"]["decoding"] == {"exif_upright": False, "border_crop": 0}  # the beton's
        write_results(tmp_path / name, results)
        runs.append(tmp_path / name)
    table = compare(runs, plot=tmp_path / "plot.png")
    lines = table.splitlines()
    assert lines[0].startswith("| run | ID | imagenet-v2 | imagenet-r | objectnet | OOD avg |")
    assert "+0.0" in lines[2]  # the teacher's gap to itself
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| ID |" in (tmp_path / "teacher" / "results.md").read_text()  # one name for ID in every table


def test_cli_probe_cached_and_from_images_then_eval(small_beton, converted, tmp_path, capsys):
    from fastfc.cli import main

    out, _ = converted
    common = ["--encoder", "tiny", "--cache", str(tmp_path / "cache"), "--batch-size", "32", "--workers", "1"]
    recipe = ["--train", str(small_beton), "--epochs", "2", "--warmup", "2"]
    assert main(["probe", *common, *recipe, "--out", str(tmp_path / "a" / "probe.pt"), "--wd-sweep", "1e-4,1e-1"]) == 0
    info = json.loads((tmp_path / "a" / "probe.json").read_text())
    assert info["sweep"]["chosen"] in (1e-4, 1e-1) and 0 <= info["train_top1"] <= 1
    assert info["recipe"]["weight_decay"] == info["sweep"]["chosen"]
    assert main(["probe", *common, *recipe, "--out", str(tmp_path / "b" / "probe.pt"), "--from-images"]) == 0
    w, b, info_b = load_probe(tmp_path / "b" / "probe.pt")
    assert w.shape == (10, 32) and b.shape == (10,) and info_b["classes"] == info["classes"]
    assert (tmp_path / "b" / "from_images" / "metrics.jsonl").is_file()  # it ran through fastfc.train
    assert main(["eval", *common, "--probe", str(tmp_path / "a" / "probe.pt"), "--val-beton", str(out / "val.beton"),
                 "--out", str(tmp_path / "run")]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["sets"]["imagenet-val"]["n"] == 100 and "| ID |" in capsys.readouterr().out


def test_cli_features_and_probe_read_a_toml_config_with_flags_and_set_on_top(small_beton, tmp_path, capsys):
    from fastfc.cli import main

    cache = tmp_path / "cache"
    (tmp_path / "f.toml").write_text(f'sources = ["{small_beton}"]\n[encoder]\nname = "tiny"\n'
                                     f'[extract]\ncache = "{cache}"\n[data]\nbatch_size = 64\nworkers = 1\n')
    assert main(["features", "--config", str(tmp_path / "f.toml"), "--set", "extract.precision=fp32"]) == 0
    (folder,) = cache.iterdir()  # the file's sources and cache, the override's precision
    assert folder.name.endswith("-fp32") and json.loads((folder / "meta.json").read_text())["precision"] == "fp32"
    assert "300 x 32 float32" in capsys.readouterr().out
    out = tmp_path / "p" / "probe.pt"
    (tmp_path / "p.toml").write_text(f'[encoder]\nname = "tiny"\n[data]\nbatch_size = 64\nworkers = 1\n'
                                     f'[extract]\ncache = "{cache}"\nprecision = "fp32"\n[probe]\ntrain = "{small_beton}"\n'
                                     f'out = "{out}"\nepochs = 3\nwarmup = 2\nlr = 0.5\nwd = 0\n')
    assert main(["probe", "--config", str(tmp_path / "p.toml"), "--lr", "0.01", "--epochs", "2",
                 "--set", "probe.epochs=1", "--set", "probe.seed=3"]) == 0
    recipe = json.loads(out.with_suffix(".json").read_text())["recipe"]  # file < flags < --set
    assert (recipe["epochs"], recipe["lr"], recipe["seed"], recipe["warmup_steps"]) == (1, 0.01, 3, 2)
    assert recipe["weight_decay"] == 0 and recipe["batch_size"] == 64
    assert len(list(cache.iterdir())) == 1  # the probe read the fp32 cache the features command wrote

def test_the_configs_probe_kinds_are_the_weight_decays_kinds():
    from fastfc.probe import WEIGHT_DECAY
    from fastfc.stage_config import PROBE_KINDS

    assert set(PROBE_KINDS) == set(WEIGHT_DECAY)  # stage_config names them without importing torch

def test_cli_bad_input_is_one_error_line_before_any_work(converted, tmp_path, capsys):
    from fastfc.cli import main

    out, _ = converted
    common = ["--encoder", "tiny", "--cache", str(tmp_path / "cache"), "--workers", "1"]
    assert main(["probe", *common, "--train", str(tmp_path / "nope.beton"), "--out", str(tmp_path / "p.pt")]) == 1
    err = capsys.readouterr().err
    assert "--train" in err and "no such file or folder" in err and "Traceback" not in err
    (tmp_path / "afile").write_text("x")
    assert main(["probe", *common, "--train", str(out / "train.beton"), "--out", str(tmp_path / "afile" / "p.pt")]) == 1
    assert "afile" in capsys.readouterr().err and not (tmp_path / "cache").exists()  # refused before extraction
    probe = ["--probe", str(tmp_path / "p.pt")]
    with pytest.raises(SystemExit, match="nothing to evaluate"):
        main(["eval", *common, *probe])
    (tmp_path / "empty").mkdir()
    assert main(["eval", *common, *probe, "--shards", str(tmp_path / "empty")]) == 1
    assert "no shift-set folders" in capsys.readouterr().err
    with pytest.raises(SystemExit) as steps:
        main(["demo", "--steps", "0", "--out", str(tmp_path / "demo")])
    assert steps.value.code == 2 and not (tmp_path / "demo").exists()  # 0 used to mean "the whole schedule"


def pil_eval_input(path: Path, n_px: int, mean, std) -> torch.Tensor:
    """The released code's evaluation preprocess, written out with PIL alone: shorter side to n_px
    (bicubic, the longer side truncated as torchvision's Resize does), centre crop, /255, normalise."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    size = (n_px, int(n_px * h / w)) if w <= h else (int(n_px * w / h), n_px)
    img = img.resize(size, Image.BICUBIC)
    left, top = int(round((size[0] - n_px) / 2)), int(round((size[1] - n_px) / 2))
    x = np.asarray(img.crop((left, top, left + n_px, top + n_px)), dtype=np.float32) / 255
    return torch.from_numpy((x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).permute(2, 0, 1)


def test_train_folder_features_are_the_eval_transforms_and_the_beton_fast_path_differs(tmp_path):
    """Item 4: the probe's train features from the ImageNet train folder are the encoder's outputs on
    the released code's evaluation preprocess of each JPEG (computed here with PIL alone); the beton
    (ffcv's centre crop of images already downsized at conversion) gives other inputs."""
    from data_prep.beton import WriterSettings
    from data_prep.imagenet import convert

    tree = make_imagenet_tree(tmp_path / "imagenet", n_classes=3, train_per_class=4, val_per_class=1, quirks=False)
    train = tmp_path / "imagenet" / "train"
    convert(tmp_path / "imagenet", tmp_path / "betons", splits=("train",), settings=WriterSettings(max_resolution=64),
            workers=1)
    encoder = build_student("tiny", seed=0)
    folder = extract(encoder, train, tmp_path / "cache", batch_size=8, num_workers=0, precision="fp32")
    beton = extract(encoder, tmp_path / "betons" / "train.beton", tmp_path / "cache", batch_size=8, num_workers=0,
                    precision="fp32")
    files = sorted(train.glob("*/*.JPEG"))  # WNIDs sort in ImageNet order; names sorted within a class
    with torch.no_grad():
        want = encoder.visual.eval()(torch.stack([pil_eval_input(f, encoder.input_size, encoder.mean, encoder.std)
                                           for f in files])).numpy()
    assert folder.features.shape == want.shape == (12, 32)
    assert np.abs(folder.features - want).max() < 1e-5 * np.abs(want).max()  # seen: 6e-8 of 0.34
    assert np.abs(beton.features - want).max() > 1e-2 * np.abs(want).max()  # seen: 0.012 of 0.34
    wnids = sorted(tree.counts["train"])
    assert [IMAGENET[i] for i in folder.labels] == [f.parent.name for f in files]
    classes, relabel = train_classes(train)
    assert classes == wnids and relabel[folder.labels].tolist() == np.asarray(beton.labels).tolist()
    write_set(list_set("imagenet-val", train, IMAGENET), train, tmp_path / "shards", workers=1)  # train shards
    shards = extract(encoder, tmp_path / "shards" / "imagenet-val", tmp_path / "cache", batch_size=8, num_workers=0,
                     precision="fp32")
    assert np.array_equal(shards.features, folder.features) and np.array_equal(shards.labels, folder.labels)
    assert train_classes(tmp_path / "shards" / "imagenet-val")[0] == wnids
    meta_path = tmp_path / "shards" / "imagenet-val" / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["per_class"]  # shards written before the field: every class counts as present
    meta_path.write_text(json.dumps(meta))
    assert train_classes(tmp_path / "shards" / "imagenet-val")[0] == IMAGENET


def test_cli_probe_and_eval_train_on_the_folder_by_default_recorded(tmp_path, capsys):
    from fastfc.cli import main

    make_imagenet_tree(tmp_path / "imagenet", n_classes=3, train_per_class=4, val_per_class=1, quirks=False)
    train, val = tmp_path / "imagenet" / "train", tmp_path / "imagenet" / "val"
    common = ["--encoder", "tiny", "--cache", str(tmp_path / "cache"), "--batch-size", "8", "--workers", "0"]
    assert main(["probe", *common, "--train", str(train), "--epochs", "2", "--warmup", "2",
                 "--out", str(tmp_path / "p" / "probe.pt")]) == 0
    w, _, info = load_probe(tmp_path / "p" / "probe.pt")
    assert w.shape == (3, 32) and info["classes"] == sorted(p.name for p in train.iterdir())
    assert info["train"]["kind"] == "folder" and "CenterCrop" in info["train"]["transform"]
    assert info["train"]["decoding"] == {"exif_upright": False, "border_crop": 0}
    assert main(["eval", *common, "--probe", str(tmp_path / "p" / "probe.pt"), "--val", str(val),
                 "--train", str(train), "--out", str(tmp_path / "run")]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["train"]["n"] == 12 and results["train"]["top1"] == pytest.approx(info["train_top1"])
    with pytest.raises(SystemExit, match="--from-images reads a train beton"):
        main(["probe", *common, "--train", str(train), "--from-images", "--out", str(tmp_path / "q.pt")])
    (tmp_path / "objectnet").mkdir()
    (tmp_path / "objectnet" / "meta.json").write_text('{"set": "objectnet"}')  # shards of a test set
    assert main(["probe", *common, "--train", str(tmp_path / "objectnet"), "--out", str(tmp_path / "q.pt")]) == 1
    assert "shards of objectnet; give the ImageNet train folder" in capsys.readouterr().err
