"""Pure machine-unlearning library: datasets, models, recorded training, unlearning methods, metrics.

Imports nothing from ``api`` or ``worker`` and needs no server; runs the same on CPU and CUDA.
"""

__version__ = "0.1.0"
