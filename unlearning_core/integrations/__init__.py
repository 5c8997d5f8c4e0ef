"""Recording from training frameworks (PyTorch Lightning), on top of
:func:`unlearning_core.record_training`. Each integration imports its framework lazily: the
core never needs it installed."""
