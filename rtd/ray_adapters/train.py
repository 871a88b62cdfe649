"""RTD and LinCIR-phi training on Ray Train (V2 API) with Ray Data ingest.

Driver (:func:`run_training`): read + validate the data with Ray Data and count bad rows per reason; fill the
frozen-embedding cache with Ray Data batch inference (RTD); tokenize in ``map_batches``; build a
``TorchTrainer`` (:func:`build_trainer`) whose ``ScalingConfig`` / ``RunConfig`` / ``CheckpointConfig`` /
``FailureConfig`` come from the pydantic config; ``fit()``; write ``summary.json`` and ``loss_curve.png``.

Worker (:func:`train_fn_per_worker`): re-validate the config, build the encoders under a fixed seed (same frozen
tower and fingerprint on every rank), wrap the dataset shard as a batch source and call the plain-PyTorch
:func:`rtd.train.loop.fit` with Ray hooks: DDP through ``ray.train.torch.prepare_model`` on the trainable module
only (the RTD text tower, or phi), :class:`~rtd.ray_adapters.reporting.RayReporter`, and the checkpoint from
``ray.train.get_checkpoint()`` (worker restart after a failure, or a re-run with the same ``run.name``).

Resources: every worker asks for ``scaling.cpus_per_worker`` (default 0.5) CPUs, and Data tasks ask for
``DATA_TASK_CPUS``; whole CPUs per worker starve Ray Data on small machines (ENV.md 2b) and the run hangs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from rtd.model.backends import MODEL_INIT_SEED
from rtd.config import PhiTrainConfig, TrainConfig, atomic_write_text, dump_config
from rtd.ray_adapters.data import (
    DATA_TASK_CPUS,
    IngestStats,
    RayBatchSource,
    count_rows,
    read_rows,
    tokenize_phi,
    tokenize_rtd,
    triplet_fields,
    unique_texts,
)
from rtd.ray_adapters.reporting import MetricsCallback, RayReporter, is_local_path

__all__ = ["train_fn_per_worker", "build_trainer", "run_training", "worker_payload", "config_from_payload",
           "ensure_ray", "run_dir_of", "cache_root_of", "TrainingSummary"]

logger = logging.getLogger(__name__)

TrainingSummary = dict[str, Any]


# --------------------------------------------------------------------------------------------------- payload


def worker_payload(cfg: TrainConfig | PhiTrainConfig, runtime: dict[str, Any]) -> dict[str, Any]:
    """The plain dict that crosses into Ray: the config as JSON plus driver-computed runtime facts."""
    return {"kind": "train" if isinstance(cfg, TrainConfig) else "phi", "config": cfg.model_dump(mode="json"),
            "runtime": runtime}


def config_from_payload(payload: dict[str, Any]) -> TrainConfig | PhiTrainConfig:
    """Re-validate the config inside the worker (also covers Tune-sampled values)."""
    from rtd.config import validate_config

    kind = payload.get("kind")
    if kind not in ("train", "phi"):
        raise ValueError(f"train_loop_config kind must be 'train' or 'phi', got {kind!r}")
    cls = TrainConfig if kind == "train" else PhiTrainConfig
    return validate_config(cls, payload["config"], source="train_loop_config")


def run_dir_of(cfg: TrainConfig | PhiTrainConfig) -> str:
    """``<storage_path>/<name>``: where Ray keeps the run's checkpoints and we keep its metrics."""
    return cfg.run.storage_path.rstrip("/") + "/" + cfg.run.name


def cache_root_of(cfg: TrainConfig) -> str:
    if cfg.data.cache_dir:
        return cfg.data.cache_dir
    if not is_local_path(cfg.run.storage_path):
        raise ValueError("the frozen-embedding cache needs a local or shared folder: set data.cache_dir when "
                         f"run.storage_path is a URI ({cfg.run.storage_path})")
    return str(Path(cfg.run.storage_path) / "frozen_cache")


def _absolute_storage(cfg: TrainConfig | PhiTrainConfig) -> TrainConfig | PhiTrainConfig:
    sp = cfg.run.storage_path
    if is_local_path(sp) and not sp.startswith("file://"):
        sp = str(Path(sp).expanduser().resolve())
    upd: dict[str, Any] = {"run": cfg.run.model_copy(update={"storage_path": sp})}
    d = cfg.data
    paths = [str(Path(p).resolve()) if is_local_path(p) and Path(p).exists() else p for p in d.paths]
    dupd: dict[str, Any] = {"paths": paths}
    if d.cache_dir and is_local_path(d.cache_dir):
        dupd["cache_dir"] = str(Path(d.cache_dir).expanduser().resolve())
    upd["data"] = d.model_copy(update=dupd)
    # Workers and Tune trials do not run in the driver's directory: every local file the config names is made
    # absolute here (projector and text checkpoints, extra model-config folder).
    def _abs(p: str | None) -> str | None:
        return str(Path(p).expanduser().resolve()) if p and is_local_path(p) and Path(p).exists() else p

    upd["projector"] = cfg.projector.model_copy(update={"checkpoint": _abs(cfg.projector.checkpoint)})
    upd["model"] = cfg.model.model_copy(update={"text_checkpoint": _abs(cfg.model.text_checkpoint),
                                                "model_config_dir": _abs(cfg.model.model_config_dir)})
    if cfg.validation.data_dir and Path(cfg.validation.data_dir).exists():
        upd["validation"] = cfg.validation.model_copy(update={"data_dir": str(Path(cfg.validation.data_dir).resolve())})
    return cfg.model_copy(update=upd)


# --------------------------------------------------------------------------------------------------- worker


def _make_validate(cfg: TrainConfig | PhiTrainConfig):
    v = cfg.validation
    if v.benchmark == "none":
        return None

    def validate(encoder) -> dict[str, float]:
        from rtd.eval.evaluate import evaluate_text_proxy

        kw = {"data_dir": v.data_dir} if v.data_dir else {}
        res = evaluate_text_proxy(encoder, v.benchmark, max_queries=v.max_queries, **kw)
        return {f"val/{k}": float(x) for k, x in res.items()}

    return validate


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 over the module's parameters (names, shapes, bytes): equal digests = identical replicas."""
    h = hashlib.sha256()
    for name, p in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def train_fn_per_worker(cfg_dict: dict[str, Any]) -> None:
    """Ray Train worker entry point (``train_loop_per_worker``).

    Args:
        cfg_dict: :func:`worker_payload` output: ``{"kind", "config", "runtime"}``; ``runtime`` holds the ingest
            counts, steps per epoch, the frozen fingerprint and cache root computed by the driver.
    """
    cfg = config_from_payload(cfg_dict)
    import ray.train
    import ray.train.torch

    from rtd.model.checkpoint import unwrap
    from rtd.ray_adapters.cache import build_bundle
    from rtd.train.loop import RunContext, fit

    rt = cfg_dict["runtime"]
    tctx = ray.train.get_context()
    rank, world = tctx.get_world_rank(), tctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu" and os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))
    is_rtd = isinstance(cfg, TrainConfig)
    bundle = build_bundle(cfg.model, cfg.prompts.placeholder, MODEL_INIT_SEED, device=device)
    if rt.get("fingerprint") and bundle.fingerprint != rt["fingerprint"]:
        raise RuntimeError(f"rank {rank}: frozen encoder fingerprint {bundle.fingerprint} differs from the driver's "
                           f"{rt['fingerprint']} (different weights or library versions on this node)")
    cache = None
    if is_rtd and cfg.data.use_cache:
        from rtd.train.cache import FrozenEmbeddingCache

        cache = FrozenEmbeddingCache(rt["cache_root"], bundle.fingerprint)
    stats = IngestStats.from_dict(rt["stats"])
    source = RayBatchSource(
        ray.train.get_dataset_shard("train"), "rtd" if is_rtd else "phi", cfg.data.batch_size, rt["steps_per_epoch"],
        stats, cache=cache, refined=bool(is_rtd and cfg.rtd.refined_batch_sampling), seed=cfg.run.seed, rank=rank,
        shuffle_buffer=rt.get("shuffle_buffer", 0), read_ahead=cfg.data.read_ahead_batches)
    val_on = cfg.validation.benchmark != "none"
    reporter = RayReporter(rank, cfg.validation.metric if val_on else None, cfg.validation.mode)
    # HF sentence encoders carry a pooler that mean pooling never uses; DDP must be told.
    find_unused = is_rtd and cfg.model.backend == "hf_text"
    wrapped: dict[str, torch.nn.Module] = {}

    def prepare(module: torch.nn.Module) -> torch.nn.Module:
        m = ray.train.torch.prepare_model(module, parallel_strategy="ddp",
                                          parallel_strategy_kwargs={"find_unused_parameters": find_unused})
        wrapped["model"] = m
        return m

    run_dir = Path(rt["local_run_dir"])
    ctx = RunContext(rank=rank, world_size=world, device=device, prepare_model=prepare, batch_source=source,
                     reporter=reporter, validate=_make_validate(cfg), run_dir=run_dir, bundle=bundle)
    t0 = time.perf_counter()
    res = fit(cfg, ctx)
    logger.info("rank %d finished at step %d in %.1fs (%d reports)", rank, res.step, time.perf_counter() - t0,
                reporter.reports)
    if rt.get("dump_weights_digest") and "model" in wrapped:
        out = run_dir / "weights_digest"
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / f"rank{rank}.json", json.dumps(
            {"rank": rank, "step": res.step, "digest": weights_digest(unwrap(wrapped["model"])),
             "reports": reporter.reports}))


# --------------------------------------------------------------------------------------------------- driver


def ensure_ray(num_cpus: int | None = None) -> None:
    """Connect to the cluster in ``RAY_ADDRESS`` (``ray job submit`` sets it) or start a local one."""
    import ray

    if ray.is_initialized():
        return
    from ray.data import DataContext

    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
    else:
        ray.init(num_cpus=num_cpus)
    DataContext.get_current().enable_progress_bars = False


def build_trainer(cfg: TrainConfig | PhiTrainConfig, datasets: dict[str, Any], runtime: dict[str, Any],
                  extra_callbacks: list[Any] | None = None):
    """A ``TorchTrainer`` for ``cfg`` over ``datasets`` (``{"train": Dataset}``).

    ``ScalingConfig(num_workers, use_gpu, resources_per_worker={"CPU": cpus_per_worker, "GPU": ...},
    accelerator_type)``, ``RunConfig(name, storage_path, checkpoint_config, failure_config, callbacks)``,
    ``CheckpointConfig(num_to_keep=run.keep_checkpoints, checkpoint_score_attribute=validation.metric when
    validation is on)``, ``FailureConfig(max_failures=scaling.max_failures)``.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    s = cfg.scaling
    resources: dict[str, float] = {"CPU": s.cpus_per_worker}
    if s.use_gpu:
        resources["GPU"] = s.gpus_per_worker
    scaling = ray.train.ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker=resources,
                                      accelerator_type=s.accelerator_type)
    val_on = cfg.validation.benchmark != "none"
    ckpt = ray.train.CheckpointConfig(
        num_to_keep=cfg.run.keep_checkpoints,
        checkpoint_score_attribute=cfg.validation.metric if val_on else None,
        checkpoint_score_order=cfg.validation.mode)
    run_config = ray.train.RunConfig(
        name=cfg.run.name, storage_path=cfg.run.storage_path, checkpoint_config=ckpt,
        failure_config=ray.train.FailureConfig(max_failures=s.max_failures),
        callbacks=[MetricsCallback(run_dir_of(cfg), cfg.run.steps), *(extra_callbacks or [])])
    data_config = ray.train.DataConfig(datasets_to_split=["train"])
    return TorchTrainer(train_fn_per_worker, train_loop_config=worker_payload(cfg, runtime), scaling_config=scaling,
                        run_config=run_config, datasets=datasets, dataset_config=data_config)


def _local_run_dir(cfg: TrainConfig | PhiTrainConfig) -> Path:
    if is_local_path(cfg.run.storage_path):
        return Path(run_dir_of(cfg).removeprefix("file://"))
    return Path(tempfile.gettempdir()) / "rtd-runs" / cfg.run.name


def prepare_data(cfg: TrainConfig | PhiTrainConfig, fingerprint: str | None = None) -> tuple[Any, dict[str, Any]]:
    """Ray Data side of a run: read + validate (counted), fill the frozen cache (RTD), tokenize.

    Returns:
        (tokenized train Dataset, runtime dict for the workers: stats, steps_per_epoch, fingerprint, cache root).

    Raises:
        BadRowError: ``data.on_bad_rows=fail`` and a bad row exists (file and row named).
        ValueError: fewer valid rows than one global batch.
    """
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False  # one line per report is the progress output
    is_rtd = isinstance(cfg, TrainConfig)
    fields = triplet_fields(cfg.data.fields) if is_rtd else {"caption": cfg.data.fields.reference}
    t0 = time.perf_counter()
    rows = read_rows(cfg.data, fields, shuffle_files=cfg.data.shuffle)
    stats = count_rows(rows)
    if stats.bad:
        logger.warning("data: %d of %d rows are bad and skipped: %s", sum(stats.bad.values()), stats.read,
                       dict(stats.bad))
    W, B = cfg.scaling.num_workers, cfg.data.batch_size
    per_epoch = (stats.kept // W) // B
    if per_epoch < 1:
        raise ValueError(f"{stats.kept} valid rows are fewer than one global batch ({B} x {W} workers)")
    logger.info("data: %d rows read, %d kept, %d steps per epoch (%.1fs)", stats.read, stats.kept, per_epoch,
                time.perf_counter() - t0)
    runtime: dict[str, Any] = {"stats": stats.to_dict(), "steps_per_epoch": per_epoch,
                               "local_run_dir": str(_local_run_dir(cfg)),
                               "shuffle_buffer": max(4 * B, 256) if cfg.data.shuffle else 0}
    if is_rtd:
        if cfg.data.hard_negatives.mode != "off":
            logger.warning("data.hard_negatives=%s is applied by the local trainer (rtd.train.loop); the Ray "
                           "streaming path keeps random batches", cfg.data.hard_negatives.mode)
        if cfg.data.use_cache:
            from rtd.ray_adapters.cache import fill_cache_ray, frozen_fingerprint

            fp = fingerprint or frozen_fingerprint(cfg.model, cfg.prompts.placeholder, MODEL_INIT_SEED)
            root = cache_root_of(cfg)
            texts = unique_texts(rows, ["reference", "target"])
            runtime.update(fill_cache_ray(texts, cfg.model, cfg.prompts.placeholder, MODEL_INIT_SEED, root, fp,
                                          gpus_per_actor=1.0 if cfg.scaling.use_gpu else 0.0))
            runtime.update(fingerprint=fp, cache_root=root)
        ds = tokenize_rtd(rows, cfg.model, cfg.prompts, cfg.rtd, frozen_ids=not cfg.data.use_cache)
        if _should_materialize(cfg, stats.kept, per_epoch):
            t1 = time.perf_counter()
            ds = ds.materialize()  # tokenization is deterministic: do it once, not once per epoch
            logger.info("data: %d tokenized rows kept in the object store (%.1fs)", stats.kept,
                        time.perf_counter() - t1)
    else:
        if _should_materialize(cfg, stats.kept, per_epoch):
            rows = rows.materialize()  # validated captions once; masks stay fresh each epoch
        ds = tokenize_phi(rows, cfg.model, cfg.prompts, cfg.masking)
    return ds, runtime


def _should_materialize(cfg: TrainConfig | PhiTrainConfig, kept: int, steps_per_epoch: int) -> bool:
    """``data.materialize``: always / never / auto (more than one epoch and an estimated size within
    ``data.materialize_max_mb``)."""
    mode = cfg.data.materialize
    if mode != "auto":
        return mode == "always"
    if cfg.run.steps <= steps_per_epoch:
        return False
    L = cfg.model.context_length or 77
    if isinstance(cfg, TrainConfig):  # int32 ids + int8 mask per sequence, two cleaned texts
        seqs = 1 + int(cfg.rtd.refined_batch_sampling) + (0 if cfg.data.use_cache else 2)
        row_bytes = seqs * L * 5 + 2 * cfg.data.max_chars // 4
    else:
        row_bytes = cfg.data.max_chars // 2
    return kept * row_bytes <= cfg.data.materialize_max_mb * 2**20


def run_training(cfg: TrainConfig | PhiTrainConfig, *, num_cpus: int | None = None,
                 extra_runtime: dict[str, Any] | None = None) -> TrainingSummary:
    """Train on Ray (starting a local Ray when none is running) and return the run summary.

    Re-running with the same ``run.name`` and ``run.storage_path`` resumes from the latest checkpoint.

    Returns:
        The summary also written to ``<run_dir>/summary.json``: final step and metrics, checkpoint paths, the
        ingest counts (rows read/kept, bad rows per reason), cache use and wall time.
    """
    cfg = _absolute_storage(cfg)
    ensure_ray(num_cpus)
    t0 = time.perf_counter()
    local_dir = _local_run_dir(cfg)
    local_dir.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, local_dir, extra_info={"ray_run_dir": run_dir_of(cfg)})
    ds, runtime = prepare_data(cfg)
    runtime.update(extra_runtime or {})
    trainer = build_trainer(cfg, {"train": ds}, runtime)
    result = trainer.fit()
    metrics = dict(result.metrics or {})
    best = None
    if cfg.validation.benchmark != "none" and result.best_checkpoints:
        key = cfg.validation.metric
        pick = max if cfg.validation.mode == "max" else min
        bc, bm = pick(result.best_checkpoints, key=lambda cm: float(cm[1].get(key, float("nan"))))
        best = {"path": bc.path, key: bm.get(key)}
    summary: TrainingSummary = {
        "run_dir": run_dir_of(cfg),
        "final_step": int(metrics.get("step", 0)) or None,
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))},
        "checkpoint": result.checkpoint.path if result.checkpoint else None,
        "best_checkpoint": best,
        "data": {**IngestStats.from_dict(runtime["stats"]).as_metrics(prefix=""),
                 "steps_per_epoch": runtime["steps_per_epoch"]},
        "cache": {k.split("/", 1)[1]: v for k, v in runtime.items() if k.startswith("cache/")},
        "wall_s": round(time.perf_counter() - t0, 2),
    }
    if summary["final_step"] is None and result.checkpoint is not None:
        from rtd.model.checkpoint import load_trainer_state

        with result.checkpoint.as_directory() as d:
            summary["final_step"] = int(load_trainer_state(d)["step"])
    atomic_write_text(local_dir / "summary.json", json.dumps(summary, indent=2, default=str))
    from rtd.train.reporting import plot_metrics

    plot_metrics(local_dir / "metrics.jsonl", local_dir / "loss_curve.png")
    logger.info("run %s done: step %s, %d bad rows skipped, %.1fs", cfg.run.name, summary["final_step"],
                sum(IngestStats.from_dict(runtime["stats"]).bad.values()), summary["wall_s"])
    return summary
