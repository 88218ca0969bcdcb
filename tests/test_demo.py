"""The demo: its data step matches the real datasets' layouts, and a reduced demo runs every stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_prep.shifts import list_set, read_imagenet_classes
from fastfc.demo import SHIFT_DIRS, DemoRecipe, make_shift_sets, run
from fastfc.fixtures.photos import IMAGENETTE_WNIDS

IMAGENET = read_imagenet_classes()


def test_shift_like_sets_use_the_real_layouts_and_label_rules(tmp_path):
    sets = make_shift_sets(tmp_path, per_class=2)
    v2 = list_set("imagenet-v2", sets["imagenet-v2"], IMAGENET)
    folders = sorted(p.name for p in sets["imagenet-v2"].iterdir())
    assert all(f.isdigit() for f in folders)  # integer folders, label = int(folder)
    assert sorted(set(v2.labels)) == sorted(IMAGENET.index(w) for w in IMAGENETTE_WNIDS)
    for name in ("imagenet-r", "imagenet-a"):
        listing = list_set(name, sets[name], IMAGENET)
        assert listing.classes == sorted(IMAGENETTE_WNIDS) and len(listing.files) == 20
    assert any("." in Path(f).stem for f in list_set("imagenet-a", sets["imagenet-a"], IMAGENET).files)
    objectnet = list_set("objectnet", sets["objectnet"], IMAGENET)  # the real mapping-file code path
    assert len(objectnet.classes) == 10 and objectnet.dropped == {"air_freshener": 2}
    assert sorted(i for ix in objectnet.imagenet_indices for i in ix) == sorted(IMAGENET.index(w) for w in IMAGENETTE_WNIDS)
    assert list_set("imagenet-sketch", sets["imagenet-sketch"], IMAGENET).classes == IMAGENET


@pytest.mark.slow
def test_reduced_demo_runs_every_stage_with_exact_counts(tmp_path):
    recipe = DemoRecipe(steps=3, seed=1)
    text = run(tmp_path, recipe=recipe, train_per_class=4, val_per_class=2, shift_per_class=2)
    summary = json.loads((tmp_path / "distill" / recipe.key() / "summary.json").read_text())
    assert summary["step"] == 3 and len(summary["replica_checksums"]) == 2  # torchrun, 2 ranks
    assert summary["replica_checksums"][0] == summary["replica_checksums"][1]
    for run_name in ("teacher", "student"):
        results = json.loads((tmp_path / run_name / "results.json").read_text())
        assert set(results["sets"]) == {"imagenet-val", *SHIFT_DIRS} and results["train"]["n"] == 40
        for name in ("imagenet-val", *SHIFT_DIRS):
            meta = json.loads((tmp_path / "data" / "shards" / name / "meta.json").read_text())
            assert results["sets"][name]["n"] == meta["count"] == 20, name  # ID read from shards, like OOD
            assert ("fit" in results["sets"][name]) == (run_name == "student")
    data = json.loads((tmp_path / "results.json").read_text())
    assert [r["name"] for r in data["runs"]] == ["teacher", "student"] and data["recipe"]["seed"] == 1
    assert set(data["check"]) >= {"id_gap", "ood_gap", "drop_ratio", "holds", "criterion"}
    assert data["runs"][1]["train"]["fit"]["n"] == 40
    assert "small-scale demonstration on stand-in sets" in text and "| a-like |" in text
    assert (tmp_path / "id_vs_ood.png").is_file() and (tmp_path / "fit_vs_top1.png").is_file()
    assert data["runs"][0]["sets"]["imagenet-val"]["top1"] > 0.5  # real ImageNet weights on real photographs
