"""dsr_tune: train compact CNNs directly with dynamic sparse reparameterization.

Layers, each knowing only the one below: ``sparse`` (masks and methods, torch
only), ``models`` and ``data``, ``train`` (the pure PyTorch recipe), and the
command line in ``cli``.
"""

__version__ = "0.1.0"
