"""Ray Train reporting: :class:`RayReporter` (worker side, the ``Reporter`` that ``fit`` calls) and
:class:`MetricsCallback` (controller side: progress line, ``metrics.jsonl``, ``loss_curve.png``).

Every rank calls ``ray.train.report`` on the same schedule (``fit`` guarantees it; the call is a barrier). Only
rank 0 passes a checkpoint, staged in a private temp folder and deleted once Ray has persisted it. V2 does not
persist metrics-only reports, so the run's metrics are written by the callback, which sees every rank's metrics
(per-worker samples/s, tokens/s, data-wait share) after each report.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from rtd.train.reporting import plot_metrics, progress_line

__all__ = ["RayReporter", "MetricsCallback", "PER_WORKER_KEYS", "is_local_path"]

logger = logging.getLogger(__name__)

PER_WORKER_KEYS = ("train/samples_per_s", "train/tokens_per_s", "train/data_wait_frac", "train/step_time")


def is_local_path(path: str) -> bool:
    return "://" not in str(path) or str(path).startswith("file://")


def _local(path: str) -> str:
    return str(path)[len("file://"):] if str(path).startswith("file://") else str(path)


class RayReporter:
    """``Reporter`` for ``fit`` inside a Ray Train worker.

    Args:
        rank: this worker's world rank.
        score_metric: the checkpoint score attribute (validation metric) or None. Ray ranks checkpoints by it, so
            checkpoint reports without a fresh value carry the last one forward (``-inf``/``inf`` before the first).
        score_mode: ``max`` or ``min``.
    """

    def __init__(self, rank: int, score_metric: str | None = None, score_mode: str = "max"):
        self.rank, self.score_metric, self.score_mode = rank, score_metric, score_mode
        self._last_score: float | None = None
        self._resolved = False
        self._latest: Path | None = None
        self._downloaded: str | None = None
        self.reports = 0
        # Ray Train V2's controller takes one report per worker per poll (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s by
        # default; the worker's result queue holds one), so a report sooner than that blocks the training loop.
        self.min_interval_s = float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2.0"))

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint Ray hands this worker group (after a worker restart or a same-name re-run), as a local
        folder (downloaded once when storage is remote)."""
        if self._resolved:
            return self._latest
        import ray.train

        self._resolved = True
        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return None
        from pyarrow.fs import LocalFileSystem

        if isinstance(ckpt.filesystem, LocalFileSystem) and os.path.isdir(ckpt.path):
            self._latest = Path(ckpt.path)
        else:
            self._downloaded = tempfile.mkdtemp(prefix="rtd-resume-")
            self._latest = Path(ckpt.to_directory(self._downloaded))
        logger.info("rank %d: Ray restored checkpoint %s", self.rank, ckpt.path)
        return self._latest

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None = None) -> None:
        import ray.train

        metrics = dict(metrics)
        if self.score_metric:
            val = metrics.get(self.score_metric)
            if isinstance(val, (int, float)) and not math.isnan(val):
                self._last_score = float(val)
            elif checkpoint_dir is not None or self.rank != 0:
                metrics[self.score_metric] = self._last_score if self._last_score is not None else (
                    -math.inf if self.score_mode == "max" else math.inf)
        ckpt = None
        if checkpoint_dir is not None:
            if self.rank != 0:
                raise RuntimeError("only rank 0 may report a checkpoint (DDP replicas are identical)")
            ckpt = ray.train.Checkpoint.from_directory(str(checkpoint_dir))
        ray.train.report(metrics, checkpoint=ckpt,
                         checkpoint_dir_name=Path(checkpoint_dir).name if checkpoint_dir is not None else None)
        self.reports += 1
        if checkpoint_dir is not None:
            # fit stages checkpoints in a private temp dir; Ray has persisted it (SYNC upload) by now.
            shutil.rmtree(Path(checkpoint_dir).parent, ignore_errors=True)

    def finish(self) -> None:
        if self._downloaded:
            shutil.rmtree(self._downloaded, ignore_errors=True)


def _ensure_log_handler() -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)


def _make_callback_class():
    from ray.train import UserCallback

    class MetricsCallback(UserCallback):
        """Runs in the Ray Train controller after every report.

        Writes one JSON line per report to ``<run_dir>/metrics.jsonl``: rank 0's metrics, the per-worker
        throughput (``workers``: one dict per rank), their sum (``train/samples_per_s_total``) and the attempt
        number; logs the progress line; redraws ``loss_curve.png`` after each checkpoint report.

        Args:
            run_dir: ``<storage_path>/<name>`` (a local path or a URI).
            total_steps: for the progress line.
            summary_extra: fixed fields written into every row (e.g. the ingest counts).
        """

        def __init__(self, run_dir: str, total_steps: int):
            self.run_dir = str(run_dir)
            self.total = total_steps
            self.t0 = time.time()
            self._rows: list[dict[str, Any]] | None = None

        # -- storage
        def _metrics_path(self) -> str:
            return self.run_dir.rstrip("/") + "/metrics.jsonl"

        def _append(self, row: dict[str, Any]) -> None:
            line = json.dumps(row, default=float) + "\n"
            if is_local_path(self.run_dir):
                p = Path(_local(self._metrics_path()))
                p.parent.mkdir(parents=True, exist_ok=True)
                with open(p, "a") as f:
                    f.write(line)
                return
            import pyarrow.fs as pafs

            fs, path = pafs.FileSystem.from_uri(self._metrics_path())
            if self._rows is None:
                try:
                    with fs.open_input_stream(path) as f:
                        self._rows = [f.read().decode()]
                except (FileNotFoundError, OSError):
                    self._rows = []
            self._rows.append(line)
            with fs.open_output_stream(path) as f:
                f.write("".join(self._rows).encode())

        def after_report(self, run_context, metrics, checkpoint) -> None:
            _ensure_log_handler()
            if not metrics:
                return
            m0 = dict(metrics[0])
            workers = [{"rank": i, **{k.split("/", 1)[1]: m.get(k) for k in PER_WORKER_KEYS if k in m}}
                       for i, m in enumerate(metrics)]
            row = {**m0, "workers": workers, "time_s": round(time.time() - self.t0, 3),
                   "train/samples_per_s_total": sum(float(m.get("train/samples_per_s", 0.0)) for m in metrics),
                   "train/tokens_per_s_total": sum(float(m.get("train/tokens_per_s", 0.0)) for m in metrics)}
            if checkpoint is not None:
                row["checkpoint"] = checkpoint.path
            try:
                self._append(row)
            except OSError as e:  # never kill a run over a log file
                logger.warning("cannot append to %s: %s", self._metrics_path(), e)
            line = progress_line(m0, self.total)
            line += f" | {row['train/samples_per_s_total']:.1f} samples/s total over {len(metrics)} workers"
            bad = sum(int(v) for k, v in m0.items() if k.startswith("data/bad_rows/"))
            if bad:
                line += f" | {bad} bad rows skipped"
            logger.info("%s", line)
            if checkpoint is not None and is_local_path(self.run_dir):
                try:
                    plot_metrics(Path(_local(self._metrics_path())), Path(_local(self.run_dir)) / "loss_curve.png")
                except Exception as e:  # plotting is best-effort
                    logger.warning("loss curve not written: %s", e)

        def after_exception(self, run_context, worker_exceptions) -> None:
            _ensure_log_handler()
            for rank, exc in worker_exceptions.items():
                logger.warning("worker %s failed: %s", rank, str(exc).splitlines()[0] if str(exc) else exc)

    return MetricsCallback


def MetricsCallback(run_dir: str, total_steps: int):  # noqa: N802 - a factory that looks like the class
    """Build the controller-side metrics callback (imports Ray lazily); see the class docstring."""
    return _make_callback_class()(run_dir, total_steps)
