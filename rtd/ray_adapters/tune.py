"""Ray Tune sweeps over RTD training options (Train V2 + Tune pattern: one driver function per trial builds and
fits a ``TorchTrainer``; ``TuneReportCallback`` forwards rank 0's reports, so ASHA sees every validation).

- The search space is validated before any trial starts (:func:`validate_search_space`): every key must be a
  ``TrainConfig`` path and every value it can take must validate.
- The frozen-embedding cache is filled once on the driver; trials only read it (the model section is not
  searchable, so every trial has the same frozen encoder and fingerprint).
- Outputs in ``<storage>/<name>/``: ``best.json`` (config, metric, checkpoint, versions), ``results.csv``,
  ``results.md`` and ``metric_by_step.png``. Re-running the same sweep resumes it (``Tuner.restore``).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from rtd.config import (
    Choice,
    ConfigError,
    Grid,
    LogUniform,
    TrainConfig,
    TuneConfig,
    Uniform,
    _read_yaml,
    apply_overrides,
    atomic_write_text,
    package_versions,
    validate_config,
)

logger = logging.getLogger(__name__)

# Keys a sweep may not change: they would change the frozen encoder (and the shared cache) or the run identity.
FORBIDDEN_PREFIXES = ("model.", "run.name", "run.storage_path", "scaling.")


def _base_dict(tcfg: TuneConfig) -> dict[str, Any]:
    data, _ = _read_yaml(tcfg.base)
    data.pop("config_kind", None)
    return apply_overrides(data, list(tcfg.overrides))


def _values_to_check(dim: Any) -> list[Any]:
    if isinstance(dim, (Choice, Grid)):
        return list(dim.choice if isinstance(dim, Choice) else dim.grid)
    lo, hi = dim.loguniform if isinstance(dim, LogUniform) else dim.uniform
    if isinstance(dim, LogUniform) and (lo <= 0 or hi <= 0):
        raise ConfigError(f"loguniform bounds must be > 0, got {lo}, {hi}")
    if lo > hi:
        raise ConfigError(f"search bounds are reversed: {lo} > {hi}")
    return [lo, hi, math.sqrt(lo * hi) if isinstance(dim, LogUniform) else (lo + hi) / 2]


def _override(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value)}"


def validate_search_space(tcfg: TuneConfig) -> TrainConfig:
    """Check every search key and value against ``TrainConfig``; returns the validated base config.

    Raises:
        ConfigError: a misspelled or forbidden key (naming it and the accepted keys), or a value that does not
            validate (naming the key and value).
    """
    base = _base_dict(tcfg)
    base_cfg = validate_config(TrainConfig, base, source=tcfg.base)
    if not tcfg.search:
        raise ConfigError("tune.search is empty: nothing to sweep")
    for key, dim in tcfg.search.items():
        if key.startswith(FORBIDDEN_PREFIXES):
            raise ConfigError(f"search key {key!r} cannot be swept (it changes the frozen encoder, the run identity "
                              f"or the resources); forbidden prefixes: {FORBIDDEN_PREFIXES}")
        for value in _values_to_check(dim):
            try:
                validate_config(TrainConfig, apply_overrides(base, [_override(key, value)]),
                                source=f"search {key}={value!r}")
            except ConfigError as e:
                raise ConfigError(f"search key {key!r} with value {value!r} is invalid:\n{e}") from None
    if tcfg.metric.startswith("val/") and base_cfg.validation.benchmark == "none":
        raise ConfigError(f"metric {tcfg.metric!r} needs validation during training: set "
                          "validation.benchmark in the base config or tune.overrides")
    return base_cfg


def to_param_space(tcfg: TuneConfig) -> dict[str, Any]:
    """``{"params": {dotted key: ray.tune domain}}``."""
    from ray import tune

    space = {}
    for key, dim in tcfg.search.items():
        if isinstance(dim, Choice):
            space[key] = tune.choice(dim.choice)
        elif isinstance(dim, Grid):
            space[key] = tune.grid_search(dim.grid)
        elif isinstance(dim, LogUniform):
            space[key] = tune.loguniform(*dim.loguniform)
        else:
            space[key] = tune.uniform(*dim.uniform)
    return {"params": space}


def trial_config(base: dict[str, Any], params: dict[str, Any], trial_name: str, storage: str,
                 cache_dir: str) -> TrainConfig:
    """The TrainConfig of one trial: base + sampled params, unique run name, shared cache."""
    data = apply_overrides(base, [_override(k, v) for k, v in params.items()])
    data = apply_overrides(data, [f"run.name={trial_name}", f"run.storage_path={storage}",
                                  f"data.cache_dir={cache_dir}"])
    return validate_config(TrainConfig, data, source=f"trial {trial_name}")


def train_driver(config: dict[str, Any]) -> None:
    """One Tune trial = one Ray Train run (runs inside a Tune trial actor)."""
    import ray
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from rtd.ray_adapters.train import build_trainer

    global _prepare_outside_pg
    if _prepare_outside_pg is None:
        _prepare_outside_pg = ray.remote(num_cpus=0)(_prepare)

    name = tune.get_context().get_trial_name()
    cfg = trial_config(config["base"], config["params"], name, config["trial_storage"], config["cache_dir"])
    # The trial runs inside a placement group that captures child tasks, and Ray Data schedules into the current
    # group: its tasks (1 CPU each) would never fit the trial's 0.1-CPU bundle. Prepare the data in a task
    # scheduled outside any placement group.
    ds, runtime = ray.get(_prepare_outside_pg.options(
        scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None)
    ).remote(cfg.model_dump(mode="json"), config.get("fingerprint")))
    build_trainer(cfg, {"train": ds}, runtime, extra_callbacks=[TuneReportCallback()]).fit()


def _prepare(cfg_json: dict[str, Any], fingerprint: str | None):
    from rtd.ray_adapters.train import prepare_data

    # Blocks materialized here would be owned by this short-lived task's worker and could be lost when Ray
    # reclaims it mid-trial; trials stream their (small) data instead.
    cfg_json = {**cfg_json, "data": {**cfg_json["data"], "materialize": "never"}}
    return prepare_data(validate_config(TrainConfig, cfg_json), fingerprint=fingerprint)


_prepare_outside_pg = None  # the ray.remote wrapper, made on first use (no Ray import at module import)


def trial_cpus(tcfg: TuneConfig, base: TrainConfig) -> float:
    return tcfg.cpus_per_trial_driver + base.scaling.num_workers * base.scaling.cpus_per_worker


def concurrency(tcfg: TuneConfig, base: TrainConfig, cluster_cpus: float, data_reserve: float = 1.0) -> int:
    """Trials that fit at once: (cluster CPUs - a reserve for Ray Data tasks) / CPUs one trial holds."""
    if tcfg.max_concurrent_trials:
        return tcfg.max_concurrent_trials
    return max(1, int((cluster_cpus - data_reserve) // trial_cpus(tcfg, base)))


def run_sweep(tcfg: TuneConfig) -> dict[str, Any]:
    """Validate, fill the shared cache, run (or resume) the sweep, write best.json / results / plot."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from rtd.ray_adapters.train import _absolute_storage, cache_root_of, ensure_ray, prepare_data

    base_cfg = _absolute_storage(validate_search_space(tcfg))
    # Trials report every run.log_every steps and the validation metric only every validation.every steps; Tune's
    # strict check would reject the reports without it (ASHA simply skips them).
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    ensure_ray()
    storage = str(Path(tcfg.storage_path).expanduser().resolve())
    sweep_dir = Path(storage) / tcfg.name
    cache_dir = cache_root_of(base_cfg)
    # Fill the frozen-embedding cache once, here; every trial then finds every text cached.
    _, runtime = prepare_data(base_cfg)
    base = base_cfg.model_dump(mode="json")
    param_space = {**to_param_space(tcfg), "base": base, "trial_storage": str(sweep_dir / "trials"),
                   "cache_dir": cache_dir, "fingerprint": runtime.get("fingerprint")}
    n_conc = concurrency(tcfg, base_cfg, ray.cluster_resources().get("CPU", 1))
    scheduler = None
    if tcfg.scheduler.enabled:
        scheduler = ASHAScheduler(time_attr="step", max_t=base_cfg.run.steps,
                                  grace_period=min(tcfg.scheduler.grace_period, base_cfg.run.steps),
                                  reduction_factor=tcfg.scheduler.reduction_factor)
    search_alg = None
    if tcfg.search_alg == "optuna":
        try:
            from ray.tune.search.optuna import OptunaSearch

            search_alg = OptunaSearch(seed=tcfg.seed)
        except ImportError:
            logger.warning("optuna is not installed: falling back to random search")
    trainable = tune.with_resources(train_driver, {"CPU": tcfg.cpus_per_trial_driver})
    if tune.Tuner.can_restore(str(sweep_dir)):
        logger.info("resuming sweep %s", sweep_dir)
        tuner = tune.Tuner.restore(str(sweep_dir), trainable=trainable, param_space=param_space, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable, param_space=param_space,
            tune_config=tune.TuneConfig(metric=tcfg.metric, mode=tcfg.mode, num_samples=tcfg.num_samples,
                                        scheduler=scheduler, search_alg=search_alg, max_concurrent_trials=n_conc),
            run_config=tune.RunConfig(name=tcfg.name, storage_path=storage))
    logger.info("sweep %s: %d concurrent trial(s), %.2f CPUs each", tcfg.name, n_conc, trial_cpus(tcfg, base_cfg))
    grid = tuner.fit()
    return write_outputs(tcfg, grid, sweep_dir)


def write_outputs(tcfg: TuneConfig, grid: Any, sweep_dir: Path) -> dict[str, Any]:
    rows, curves = [], {}
    for r in grid:
        params = (r.config or {}).get("params", {})
        hist = r.metrics_dataframe
        series = []
        if hist is not None and tcfg.metric in hist and "step" in hist:
            sub = hist[["step", tcfg.metric]].dropna()
            series = [(int(s), float(v)) for s, v in zip(sub["step"], sub[tcfg.metric])]
        pick = max if tcfg.mode == "max" else min
        best_step, best_val = pick(series, key=lambda sv: sv[1]) if series else (0, float("nan"))
        trial = Path(r.path).name if r.path else "?"
        curves[", ".join(f"{k}={params.get(k)}" for k in tcfg.search) or trial] = series
        rows.append({"trial": trial, **{k: params.get(k) for k in tcfg.search}, tcfg.metric: best_val,
                     "best_step": best_step,
                     "last_step": int((r.metrics or {}).get("step", 0) or 0),
                     "last_checkpoint": (r.metrics or {}).get("checkpoint_path"),
                     "error": str(r.error)[:200] if r.error else ""})
    ok = [x for x in rows if not math.isnan(x[tcfg.metric])]
    best = (max if tcfg.mode == "max" else min)(ok, key=lambda x: x[tcfg.metric]) if ok else None
    sweep_dir.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    atomic_write_text(sweep_dir / "results.csv", buf.getvalue())
    keys = ["trial", *tcfg.search, tcfg.metric, "best_step", "last_step"]
    md = "| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n"
    for x in sorted(rows, key=lambda x: -x[tcfg.metric] if tcfg.mode == "max" and not math.isnan(x[tcfg.metric]) else 0):
        # metric to 2 decimals; searched values in full (a learning rate of 1e-05 must not print as 0.00)
        md += "| " + " | ".join(f"{x[k]:.2f}" if k == tcfg.metric else (f"{x[k]:g}" if isinstance(x[k], float) else str(x[k]))
                               for k in keys) + " |\n"
    atomic_write_text(sweep_dir / "results.md", md)
    out = {"metric": tcfg.metric, "mode": tcfg.mode, "best": best, "versions": package_versions()}
    if best:
        base = _base_dict(tcfg)
        params = {k: best[k] for k in tcfg.search}
        out["config"] = validate_config(TrainConfig, apply_overrides(base, [_override(k, v) for k, v in params.items()])).model_dump(mode="json")
        out["overrides"] = [_override(k, v) for k, v in params.items()]
        # Train run folders are named after the Tune trial name, a prefix of the trial's own folder name.
        runs = [p for p in (sweep_dir / "trials").glob("*") if best["trial"].startswith(p.name)]
        # the checkpoint of the step where the trial's metric was best (checkpoints are kept by that metric)
        at_best = [c for p in runs for c in p.glob(f"checkpoint_{int(best['best_step']):09d}")]
        ck = sorted(c for p in runs for c in p.glob("checkpoint_*"))
        out["checkpoint_path"] = str(at_best[0]) if at_best else (str(ck[-1]) if ck else best.get("last_checkpoint"))
    atomic_write_text(sweep_dir / "best.json", json.dumps(out, indent=2, default=str))
    _plot(curves, tcfg.metric, sweep_dir / "metric_by_step.png")
    return out


def _plot(curves: dict[str, list[tuple[int, float]]], metric: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, pts in curves.items():
        if pts:
            ax.plot(*zip(*pts), "o-", label=name[:60])
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    if any(curves.values()):
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
