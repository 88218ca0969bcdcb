"""Evaluation: ID read like the shift sets, stored-size refusal, Wilson intervals, the comparison
summary and the student-teacher fit (real betons, real shards, real image folders, real torchrun)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_prep.shifts import list_set, write_set
from fastfc import evaluate as evallib
from fastfc import report as reportlib
from fastfc.cli import main
from fastfc.features import extract
from fastfc.models import build_student, build_teacher
from fastfc.probe import init_head, save_probe
from fastfc.result_files import chance_level, wilson

from .test_shift_sets import IMAGENET

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def val_sources(photo_tree, converted, tmp_path_factory):
    """The session photo tree's val split three ways: its folder, imagenet-val shards of that
    folder, and the val beton. ``(folder, shard set, beton, beton meta)``."""
    out, meta = converted
    shards = tmp_path_factory.mktemp("val-shards")
    write_set(list_set("imagenet-val", photo_tree.root / "val", IMAGENET), photo_tree.root / "val", shards, workers=2)
    return photo_tree.root / "val", shards / "imagenet-val", out / "val.beton", meta


# ----------------------------------------------------------------------------- ID: one evaluation path

def test_id_from_the_val_folder_equals_imagenet_val_shards_and_not_the_beton(val_sources, tmp_path):
    folder, shards, beton, meta = val_sources
    encoder = build_student("tiny", seed=0)
    a, b, c = (extract(encoder, s, tmp_path, batch_size=16, num_workers=1) for s in (folder, shards, beton))
    assert a.features.shape == (meta["splits"]["val"]["count"], 32)
    # the same JPEGs through the same decode and transform: the same embeddings, the same labels
    assert np.array_equal(a.features, b.features)
    cols_folder, cols_shards = (evallib.set_columns(s, meta["classes"]) for s in (folder, shards))
    assert cols_folder == cols_shards and cols_folder[1] == "none"
    w, bias = init_head(32, len(meta["classes"]), 0)
    counts = [evallib.count_correct(f.features, f.labels, w, bias, cols) for f, cols in
              ((a, cols_folder[0]), (b, cols_shards[0]))]
    assert counts[0] == counts[1]
    # the beton's pixels were resized and re-encoded when stored, then resized by ffcv: other inputs
    assert np.abs(a.features.astype(np.float32) - c.features.astype(np.float32)).max() > 1e-2


def test_cli_eval_reads_id_like_the_shift_sets_and_the_beton_only_on_request(val_sources, tmp_path, capsys):
    folder, shards, beton, meta = val_sources
    probe = tmp_path / "probe.pt"
    save_probe(probe, *init_head(32, len(meta["classes"]), 0), {"classes": meta["classes"]})
    common = ["eval", "--encoder", "tiny", "--weights", str(_tiny_weights(tmp_path / "tiny.pt", 0)), "--probe", str(probe),
              "--cache", str(tmp_path / "cache"), "--workers", "1"]
    sources = {}
    for name, flags in {"folder": ["--val", str(folder)], "shards": ["--shards", str(shards.parent)],
                        "beton": ["--val-beton", str(beton)]}.items():
        assert main([*common, *flags, "--out", str(tmp_path / name)]) == 0
        sources[name] = json.loads((tmp_path / name / "results.json").read_text())["sets"]["imagenet-val"]
    assert sources["folder"]["source"] == str(folder) and sources["shards"]["source"] == str(shards)
    assert sources["folder"]["correct"] == sources["shards"]["correct"] and sources["folder"]["n"] == 100
    assert sources["beton"]["source"] == str(beton)
    capsys.readouterr()
    assert main([*common, "--val", str(beton), "--out", str(tmp_path / "x")]) == 1  # a beton is an explicit opt-in
    err = capsys.readouterr().err
    assert "--val-beton" in err and "val.beton" in err and "Traceback" not in err
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (40, 40)).save(flat / "ILSVRC2012_val_00000001.JPEG")
    assert main([*common, "--val", str(flat), "--out", str(tmp_path / "y")]) == 1
    assert "no <wnid>/ class folders" in capsys.readouterr().err
    other = tmp_path / "shards" / "imagenet-sketch"
    other.mkdir(parents=True)
    (other / "meta.json").write_text(json.dumps({"set": "imagenet-sketch"}))
    assert main([*common, "--val", str(other), "--out", str(tmp_path / "z")]) == 1
    assert "shards of imagenet-sketch, not imagenet-val" in capsys.readouterr().err
    assert not (tmp_path / "y").exists() and not (tmp_path / "z").exists()


def test_cli_eval_reads_a_toml_config_with_set_on_top(val_sources, tmp_path):
    _, shards, _, meta = val_sources
    probe = tmp_path / "probe.pt"
    save_probe(probe, *init_head(32, len(meta["classes"]), 0), {"classes": meta["classes"]})
    (tmp_path / "e.toml").write_text(
        f'[encoder]\nname = "tiny"\nweights = "{_tiny_weights(tmp_path / "s.pt", 1)}"\n'
        f'[extract]\ncache = "{tmp_path / "cache"}"\n[data]\nbatch_size = 16\nworkers = 1\n'
        f'[teacher]\nweights = "{_tiny_weights(tmp_path / "t.pt", 2)}"\n'
        f'[eval]\nprobe = "{probe}"\nshards = "{shards.parent}"\nsets = ["imagenet-val"]\nout = "{tmp_path / "a"}"\n')
    assert main(["eval", "--config", str(tmp_path / "e.toml"), "--set", f"eval.out={tmp_path / 'b'}"]) == 0
    assert not (tmp_path / "a").exists()  # --set won over the file's out
    results = json.loads((tmp_path / "b" / "results.json").read_text())
    assert list(results["sets"]) == ["imagenet-val"] and results["sets"]["imagenet-val"]["n"] == 100
    assert results["teacher"] == "tiny" and -1 <= results["sets"]["imagenet-val"]["fit"]["cosine"] < 1  # the [teacher]

def test_a_beton_stored_below_the_encoders_input_is_refused_before_any_work(small_beton, tmp_path):
    from fastfc.data.ffcv import make_loader, stored_short_side
    from fastfc.distill import DistillConfig, run

    assert stored_short_side(small_beton) == 64  # written with max_resolution=64
    mobilenet = build_student("mobilenet_v2")  # 224 px
    with pytest.raises(ValueError, match=r"train.beton: .* at most 64 px.*224-px input.*--short-side 249"):
        extract(mobilenet, small_beton, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()
    with pytest.raises(ValueError, match="at most 64 px"):
        make_loader(small_beton, train=True, batch_size=4, resolution=224, mean=(0.5,) * 3, std=(0.5,) * 3)
    cfg = DistillConfig()
    cfg.encoder.name, cfg.teacher.pretrained, cfg.data.train_beton = "RN50x4", None, str(small_beton)
    with pytest.raises(ValueError, match="288-px input"):  # before the teacher is built
        run(cfg)
    make_loader(small_beton, train=False, batch_size=4, resolution=64, mean=(0.5,) * 3, std=(0.5,) * 3)


def test_probe_and_eval_launcher_gives_each_architecture_its_data():
    def commands(arch, **env):
        done = subprocess.run(["bash", str(REPO / "launch" / "probe_and_eval.sh"), arch], cwd=REPO, capture_output=True,
                              text=True, env={**os.environ, "DRY": "1", "NGPU": "1", **env})
        assert done.returncode == 0, done.stderr
        return [line for line in done.stdout.splitlines() if line.startswith("+ ")]

    for arch, betons in {"RN50": "data/betons/", "RN50x4": "data/betons_320/", "RN50x16": "data/betons_427/"}.items():
        lines = commands(arch)
        assert all("--train data/imagenet/train " in line for line in lines[:4]), arch  # the released code's inputs
        fast = commands(arch, FAST="1")  # the opt-in fast path: the beton stored for this input size
        assert all(f"--train {betons}train.beton" in line for line in fast[:4]), arch
        assert all("--shards data/shards" in line and "--val" not in line for line in lines[2:4])
    student_eval = commands("RN50")[3]
    assert "--teacher-pretrained openai" in student_eval and "--weights runs/distill_rn50/weights.pt" in student_eval


# ----------------------------------------------------------------------------- statistics

def test_wilson_interval_matches_known_values():
    lo, hi = wilson(8, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)
    assert wilson(0, 10) == (0.0, pytest.approx(3.8415 / 13.8415, abs=1e-4))
    assert wilson(10, 10) == (pytest.approx(10 / 13.8415, abs=1e-4), 1.0)
    assert all(math.isnan(v) for v in wilson(0, 0))


def test_chance_level_counts_the_classes_the_probe_can_predict():
    assert chance_level([[0], [1], [], [2, 3]]) == pytest.approx(1 / 3)
    assert math.isnan(chance_level([[], []]))


def test_fit_matches_a_hand_computation():
    s = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]], dtype=np.float16)
    t = np.array([[1.0, 1.0], [0.0, 1.0], [3.0, 4.0]], dtype=np.float16)
    # cosines 1/sqrt(2), 1, 1; squared errors 1, 1, 0 over teacher energies 2, 1, 25
    want = {"cosine": (1 / math.sqrt(2) + 2) / 3, "rel_sq_error": 2 / 28, "n": 3}
    for chunk in (1, 2, 1000):
        got = evallib.fit(s, t, chunk=chunk)
        assert got["n"] == 3 and got["cosine"] == pytest.approx(want["cosine"], abs=1e-12)
        assert got["rel_sq_error"] == pytest.approx(want["rel_sq_error"], abs=1e-12)
    assert evallib.fit(np.zeros((1, 2)), np.ones((1, 2)))["cosine"] == 0.0
    with pytest.raises(ValueError, match="same images"):
        evallib.fit(s, t[:2])


def _results(run: Path, top1: dict[str, tuple[int, int]], fit: dict | None = None, spaces: dict | None = None) -> Path:
    sets = {}
    for name, (correct, n) in top1.items():
        sets[name] = {"top1": correct / n, "correct": correct, "n": n, "ci95": list(wilson(correct, n)),
                      "chance": 0.1, "projection": "none", "source": name, "label_space": (spaces or {}).get(name, name)}
        if fit:
            sets[name]["fit"] = fit[name]
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({"sets": sets, "train": None, "encoder": "x"}))
    return run


def test_summary_gaps_drop_ratio_and_the_check(tmp_path):
    teacher = _results(tmp_path / "teacher", {"imagenet-val": (98, 100), "imagenet-r": (80, 100), "imagenet-a": (60, 80)})
    student = _results(tmp_path / "student", {"imagenet-val": (90, 100), "imagenet-r": (60, 100), "imagenet-a": (40, 80)})
    summary = reportlib.summarize([teacher, student])
    s = summary["runs"][1]
    assert summary["ood_sets"] == ["imagenet-r", "imagenet-a"] and summary["teacher"] == "teacher"
    assert s["id_gap"] == pytest.approx(0.08) and s["ood_avg"] == pytest.approx((0.6 + 0.5) / 2)
    assert s["ood_gap"] == pytest.approx((0.8 + 0.75) / 2 - 0.55) and s["drop_ratio"] == pytest.approx(0.225 / 0.08)
    check = reportlib.check_finding(summary)
    assert check["holds"] and check["id_gap_ok"] and check["ood_gap_ok"]
    table = reportlib.comparison_table(summary, {"imagenet-r": "r-like", "imagenet-a": "a-like"}).splitlines()
    assert table[0].startswith("| run | ID | r-like | a-like | OOD avg | ΔID | ΔOOD | ΔOOD ÷ ΔID |")
    assert "| 98.0 (93.0–99.4) |" in table[2] and "+0.0" in table[2] and "| -8.0 | -22.5 | 2.81 |" in table[3]
    assert table[4].startswith("| n | 100 | 100 | 80 |") and table[5].startswith("| chance | 10.0 |")
    better_id = _results(tmp_path / "better", {"imagenet-val": (99, 100), "imagenet-r": (60, 100), "imagenet-a": (40, 80)})
    summary = reportlib.summarize([teacher, better_id])
    assert summary["runs"][1]["drop_ratio"] is None and reportlib.check_finding(summary)["holds"]
    assert "| +1.0 | -22.5 | ∞ |" in reportlib.comparison_table(summary)
    weak = _results(tmp_path / "weak", {"imagenet-val": (85, 100), "imagenet-r": (50, 100), "imagenet-a": (30, 80)})
    failed = reportlib.check_finding(reportlib.summarize([teacher, weak]))
    assert not failed["holds"] and not failed["id_gap_ok"]  # 13 points behind on ID


def test_compare_computes_every_gap_over_the_shared_sets_and_names_the_others(tmp_path, capsys):
    # the identical model scored on {val, r, sketch} (T) and with --sets imagenet-val,imagenet-r (S);
    # before: S's OOD average 25.0 against T's 50.0, ΔOOD -25.0, ΔOOD ÷ ΔID ∞
    t = _results(tmp_path / "T", {"imagenet-val": (60, 100), "imagenet-r": (25, 100), "imagenet-sketch": (75, 100)})
    s = _results(tmp_path / "S", {"imagenet-val": (60, 100), "imagenet-r": (25, 100)})
    summary = reportlib.summarize([t, s])
    assert summary["ood_sets"] == ["imagenet-r"]
    assert [r["ood_avg"] for r in summary["runs"]] == [0.25, 0.25]
    assert summary["runs"][1]["id_gap"] == 0 and summary["runs"][1]["ood_gap"] == 0
    assert summary["notes"] == ["note: imagenet-sketch is not in S; left out of every figure (gaps and OOD "
                                "averages are over the sets all runs share)"]
    bases = [_results(tmp_path / f"B{i}", {"imagenet-val": (id_, 100), "imagenet-r": (r, 100), "imagenet-a": (5, 100)})
             for i, (id_, r) in enumerate([(40, 10), (80, 50)])]
    with_bases = reportlib.summarize([t, s], bases)  # the baselines' trend over imagenet-r alone, too
    assert with_bases["ood_sets"] == ["imagenet-r"] and len(with_bases["notes"]) == 2
    assert with_bases["runs"][0]["eff_robustness"] == with_bases["runs"][1]["eff_robustness"] is not None
    assert main(["eval", "--compare", str(t), str(s)]) == 0
    out = capsys.readouterr().out
    assert "| S | 60.0 (50.2–69.1) | 25.0 (17.5–34.3) | 25.0 | +0.0 | +0.0 | — |" in out
    assert "sketch" not in out.splitlines()[0] and "imagenet-sketch is not in S" in out


def test_compare_leaves_out_a_set_scored_in_another_label_space_and_refuses_for_id(tmp_path, capsys):
    t = _results(tmp_path / "T", {"imagenet-val": (60, 100), "imagenet-r": (25, 100), "imagenet-a": (10, 100)},
                 spaces={"imagenet-r": "r200"})
    s = _results(tmp_path / "S", {"imagenet-val": (60, 100), "imagenet-r": (90, 100), "imagenet-a": (10, 100)},
                 spaces={"imagenet-r": "r10"})  # a 10-class conversion of R under the same name
    summary = reportlib.summarize([t, s])
    assert summary["ood_sets"] == ["imagenet-a"] and summary["runs"][1]["ood_gap"] == 0
    assert summary["notes"][0].startswith("note: imagenet-r was scored in different label spaces (T: r200, S: r10)")
    u = _results(tmp_path / "U", {"imagenet-val": (60, 100)}, spaces={"imagenet-val": "val10"})
    assert main(["eval", "--compare", str(t), str(u)]) == 1
    err = capsys.readouterr().err
    assert "imagenet-val was scored in different label spaces" in err and "Traceback" not in err


def test_a_set_is_its_meta_json_not_its_folder_name(val_sources, tmp_path, capsys):
    import shutil

    folder, shards, _, meta = val_sources
    twice = tmp_path / "twice"
    shutil.copytree(shards, twice / "imagenet-val")
    shutil.copytree(shards, twice / "my-val-copy")
    probe = tmp_path / "probe.pt"
    save_probe(probe, *init_head(32, len(meta["classes"]), 0), {"classes": meta["classes"]})
    common = ["eval", "--encoder", "tiny", "--weights", str(_tiny_weights(tmp_path / "tiny.pt", 0)), "--probe",
              str(probe), "--cache", str(tmp_path / "cache"), "--workers", "1"]
    assert main([*common, "--shards", str(twice), "--out", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert f"{twice / 'imagenet-val'} and {twice / 'my-val-copy'} both hold imagenet-val" in err
    assert not (tmp_path / "a").exists()
    shutil.rmtree(twice / "imagenet-val")  # the renamed copy alone is scored as the set it holds
    assert main([*common, "--shards", str(twice), "--sets", "imagenet-val", "--out", str(tmp_path / "b")]) == 0
    assert f"{twice / 'my-val-copy'} holds imagenet-val (its meta.json); scored as imagenet-val" in capsys.readouterr().err
    results = json.loads((tmp_path / "b" / "results.json").read_text())["sets"]
    assert list(results) == ["imagenet-val"] and results["imagenet-val"]["n"] == 100
    assert main([*common, "--val", str(folder), "--out", str(tmp_path / "c")]) == 0  # the same set from its folder
    from_folder = json.loads((tmp_path / "c" / "results.json").read_text())["sets"]["imagenet-val"]
    assert from_folder["label_space"] == results["imagenet-val"]["label_space"]
    assert reportlib.summarize([tmp_path / "b", tmp_path / "c"])["runs"][1]["id_gap"] == 0


def test_demo_report_says_what_it_is_and_carries_every_figure(tmp_path):
    from fastfc.demo import REAL_RUNS, STAND_INS, DemoRecipe, report

    fit = {n: {"cosine": 0.9, "rel_sq_error": 0.2, "n": 100} for n in ("imagenet-val", "imagenet-sketch")}
    _results(tmp_path / "teacher", {"imagenet-val": (98, 100), "imagenet-sketch": (40, 80)})
    _results(tmp_path / "student", {"imagenet-val": (95, 100), "imagenet-sketch": (20, 80)}, fit)
    text = report(tmp_path, DemoRecipe())
    assert "small-scale demonstration on stand-in sets" in text and REAL_RUNS in text
    assert "| run | ID | sketch-like |" in text and "The finding holds" in text and "| sketch-like | 0.900 |" in text
    assert (tmp_path / "results.md").read_text() == text
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["check"]["holds"] and data["stand_ins"] == STAND_INS and data["recipe"]["steps"] == DemoRecipe().steps
    student = data["runs"][1]
    assert student["sets"]["imagenet-sketch"]["ci95"] == list(wilson(20, 80))
    assert student["id_gap"] == pytest.approx(0.03) and student["sets"]["imagenet-val"]["fit"]["cosine"] == 0.9
    for png in ("id_vs_ood.png", "fit_vs_top1.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- representation fit

def test_a_student_equal_to_its_teacher_fits_perfectly_and_teacher_embeddings_are_cached(val_sources, small_beton,
                                                                                           tmp_path):
    _, shards, _, meta = val_sources
    teacher, twin, other = build_teacher("tiny"), build_student("tiny", seed=0), build_student("tiny", seed=1)
    twin.visual.load_state_dict(teacher.visual.state_dict())
    weight, bias = init_head(32, len(meta["classes"]), 0)
    kw = {"teacher": teacher, "train": small_beton, "batch_size": 16, "num_workers": 1}
    same = evallib.evaluate(twin, weight, bias, meta["classes"], {"imagenet-val": shards}, tmp_path, **kw)
    for entry in (same["sets"]["imagenet-val"], same["train"]):
        assert entry["fit"]["cosine"] == pytest.approx(1.0, abs=1e-6) and entry["fit"]["rel_sq_error"] == 0.0
    assert same["train"]["n"] == 300 and same["fingerprints"]["teacher"] == same["fingerprints"]["encoder"]
    caches = sorted(p.name for p in tmp_path.iterdir())
    differs = evallib.evaluate(other, weight, bias, meta["classes"], {"imagenet-val": shards}, tmp_path, **kw)
    f = differs["sets"]["imagenet-val"]["fit"]
    assert f["cosine"] < 0.99 and f["rel_sq_error"] > 0.01 and f["n"] == 100
    assert len(list(tmp_path.iterdir())) == len(caches) + 2  # only the new student's two extractions


def _tiny_weights(path: Path, seed: int) -> Path:
    torch.save(build_student("tiny", seed=seed).visual.state_dict(), path)
    return path


def test_cli_fit_under_two_ranks_equals_one_process(val_sources, small_beton, tmp_path):
    _, shards, _, meta = val_sources
    probe = tmp_path / "probe.pt"
    save_probe(probe, *init_head(32, len(meta["classes"]), 0), {"classes": meta["classes"]})
    args = ["eval", "--encoder", "tiny", "--weights", str(_tiny_weights(tmp_path / "s.pt", 1)), "--probe", str(probe),
            "--shards", str(shards.parent), "--train", str(small_beton), "--teacher-encoder", "tiny",
            "--teacher-weights", str(_tiny_weights(tmp_path / "t.pt", 2)), "--batch-size", "8", "--workers", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    results = {}
    for ranks in (1, 2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}", "-m",
               "fastfc", *args, "--cache", str(tmp_path / f"cache{ranks}"), "--out", str(tmp_path / f"run{ranks}")]
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        results[ranks] = json.loads((tmp_path / f"run{ranks}" / "results.json").read_text())
    for key in ("train", "imagenet-val"):
        one, two = (results[r]["train"] if key == "train" else results[r]["sets"][key] for r in (1, 2))
        assert one["n"] == two["n"] == one["fit"]["n"] == two["fit"]["n"] and one["n"] in (100, 300)
        assert two["fit"]["cosine"] == pytest.approx(one["fit"]["cosine"], abs=1e-3)
        assert two["fit"]["rel_sq_error"] == pytest.approx(one["fit"]["rel_sq_error"], rel=1e-2)
        assert 0 < one["fit"]["rel_sq_error"] and one["fit"]["cosine"] < 1


def test_a_second_eval_into_the_same_out_is_refused_and_the_first_ones_files_stay(val_sources, tmp_path, capsys):
    import socket

    from fastfc.atomic import output_lock

    folder, _, _, meta = val_sources
    probe = tmp_path / "probe.pt"
    save_probe(probe, *init_head(32, len(meta["classes"]), 0), {"classes": meta["classes"]})
    out = tmp_path / "run"
    argv = ["eval", "--encoder", "tiny", "--weights", str(_tiny_weights(tmp_path / "tiny.pt", 0)), "--probe",
            str(probe), "--cache", str(tmp_path / "cache"), "--workers", "1", "--val", str(folder), "--out", str(out)]
    assert main(argv) == 0
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(first) == ["results.json", "results.md"]  # the lock is gone with its eval
    capsys.readouterr()
    with output_lock(out):  # this test process: another eval, still writing `out`
        assert main(argv) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and f"{out}: another process ({os.getpid()}@{socket.gethostname()}) is writing it" in errors[0]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first  # the refused eval wrote nothing


def test_under_two_ranks_a_held_out_is_refused_by_every_rank(val_sources, tmp_path):
    from fastfc.atomic import output_lock

    folder, _, _, meta = val_sources
    probe = tmp_path / "probe.pt"
    save_probe(probe, *init_head(32, len(meta["classes"]), 0), {"classes": meta["classes"]})
    out = tmp_path / "run"
    out.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "fastfc", "eval",
           "--encoder", "tiny", "--probe", str(probe), "--cache", str(tmp_path / "cache"), "--workers", "1",
           "--val", str(folder), "--out", str(out)]
    with output_lock(out):  # another eval, still writing `out`
        done = subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                              text=True, timeout=300)
        assert [p.name for p in out.iterdir()] == [".fastfc.lock"]  # ours: the refused eval wrote nothing
    said = [l for l in done.stderr.splitlines() if l.startswith("fastfc eval: error:")]
    assert done.returncode == 1 and len(said) == 2 and f"{out}: another process" in said[1]  # rank 1 too, not left waiting


def test_under_two_ranks_a_cache_being_filled_is_refused_by_every_rank(val_sources, tmp_path):
    from fastfc.atomic import output_lock

    folder = val_sources[0]
    weights = _tiny_weights(tmp_path / "tiny.pt", 0)
    cmd = [sys.executable, "-m", "fastfc", "features", "--encoder", "tiny", "--weights", str(weights),
           "--cache", str(tmp_path / "cache"), "--workers", "1", str(folder)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=True)
    [cache] = (tmp_path / "cache").iterdir()
    (cache / "meta.json").unlink()  # the record is written last: a cache still being filled
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"] + cmd[1:]
    with output_lock(cache):  # another command, still filling it
        done = subprocess.run(two, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    said = [l for l in done.stderr.splitlines() if l.startswith("fastfc features: error:")]
    assert done.returncode == 1 and len(said) == 2 and f"{cache}: another process" in said[1]  # rank 1 too
    assert not (cache / "meta.json").exists()


def test_cli_eval_normalises_the_features_of_a_probe_trained_on_normalised_ones(val_sources, tmp_path):
    """A probe whose record says ``recipe.normalize`` (trained from a zero-shot head, as the original's
    ``ClassificationHead(normalize=True)``) is scored on L2-normalised features; one without, on raw."""
    folder, _, _, meta = val_sources
    weights = _tiny_weights(tmp_path / "tiny.pt", 0)
    w, _ = init_head(32, len(meta["classes"]), 0)
    bias = torch.linspace(-0.5, 0.5, len(meta["classes"]))  # of the order of w @ x / |x|: normalising matters
    feats = extract(build_teacher("tiny", weights=weights), folder, tmp_path / "cache", batch_size=16, num_workers=1)
    x = feats.features.astype(np.float64)
    columns, _ = evallib.set_columns(folder, meta["classes"])  # the folder's labels: its own classes
    expected = {}
    for normalize in (True, False):
        inputs = x / np.linalg.norm(x, axis=1, keepdims=True) if normalize else x
        logits = torch.from_numpy(inputs @ w.double().numpy().T + bias.double().numpy())
        expected[normalize] = evallib.score(logits, torch.from_numpy(np.asarray(feats.labels)), columns)
        probe = tmp_path / f"probe_{normalize}.pt"
        save_probe(probe, w, bias, {"classes": meta["classes"], "recipe": {"normalize": normalize}})
        assert main(["eval", "--encoder", "tiny", "--weights", str(weights), "--probe", str(probe), "--cache",
                     str(tmp_path / "cache"), "--workers", "1", "--val", str(folder), "--out", str(tmp_path / str(normalize))]) == 0
        results = json.loads((tmp_path / str(normalize) / "results.json").read_text())
        assert results["normalized_features"] is normalize
        assert results["sets"]["imagenet-val"]["correct"] == expected[normalize], normalize
    assert expected[True] != expected[False]  # the data tell the two apart
