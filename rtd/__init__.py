"""rtd: RTD (Byun et al., ICCV 2025) text-encoder fine-tuning for composed image retrieval, on Ray.

The library under ``rtd/`` is plain PyTorch; Ray appears only in ``rtd/ray_adapters``.
"""

__version__ = "0.1.0"
