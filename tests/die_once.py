"""Run under ``torchrun --max-restarts N`` by tests/test_relaunch.py: ``fastfc distill`` whose rank 1
dies (exit 1, no cleanup) right after the checkpoint of step 4 on the first launch only, like a
crashed worker; torchrun then restarts every worker with TORCHELASTIC_RESTART_COUNT=1."""

import os
import sys

from fastfc.checkpoint import Checkpointer
from fastfc.cli import main

if __name__ == "__main__":
    save = Checkpointer.save

    def save_then_die(self, model, optimizer, *, step, epoch):
        save(self, model, optimizer, step=step, epoch=epoch)
        if step == 4 and self.rt.rank == 1 and os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0":
            os._exit(1)

    Checkpointer.save = save_then_die
    sys.exit(main(sys.argv[1:]))
