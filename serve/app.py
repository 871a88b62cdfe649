"""Serve application builder: ``serve run serve/config.yaml`` or ``serve.run(build_app({...}))``.

The typed builder reads a :class:`~rtd.config.ServeConfig` (preset, YAML path and/or inline values), checks
the index manifest, and binds one ``GallerySearcher`` per shard, a ``QueryEncoder`` and the ``SearchIngress``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application

from rtd.config import ServeConfig, apply_overrides, load_config, validate_config
from rtd.index import read_manifest

__all__ = ["AppArgs", "build_app", "load_serve_config", "REPO_ROOT"]

logger = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parent.parent


class AppArgs(BaseModel):
    """Arguments of :func:`build_app` (the ``args:`` block of ``serve/config.yaml``).

    config: a preset (``serve/tiny_demo``) or YAML path; ``overrides``: dotted ``key=value`` strings;
    ``serve``: inline ServeConfig values applied last.
    """

    model_config = ConfigDict(extra="forbid")

    config: str | None = None
    overrides: list[str] = Field(default_factory=list)
    serve: dict[str, Any] = Field(default_factory=dict)
    # Extra QueryEncoder user_config (checkpoint, batching_enabled, max_batch_size, batch_wait_timeout_s). A
    # change here alone is applied live through reconfigure(), without restarting replicas or touching shards.
    encoder_user_config: dict[str, Any] = Field(default_factory=dict)


def _abs(p: str | None) -> str | None:
    """Relative paths resolve against the cwd if they exist there, else against the repository root (Serve
    replicas do not run in the directory ``serve run`` was started from)."""
    if not p:
        return p
    path = Path(p)
    if path.is_absolute():
        return str(path)
    return str(path.resolve() if path.exists() else (REPO_ROOT / path).resolve())


def load_serve_config(args: AppArgs | dict[str, Any]) -> ServeConfig:
    """Resolve :class:`AppArgs` into a validated :class:`ServeConfig` with absolute paths.

    Raises:
        rtd.config.ConfigError: unknown preset/key or invalid value (names the key).
    """
    a = args if isinstance(args, AppArgs) else AppArgs.model_validate(args)
    base = load_config(a.config, a.overrides, cls=ServeConfig) if a.config else validate_config(
        ServeConfig, apply_overrides({}, a.overrides))
    data = base.model_dump(mode="json")
    for key, value in a.serve.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
    data["index_dir"] = _abs(data["index_dir"])
    data["checkpoint"] = _abs(data.get("checkpoint"))
    data["image_root"] = _abs(data.get("image_root"))
    data["model"]["model_config_dir"] = _abs(data["model"].get("model_config_dir"))
    return validate_config(ServeConfig, data, "serve app args")


def build_app(args: AppArgs | dict[str, Any]) -> Application:
    """Build the Serve application.

    Args:
        args: :class:`AppArgs` or its dict (``{"config": "serve/tiny_demo", "overrides": [...], "serve": {...},
            "encoder_user_config": {"checkpoint": ...}}``).

    Returns:
        The bound ``SearchIngress`` application.

    Raises:
        rtd.index.ManifestError: the index folder has no valid manifest.
    """
    from serve.deployments import GallerySearcher, QueryEncoder, SearchIngress

    a = args if isinstance(args, AppArgs) else AppArgs.model_validate(args)
    cfg = load_serve_config(a)
    manifest = read_manifest(cfg.index_dir)
    d = cfg.model_dump(mode="json")
    b = cfg.batching
    quiet = {"enable_access_log": False}  # internal hops: one log line per call, ~6 % of a replica's CPU
    encoder = QueryEncoder.options(
        num_replicas=cfg.encoder.num_replicas, logging_config=quiet,
        ray_actor_options={"num_cpus": cfg.encoder.num_cpus, "num_gpus": cfg.encoder.num_gpus},
        # Batches only fill if a replica may hold at least a batch of requests (ray#43288).
        max_ongoing_requests=max(2 * b.max_batch_size, 8),
        user_config={"checkpoint": cfg.checkpoint, "batching_enabled": b.enabled,
                     "max_batch_size": b.max_batch_size, "batch_wait_timeout_s": b.batch_wait_timeout_s,
                     **{k: (_abs(v) if k == "checkpoint" else v) for k, v in a.encoder_user_config.items()}},
    ).bind(d, manifest.fingerprint)
    searchers = [
        GallerySearcher.options(
            name=f"GallerySearcher_{s}", num_replicas=cfg.searcher.num_replicas, logging_config=quiet,
            ray_actor_options={"num_cpus": cfg.searcher.num_cpus},
        ).bind(cfg.index_dir, s, cfg.search_params or None, cfg.mmap, cfg.verify_checksums, b.enabled)
        for s in range(manifest.num_shards)
    ]
    logger.info("serving %s (%d vectors, %d shards, %s)", cfg.index_dir, manifest.ntotal, manifest.num_shards,
                manifest.factory)
    return SearchIngress.options(
        num_replicas=cfg.ingress.num_replicas, ray_actor_options={"num_cpus": cfg.ingress.num_cpus},
        logging_config={"enable_access_log": cfg.access_log},
    ).bind(encoder, searchers, d)
