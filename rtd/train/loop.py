"""``fit(cfg, ctx)``: the plain-PyTorch training loop for RTD and for LinCIR phi training.

Frameworks plug in through :class:`RunContext` hooks: ``prepare_model`` (DDP), ``batch_source`` (local lists or
Ray Data), ``reporter`` (local files or ``ray.train.report``), ``resume_from`` and ``validate``. Nothing here
imports Ray.

Schedule (identical on every rank, so every rank reports the same number of times): a report every
``run.log_every`` steps, a checkpoint every ``run.checkpoint_every`` steps and at the last step, a validation every
``validation.every`` steps and at the last step (rank 0 computes it, the value is broadcast). A metric-only report
comes no sooner than ``run.min_report_interval_s`` (default: the reporter's ``min_interval_s``) after the previous
one; the ranks agree on it with one all-reduce, and skipped steps stay in the next report's window.
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from rtd.config import PhiTrainConfig, TrainConfig
from rtd.data.triplets import clean_caption, load_captions, load_triplets
from rtd.losses.contrastive import build_loss
from rtd.model.backends import EncoderBundle, build_encoders
from rtd.model.checkpoint import load_text_tower, load_trainer_state, save_checkpoint, unwrap
from rtd.model.composed import ComposedQueryEncoder
from rtd.model.projector import build_projector, load_projector_state
from rtd.train.cache import FrozenEmbeddingCache
from rtd.train.optim import build_optimizer, build_scheduler
from rtd.train.reporting import LoggingReporter, Reporter
from rtd.train.sources import BatchSource, CaptionSource, TripletSource
from rtd.train.step import RTDModels, phi_step, rtd_step

logger = logging.getLogger(__name__)

# Backend defaults for the noise scales (see the presets for the reasoning).
RTD_NOISE_DEFAULT = 0.5  # METHOD.md 6.3; the paper's value for every backbone
PHI_NOISE_DEFAULT = {"open_clip": 1.0, "hf_clip": 1.0, "hf_text": 0.05}  # LinCIR for CLIP; ~1/sqrt(384) for MiniLM


def resolve_rtd_noise(cfg: TrainConfig) -> float:
    return RTD_NOISE_DEFAULT if cfg.rtd.noise_scale is None else cfg.rtd.noise_scale


def resolve_phi_noise(cfg: PhiTrainConfig) -> float:
    return PHI_NOISE_DEFAULT[cfg.model.backend] if cfg.noise_scale is None else cfg.noise_scale


@dataclass
class RunContext:
    """What the caller (a local run, a test, a Ray worker) supplies to :func:`fit`."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    prepare_model: Callable[[nn.Module], nn.Module] = lambda m: m
    batch_source: BatchSource | None = None
    reporter: Reporter | None = None
    resume_from: Path | None = None
    validate: Callable[[ComposedQueryEncoder], dict[str, float]] | None = None
    run_dir: Path | None = None
    bundle: EncoderBundle | None = None  # reuse already-built encoders (tests, benchmarks)


@dataclass
class FitResult:
    step: int
    metrics: dict[str, Any]
    run_dir: Path | None
    best_checkpoint: Path | None = None
    last_checkpoint: Path | None = None


def seed_everything(seed: int, rank: int = 0) -> None:
    import random

    import numpy as np

    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)
    torch.manual_seed(seed + rank)


def _all_mean(x: float, world_size: int, device: torch.device) -> float:
    if world_size == 1 or not dist.is_initialized():
        return x
    t = torch.tensor([x], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item() / world_size)


def _any_rank(flag: bool, world_size: int, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any rank (one all-reduce; keeps report schedules identical)."""
    if world_size == 1 or not dist.is_initialized():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def _broadcast(obj: Any, world_size: int) -> Any:
    if world_size == 1 or not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _maybe_inject_fault(cfg: TrainConfig | PhiTrainConfig, step: int, rank: int, run_dir: Path | None) -> None:
    """Fault-injection hook for tests: the chosen rank's process dies (SIGKILL) once, at the chosen step."""
    if cfg.run.fail_at_step is None or step != cfg.run.fail_at_step or rank != cfg.run.fail_rank:
        return
    marker = Path(run_dir or tempfile.gettempdir()) / f".fault_injected_{cfg.run.name}"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(str(step))
    logger.warning("fault injection: killing rank %d at step %d", rank, step)
    os.kill(os.getpid(), signal.SIGKILL)


def build_rtd_source(cfg: TrainConfig, bundle: EncoderBundle, rank: int, world_size: int,
                     cache_root: Path | None) -> TripletSource:
    """Local source: read + validate triplets, fill the frozen-embedding cache, order batches."""
    d = cfg.data
    triplets, stats = load_triplets(d.paths, d.fields, d.format, d.max_chars, d.on_bad_rows)
    if stats.bad:
        logger.warning("skipped %d bad rows: %s", sum(stats.bad.values()), dict(stats.bad))
    cache = None
    if d.use_cache:
        root = Path(d.cache_dir) if d.cache_dir else (cache_root or Path(cfg.run.storage_path) / "frozen_cache")
        cache = FrozenEmbeddingCache(root, bundle.fingerprint)
        texts = sorted({clean_caption(t.target) for t in triplets} | {clean_caption(t.reference) for t in triplets})
        n = cache.ensure(texts, lambda chunk: bundle.encode_frozen_text(chunk))
        logger.info("frozen-embedding cache %s: %d texts, %d computed now", cache.dir, len(texts), n)
    order = None
    if d.hard_negatives.mode != "off":
        from rtd.train.hard_negatives import hard_negative_order

        order = hard_negative_order(triplets, cfg, bundle, cache)
    return TripletSource(triplets, bundle.tokenizer, cfg.prompts, cfg.rtd, d.batch_size, cfg.run.seed, rank,
                         world_size, d.shuffle, cache=cache, stats=stats, order=order)


def build_phi_source(cfg: PhiTrainConfig, bundle: EncoderBundle, rank: int, world_size: int) -> CaptionSource:
    d = cfg.data
    captions, stats = load_captions(d.paths, d.fields.reference, d.format, d.max_chars, d.on_bad_rows)
    return CaptionSource(captions, bundle.tokenizer, cfg.prompts, cfg.masking, d.batch_size, cfg.run.seed, rank,
                         world_size, d.shuffle, stats=stats)


def _autocast(cfg_amp: str, device: torch.device):
    if cfg_amp == "none" or device.type != "cuda":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast("cuda", dtype=torch.bfloat16 if cfg_amp == "bf16" else torch.float16)


def fit(cfg: TrainConfig | PhiTrainConfig, ctx: RunContext | None = None) -> FitResult:
    """Train RTD (``TrainConfig``) or phi (``PhiTrainConfig``) for ``cfg.run.steps`` steps.

    Resumes from ``ctx.resume_from`` or, failing that, from the reporter's latest checkpoint (same run folder =
    same run): model, optimizer, scheduler, step and RNG state are restored and data continues at that step.

    Returns:
        FitResult with the final step, the last reported metrics and checkpoint paths (local reporter).
    """
    ctx = ctx or RunContext()
    is_rtd = isinstance(cfg, TrainConfig)
    device = ctx.device
    run_dir = ctx.run_dir or Path(cfg.run.storage_path) / cfg.run.name
    seed_everything(cfg.run.seed, ctx.rank)

    bundle = ctx.bundle or build_encoders(cfg.model, cfg.prompts.placeholder, device=device)
    frozen = bundle.text.to(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.run.seed)  # identical (random-init) phi on every rank
        phi = build_projector(cfg.projector, bundle.embed_dim, bundle.token_dim).to(device)

    if is_rtd:
        phi.eval().requires_grad_(False)
        student = bundle.trainable_copy().to(device)
        if cfg.model.text_checkpoint:
            load_text_tower(student, cfg.model.text_checkpoint)
        trainable = student
        loss_fn = build_loss(cfg.loss.kind, cfg.loss.tau, rank=ctx.rank, world_size=ctx.world_size,
                             gather=cfg.loss.gather_across_workers)
        noise = resolve_rtd_noise(cfg)
    else:
        phi.train().requires_grad_(True)
        trainable = phi
        noise = resolve_phi_noise(cfg)
        norm_loss = bundle.normalize_embeddings if cfg.normalize_loss is None else cfg.normalize_loss

    optimizer = build_optimizer(trainable, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.run.steps)
    reporter = ctx.reporter or LoggingReporter(run_dir, cfg.run.steps, cfg.run.keep_checkpoints,
                                               cfg.validation.metric if cfg.validation.benchmark != "none" else None,
                                               cfg.validation.mode)
    start = 0
    resume = ctx.resume_from or reporter.latest_checkpoint()
    if resume is not None:
        state = load_trainer_state(resume)
        if is_rtd:
            load_text_tower(trainable, resume)
        else:
            load_projector_state(trainable, Path(resume) / "phi.safetensors", cfg.projector.kind)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        start = int(state["step"])
        logger.info("resumed from %s at step %d", resume, start)

    model = ctx.prepare_model(trainable)  # DDP on the trainable module only (frozen tower and phi stay local)
    source = ctx.batch_source or (
        build_rtd_source(cfg, bundle, ctx.rank, ctx.world_size, None) if is_rtd
        else build_phi_source(cfg, bundle, ctx.rank, ctx.world_size))
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.run.amp == "fp16" and device.type == "cuda")

    def encoder_for_eval() -> ComposedQueryEncoder:
        tower = unwrap(model) if is_rtd else frozen
        return ComposedQueryEncoder(bundle, tower, phi if is_rtd else unwrap(model), cfg.prompts)

    metrics: dict[str, Any] = {}
    last_ckpt: Path | None = None
    window = {"t0": time.perf_counter(), "wait": 0.0, "samples": 0, "tokens": 0.0, "steps": 0, "loss": 0.0}
    it = source.batches(start)
    step = start
    val_every = cfg.validation.every if cfg.validation.benchmark != "none" and ctx.validate else None
    min_report_s = (cfg.run.min_report_interval_s if cfg.run.min_report_interval_s is not None
                    else float(getattr(reporter, "min_interval_s", 0.0)))
    last_report_t = -float("inf")  # the first due log step always reports
    t_fit = time.perf_counter()
    while step < cfg.run.steps:
        t_wait = time.perf_counter()
        batch = next(it)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        window["wait"] += time.perf_counter() - t_wait
        _maybe_inject_fault(cfg, step, ctx.rank, run_dir)
        gen = torch.Generator().manual_seed(hash((cfg.run.seed, ctx.rank, step)) % 2**63)
        model.train()
        with _autocast(cfg.run.amp, device):
            if is_rtd:
                loss, info = rtd_step(RTDModels(model, frozen, phi, bundle.normalize_embeddings), batch, cfg.rtd,
                                      noise, loss_fn, gen)
            else:
                loss, info = phi_step(model, frozen, batch, noise, bundle.normalize_embeddings, norm_loss, gen)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.optim.max_grad_norm:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(trainable.parameters(), cfg.optim.max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        step += 1
        n_rows = int(batch["query_ids"].shape[0] if is_rtd else batch["caption_ids"].shape[0])
        window["samples"] += n_rows
        window["tokens"] += info.get("train/tokens", 0.0)
        window["steps"] += 1
        window["loss"] += float(loss.detach())

        do_ckpt = step % cfg.run.checkpoint_every == 0 or step == cfg.run.steps
        do_val = val_every is not None and (step % val_every == 0 or step == cfg.run.steps)
        do_log = step % cfg.run.log_every == 0 and (
            do_ckpt or do_val or step == cfg.run.steps
            or _any_rank(time.perf_counter() - last_report_t >= min_report_s, ctx.world_size, device))
        if do_log or do_ckpt or do_val:
            dt = time.perf_counter() - window["t0"]
            metrics = {
                "step": step,
                "train/loss": _all_mean(window["loss"] / window["steps"], ctx.world_size, device),
                "train/lr": scheduler.get_last_lr()[0],
                "train/samples_per_s": window["samples"] / dt,
                "train/tokens_per_s": window["tokens"] / dt,
                "train/step_time": dt / window["steps"],
                "train/data_wait_frac": window["wait"] / dt,
                "train/elapsed_s": time.perf_counter() - t_fit,  # since this process's loop began (wall clock)
                **{k: v for k, v in info.items() if k != "train/tokens"},
                **source.stats.as_metrics(),
            }
            if do_val:
                val = ctx.validate(encoder_for_eval()) if ctx.rank == 0 else None
                metrics.update(_broadcast(val, ctx.world_size) or {})
            ckpt_dir = None
            if do_ckpt and ctx.rank == 0:
                state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                         "torch_rng": torch.get_rng_state(), "step": step}
                staging = Path(tempfile.mkdtemp(prefix="rtd-ckpt-"))
                ckpt_dir = save_checkpoint(staging / f"checkpoint_{step:09d}", unwrap(model) if is_rtd else None,
                                           cfg, phi=phi if is_rtd else unwrap(model), trainer_state=state,
                                           info={"step": step, "fingerprint": bundle.fingerprint,
                                                 "metrics": {k: v for k, v in metrics.items()
                                                             if isinstance(v, (int, float))}})
            reporter.report(metrics, ckpt_dir)
            last_report_t = time.perf_counter()
            if ckpt_dir is not None:
                last_ckpt = ckpt_dir
            window = {"t0": time.perf_counter(), "wait": 0.0, "samples": 0, "tokens": 0.0, "steps": 0, "loss": 0.0}

    close = getattr(it, "close", None)
    if close is not None:
        close()  # a read-ahead source stops its thread now, not at garbage collection
    if hasattr(reporter, "finish"):
        reporter.finish()
    best = getattr(reporter, "best", None)
    return FitResult(step, metrics, run_dir, best[1] if best else None,
                     reporter.latest_checkpoint() if hasattr(reporter, "latest_checkpoint") else last_ckpt)
