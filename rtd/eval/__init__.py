"""Evaluation: metrics (:mod:`rtd.eval.metrics`), server submissions (:mod:`rtd.eval.submission`) and the
evaluation core (:mod:`rtd.eval.evaluate`).

``evaluate_text_proxy`` and friends are imported lazily so that ``rtd.eval.metrics`` (pure numpy) stays
importable without torch-heavy modules and without import cycles with ``rtd.data.benchmarks``.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "evaluate_text_proxy",
    "evaluate_text_proxy_text_queries",
    "evaluate_text_proxy_tfidf",
    "run_proxy_baselines",
    "evaluate_benchmark",
    "QueryEncoderProtocol",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from rtd.eval import evaluate

        return getattr(evaluate, name)
    raise AttributeError(f"module 'rtd.eval' has no attribute {name!r}")
