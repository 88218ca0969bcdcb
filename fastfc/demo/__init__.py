"""``make demo``: the whole pipeline on real photographs that ship inside packages, on CPU.

The top floor of the library: it may import the one-time converters (``data_prep``); nothing else
in ``fastfc`` does (``tests/test_layers.py``). ``python -m fastfc demo`` / ``fastfc demo`` run
:func:`run`.

* :mod:`fastfc.demo.pipeline`: data, conversion, distillation, probes, evaluation, the report;
* :mod:`fastfc.demo.standins`: the shift-like stand-in sets, one maker per registered set shown;

on the real photographs of :mod:`fastfc.fixtures.photos`.
"""

from fastfc.demo.pipeline import REAL_RUNS, WHAT, DemoRecipe, distill, prepare_data, report, run
from fastfc.demo.standins import SHIFT_DIRS, STAND_INS, make_shift_sets

__all__ = ["REAL_RUNS", "SHIFT_DIRS", "STAND_INS", "WHAT", "DemoRecipe", "distill", "make_shift_sets",
           "prepare_data", "report", "run"]
