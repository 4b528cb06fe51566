"""ICPC: input compression with positional consistency for transformer training and inference."""

__version__ = "0.1.0"
