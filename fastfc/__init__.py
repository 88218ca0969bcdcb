"""fastfc: fast, trustworthy runs of the Feature Contamination (ICML'24) experiments."""

__version__ = "0.1.0"
