"""fastfc: fast, trustworthy runs of the Feature Contamination (ICML'24) experiments."""

__version__ = "0.1.0"

from fastfc.cpus import avoid_tbb_on_one_cpu

avoid_tbb_on_one_cpu()  # before anything imports ffcv: see its docstring
