"""The distillation objective's options, the paper's run configs, and ``--dry-run``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from open_clip.transformer import VisionTransformer

from fastfc.cli import main
from fastfc.distill import DistillTask, ObjectiveConfig, copy_attention, freeze_norm_stats, select_blocks
from fastfc.models import CLIP_MEAN, CLIP_STD, Encoder, build_student

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "launch" / "configs").glob("distill_*.toml"))
# arch, lr, weight decay, epochs (docs/recipe.md)
PAPER = {"RN50": (1e-3, 0.05, 50), "RN101": (1e-3, 0.1, 50), "RN50x4": (1e-4, 0.5, 50),
         "RN50x16": (1e-4, 0.5, 100), "ViT-B-16": (5e-5, 0.1, 300)}


def tiny_vit(seed: int) -> Encoder:
    torch.manual_seed(seed)
    visual = VisionTransformer(image_size=32, patch_size=8, width=32, layers=3, heads=2, mlp_ratio=2.0, output_dim=16)
    return Encoder("tiny-vit", visual, 32, CLIP_MEAN, CLIP_STD, 16, "open_clip")


def test_every_paper_config_dry_runs_with_the_papers_hyperparameters(capsys):
    assert {c.stem for c in CONFIGS} == {"distill_rn50", "distill_rn101", "distill_rn50x4", "distill_rn50x16",
                                         "distill_vit_b16"}
    for path in CONFIGS:
        assert main(["distill", "--config", str(path), "--dry-run"]) == 0
        out = json.loads(capsys.readouterr().out)
        cfg, plan = out["config"], out["plan"]
        lr, wd, epochs = PAPER[cfg["encoder"]["name"]]
        assert (cfg["train"]["lr"], cfg["train"]["weight_decay"], cfg["train"]["epochs"]) == (lr, wd, epochs), path
        assert cfg["train"]["global_batch_size"] == 256 and cfg["train"]["warmup_steps"] == 10_000
        assert cfg["objective"]["distill_weight"] == 0.9 and cfg["teacher"]["pretrained"] == "openai"
        assert plan["per_rank_batch"] == 256 and plan["steps_per_epoch"] == 5_005  # ceil(1,281,167 / 256)
        assert plan["total_steps"] == epochs * 5_005 and plan["lr_first"] == pytest.approx(lr / 10_000)


def test_dry_run_override_and_uneven_world(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert main(["distill", "--config", str(CONFIGS[0]), "--dry-run", "--set", "train.lr=2e-4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["plan"]["per_rank_batch"] == 32 and out["config"]["train"]["lr"] == 2e-4
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert main(["distill", "--config", str(CONFIGS[0]), "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert "fastfc distill: error:" in err and "does not split evenly over 3 ranks" in err and "Traceback" not in err
    monkeypatch.setenv("FASTFC_TRACEBACK", "1")
    with pytest.raises(ValueError, match="does not split evenly over 3 ranks"):
        main(["distill", "--config", str(CONFIGS[0]), "--dry-run"])


def test_vit_hidden_and_attention_terms_add_to_the_loss():
    teacher, student = tiny_vit(0), tiny_vit(1)
    images = torch.randn(4, 3, 32, 32)
    plain = DistillTask(teacher, student, ObjectiveConfig()).loss(images)
    both = DistillTask(teacher, student, ObjectiveConfig(hidden_weight=0.1, attn_weight=0.1, blocks="0,2"), "vit")
    extra = both.loss(images)
    assert extra > plain
    assert both._taps[0].take() == ([], [])  # taps are consumed each step, nothing accumulates
    extra.backward()
    assert student.visual.transformer.resblocks[0].attn.in_proj_weight.grad is not None
    assert select_blocks("last", 12) == [11] and select_blocks("all", 3) == [0, 1, 2]
    with pytest.raises(ValueError, match="0..2"):
        select_blocks("5", 3)


def test_attn_init_copies_the_teachers_attention_weights():
    teacher, student = tiny_vit(0), tiny_vit(1)
    copy_attention(teacher.visual, student.visual, "vit")
    for t, s in zip(teacher.visual.transformer.resblocks, student.visual.transformer.resblocks):
        assert torch.equal(t.attn.in_proj_weight, s.attn.in_proj_weight)
        assert not torch.equal(t.mlp.c_fc.weight, s.mlp.c_fc.weight)  # only attention is copied
    with pytest.raises(ValueError, match="need a ViT"):
        copy_attention(build_student("tiny").visual, build_student("tiny").visual, "tiny")


def test_oracle_norm_stats_freezes_the_students_batchnorm_to_the_teachers():
    teacher, student = build_student("tiny", seed=0), build_student("tiny", seed=1)
    for m in teacher.visual.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
    assert freeze_norm_stats(teacher.visual, student.visual) == 2
    student.visual(torch.randn(8, 3, 32, 32))  # a forward in "training" must not move the stats
    pairs = [(t, s) for t, s in zip(teacher.visual.modules(), student.visual.modules()) if isinstance(s, torch.nn.BatchNorm2d)]
    assert all(torch.equal(t.running_mean, s.running_mean) and not s.training for t, s in pairs)


@pytest.mark.parametrize("script", ["single_node.sh", "multi_node.sh", "slurm.sbatch"])
def test_launchers_are_valid_bash_and_use_the_distill_entry_point(script):
    import subprocess

    path = REPO / "launch" / script
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    text = path.read_text()
    assert "torch.distributed.run" in text and "-m fastfc distill --config" in text


def test_single_node_launcher_runs_a_dry_run(tmp_path):
    import subprocess
    import sys

    done = subprocess.run(["bash", str(REPO / "launch" / "single_node.sh"), str(CONFIGS[0]), "--dry-run"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "NGPU": "2", "PY": sys.executable})
    assert done.returncode == 0, done.stderr[-2000:]
    plan = json.loads(done.stdout[done.stdout.index("{"):])["plan"]  # rank 0 prints, once
    assert plan["world_size"] == 2 and plan["per_rank_batch"] == 128


def test_probe_and_eval_launcher_prints_the_papers_runs():
    import subprocess

    done = subprocess.run(["bash", str(REPO / "launch" / "probe_and_eval.sh"), "ViT-B-16"], cwd=REPO,
                          capture_output=True, text=True, env={**__import__("os").environ, "DRY": "1", "NGPU": "8"})
    assert done.returncode == 0, done.stderr
    lines = [l for l in done.stdout.splitlines() if l.startswith("+ ")]
    assert len(lines) == 5
    assert "--pretrained openai --kind clip" in lines[0] and "--nproc-per-node 8" in lines[0]
    assert "--weights runs/distill_vit_b16/weights.pt --kind distilled" in lines[1]
    assert all("--shards data/shards --train data/imagenet/train" in l for l in lines[2:4])
    assert "eval --compare runs/clip_vit_b16 runs/student_vit_b16" in lines[4]
    from fastfc.cli import build_parser  # every printed command parses with the real CLI
    for line in lines[:4]:
        build_parser().parse_args(line.split(" -m fastfc ")[1].split())


def test_bad_values_and_a_missing_beton_are_named_before_any_work(tmp_path, capsys):
    paper = ["distill", "--config", str(CONFIGS[0])]
    assert main([*paper, "--set", "train.lr=abc", "--dry-run"]) == 1
    assert "train.lr: expected a number, got 'abc'" in capsys.readouterr().err
    assert main([*paper, "--set", "train.max_steps=0", "--dry-run"]) == 1  # 0 used to mean the whole schedule
    assert "train.max_steps must be >= 1" in capsys.readouterr().err
    assert main([*paper, "--set", f"data.train_beton={tmp_path / 'none.beton'}"]) == 1
    err = capsys.readouterr().err  # refused before the openai teacher is built (a download, offline here)
    assert "none.beton: no such beton" in err and "download" not in err.lower()
