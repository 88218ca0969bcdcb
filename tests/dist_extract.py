"""Run under torchrun by tests/test_probe.py: extract embeddings with every rank, report counts."""

import json
import sys
from pathlib import Path

import torch.distributed as dist

from fastfc.models import build_student
from fastfc.features import extract
from fastfc.runtime import setup_runtime

if __name__ == "__main__":
    cache, report, *sources = sys.argv[1:]
    rt = setup_runtime()
    encoder = build_student("tiny", seed=3)
    out = {}
    for source in sources:
        f = extract(encoder, source, cache, rt, batch_size=4, num_workers=1)
        out[source] = str(f.path)
    if rt.is_main:
        Path(report).write_text(json.dumps({"world": rt.world_size, "paths": out}))
    if rt.distributed:
        dist.destroy_process_group()
