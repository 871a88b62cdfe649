"""Reporters: where metrics and checkpoints go. ``LoggingReporter`` serves local runs and tests; Ray supplies
``rtd.ray_adapters.reporting.RayReporter`` with the same interface."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any, Protocol

from rtd.model.checkpoint import latest_checkpoint

logger = logging.getLogger(__name__)


class Reporter(Protocol):
    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None = None) -> None: ...

    def latest_checkpoint(self) -> Path | None: ...


def progress_line(m: dict[str, Any], total: int) -> str:
    parts = [f"step {m.get('step', '?')}/{total}"]
    for key, fmt in (("train/loss", "loss {:.4f}"), ("train/lr", "lr {:.2e}"),
                     ("train/samples_per_s", "{:.1f} samples/s"), ("train/data_wait_frac", "data-wait {:.1%}")):
        if key in m and m[key] is not None:
            parts.append(fmt.format(m[key]))
    parts += [f"{k} {v:.2f}" for k, v in m.items() if k.startswith("val/") and isinstance(v, (int, float))]
    return " | ".join(parts)


class LoggingReporter:
    """Appends metrics to ``run_dir/metrics.jsonl``, logs a progress line, keeps checkpoints under
    ``run_dir/checkpoints/checkpoint_<step>`` (newest ``keep`` plus the best by ``metric``), and writes
    ``loss_curve.png`` at :meth:`finish`."""

    def __init__(self, run_dir: str | os.PathLike[str], total_steps: int, keep: int = 2,
                 metric: str | None = None, mode: str = "max"):
        self.run_dir = Path(run_dir)
        self.ckpt_root = self.run_dir / "checkpoints"
        self.ckpt_root.mkdir(parents=True, exist_ok=True)
        self.total, self.keep, self.metric, self.mode = total_steps, keep, metric, mode
        self.best: tuple[float, Path] | None = None
        self._load_best()

    def _best_file(self) -> Path:
        return self.ckpt_root / "best.json"

    def _load_best(self) -> None:
        f = self._best_file()
        if f.is_file():
            d = json.loads(f.read_text())
            if Path(d["path"]).exists():
                self.best = (float(d["value"]), Path(d["path"]))

    def latest_checkpoint(self) -> Path | None:
        return latest_checkpoint(self.ckpt_root)

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None = None) -> None:
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics, default=float) + "\n")
        logger.info(progress_line(metrics, self.total))
        if checkpoint_dir is None:
            return
        dest = self.ckpt_root / f"checkpoint_{int(metrics['step']):09d}"
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(checkpoint_dir, dest)
        val = metrics.get(self.metric) if self.metric else None
        if isinstance(val, (int, float)) and not math.isnan(val):
            better = self.best is None or (val > self.best[0] if self.mode == "max" else val < self.best[0])
            if better:
                self.best = (float(val), dest)
                tmp = self._best_file().with_suffix(".tmp")
                tmp.write_text(json.dumps({"metric": self.metric, "value": val, "path": str(dest),
                                           "step": metrics["step"]}))
                os.replace(tmp, self._best_file())
        self._prune()

    def _prune(self) -> None:
        ckpts = sorted(self.ckpt_root.glob("checkpoint_*"), key=lambda p: int(p.name.split("_")[-1]))
        protect = {self.best[1]} if self.best else set()
        for p in ckpts[: max(0, len(ckpts) - self.keep)]:
            if p not in protect:
                shutil.rmtree(p, ignore_errors=True)

    def finish(self) -> None:
        plot_metrics(self.run_dir / "metrics.jsonl", self.run_dir / "loss_curve.png")


def plot_metrics(metrics_file: Path, out_png: Path, key: str = "train/loss") -> Path | None:
    """Loss curve (and any val/ metric on a second axis) from a metrics.jsonl file."""
    if not metrics_file.is_file():
        return None
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    pts = [(r["step"], r[key]) for r in rows if key in r and "step" in r]
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(*zip(*pts), label=key)
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    vals = sorted({k for r in rows for k in r if k.startswith("val/")})
    if vals:
        ax2 = ax.twinx()
        for k in vals[:3]:
            vp = [(r["step"], r[k]) for r in rows if k in r]
            ax2.plot(*zip(*vp), "o--", label=k)
        ax2.legend(loc="upper right", fontsize=7)
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png
