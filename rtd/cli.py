"""``rtd <verb>``: the console script. Each verb calls the same library function as the matching ``jobs/`` entry point.

    rtd presets                                   list shipped presets
    rtd train --config train/minilm_ip2p [k=v]    RTD training (local, plain PyTorch; --ray for Ray Train)
    rtd train-phi --config phi/minilm_coco [k=v]  LinCIR phi training (local; --ray for Ray Train)
    rtd eval --checkpoint DIR --split all         evaluate a trained text tower on the text proxy
    rtd eval --config train/minilm_ip2p           evaluate the base method (frozen tower + phi)
    rtd baselines --split all                     the text-only baselines of the text proxy (frozen MiniLM, TF-IDF)
    rtd quickstart                                the whole pipeline offline on this machine
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

logger = logging.getLogger("rtd")


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # open_clip logs through the root logger ("Parsing model identifier ..."): keep the root at WARNING and give
    # rtd's own loggers the requested level.
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("rtd").setLevel(getattr(logging, level.upper(), logging.INFO))
    for noisy in ("matplotlib", "urllib3", "filelock", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _threads() -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))


def proxy_validator(split: str, max_queries: int | None, data_dir: str | None = None):
    """A ``RunContext.validate`` hook: text-proxy metrics namespaced ``val/...``."""
    from rtd.eval.evaluate import DEFAULT_TEXT_PROXY_DIR, evaluate_text_proxy

    def validate(encoder) -> dict[str, float]:
        res = evaluate_text_proxy(encoder, split, data_dir or DEFAULT_TEXT_PROXY_DIR, max_queries=max_queries)
        return {f"val/{k}": v for k, v in res.items()}

    return validate


def run_local(cfg, validate_split: str | None = None):
    """Train locally (no Ray) with the validation hook from ``cfg.validation``."""
    from rtd.train.loop import RunContext, fit

    _threads()
    val = None
    if cfg.validation.benchmark != "none":
        val = proxy_validator(cfg.validation.benchmark, cfg.validation.max_queries, cfg.validation.data_dir)
    res = fit(cfg, RunContext(validate=val))
    export_phi(res)
    return res


def export_phi(res) -> None:
    """After a phi run, copy the final ``phi.pt`` (LinCIR layout) to ``<run_dir>/phi.pt`` for presets to point at."""
    import shutil

    src = res.last_checkpoint
    if src is not None and (Path(src) / "phi.pt").is_file() and not (Path(src) / "model.safetensors").is_file():
        tmp = Path(res.run_dir) / ".phi.pt.tmp"
        shutil.copyfile(Path(src) / "phi.pt", tmp)
        os.replace(tmp, Path(res.run_dir) / "phi.pt")


def metrics_table(rows: dict[str, dict[str, float]], keys: Sequence[str]) -> str:
    head = "| run | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys) + "\n"
    body = "".join(
        f"| {name} | " + " | ".join(f"{m[k]:.2f}" if k in m else "–" for k in keys) + " |\n" for name, m in rows.items()
    )
    return head + body


TABLE_KEYS = ["cirr_recall@1", "cirr_recall@5", "cirr_recall@10", "cirr_recall@50", "cirr_recall_subset@1",
              "fiq_avg_recall@10", "fiq_avg_recall@50"]


def evaluate_command(args: argparse.Namespace) -> dict[str, float]:
    from rtd.config import load_config
    from rtd.eval.evaluate import evaluate_text_proxy
    from rtd.model.composed import build_query_encoder, load_query_encoder_from_checkpoint

    _threads()
    if args.checkpoint:
        enc = load_query_encoder_from_checkpoint(args.checkpoint, load_image_tower=args.benchmark != "text_proxy")
        name = str(args.checkpoint)
    else:
        cfg = load_config(args.config, args.overrides)
        model = cfg.model
        if args.benchmark != "text_proxy":
            model = model.model_copy(update={"load_image_tower": True})
        enc = build_query_encoder(model, cfg.projector, cfg.prompts)
        name = f"base:{args.config}"
    t0 = time.perf_counter()
    if args.benchmark == "text_proxy":
        res = evaluate_text_proxy(enc, args.split, max_queries=args.max_queries)
    else:
        from rtd.eval.evaluate import evaluate_benchmark

        if not args.root:
            raise SystemExit(f"--root is required for --benchmark {args.benchmark} (the dataset in its official layout)")
        name = "fiq" if args.benchmark == "fashioniq" else args.benchmark
        split = None if args.split == "all" else args.split
        out_dir = Path(args.out) if args.out else None
        res = evaluate_benchmark(enc, name, args.root, split=split, max_queries=args.max_queries,
                                 gallery_cache_dir=(out_dir / "gallery_cache") if out_dir else None,
                                 submission_dir=out_dir)
    res = {k: float(v) for k, v in res.items()}
    logger.info("evaluated %s in %.1fs", name, time.perf_counter() - t0)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps({"model": name, "split": args.split, "metrics": res}, indent=2))
        keys = [k for k in TABLE_KEYS if k in res] or sorted(res)
        (out / "metrics.md").write_text(metrics_table({name: res}, keys))
    print(json.dumps(res, indent=2))
    return res


def baselines_command(args: argparse.Namespace) -> None:
    from rtd.config import ModelConfig
    from rtd.eval.evaluate import run_proxy_baselines
    from rtd.model.backends import build_encoders

    _threads()
    bundle = build_encoders(ModelConfig(backend="hf_text", name=args.model))
    res = run_proxy_baselines(lambda texts: bundle.encode_frozen_text(texts), args.split, rows=args.rows,
                              max_queries=args.max_queries)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "baselines.json").write_text(json.dumps(res, indent=2))
    print(metrics_table(res, [k for k in TABLE_KEYS if any(k in m for m in res.values())]))


def _train_command(args: argparse.Namespace, default_kind: str) -> Any:
    from rtd.config import load_config

    cfg = load_config(args.config, args.overrides)
    logger.info("resolved config:\n%s", json.dumps(cfg.model_dump(mode="json"), indent=1))
    if args.ray:
        from rtd.ray_adapters.train import run_training

        return run_training(cfg)
    res = run_local(cfg)
    logger.info("done: step %d, last checkpoint %s", res.step, res.last_checkpoint)
    print(json.dumps({"step": res.step, "last_checkpoint": str(res.last_checkpoint),
                      "best_checkpoint": str(res.best_checkpoint) if res.best_checkpoint else None,
                      "metrics": res.metrics}, indent=2, default=str))
    return res


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rtd", description="RTD text-encoder fine-tuning for composed image retrieval")
    p.add_argument("--log-level", default="INFO")
    sub = p.add_subparsers(dest="verb", required=True)
    sub.add_parser("presets", help="list shipped config presets")
    for verb in ("train", "train-phi"):
        t = sub.add_parser(verb, help=f"{verb} (local by default; --ray runs Ray Train)")
        t.add_argument("--config", required=True, help="preset (e.g. train/minilm_ip2p) or YAML path")
        t.add_argument("--ray", action="store_true", help="run on Ray Train (local Ray started automatically)")
        t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=1e-5")
    e = sub.add_parser("eval", help="evaluate a checkpoint or the base method")
    g = e.add_mutually_exclusive_group(required=True)
    g.add_argument("--checkpoint", help="checkpoint dir (model.safetensors + config.yaml)")
    g.add_argument("--config", help="training preset: evaluates its frozen tower + phi (the base method)")
    e.add_argument("--benchmark", default="text_proxy",
                   choices=["text_proxy", "cirr", "fashioniq", "circo", "genecis"])
    e.add_argument("--split", default="all", help="text proxy: cirr_val | fiq_val | cirr_trainsel | all; image "
                   "benchmarks: val | test1 (CIRR) | test (CIRCO); all = the benchmark's default split")
    e.add_argument("--root", help="dataset root for image benchmarks (official layout)")
    e.add_argument("--max-queries", type=int, default=None)
    e.add_argument("--out", help="folder for metrics.json and metrics.md")
    e.add_argument("overrides", nargs="*")
    b = sub.add_parser("baselines", help="text-only baselines on the text proxy")
    b.add_argument("--model", default="minilm")
    b.add_argument("--split", default="all")
    b.add_argument("--rows", nargs="*", default=["1", "2", "3a", "5''"])
    b.add_argument("--max-queries", type=int, default=None)
    b.add_argument("--out")
    q = sub.add_parser("quickstart", help="the whole pipeline offline (phi -> eval -> RTD on Ray -> eval -> index)")
    q.add_argument("--out", default="runs/quickstart")
    q.add_argument("--serve", action="store_true", help="also start the Serve app and run a sample query")
    q.add_argument("--fast", action="store_true", help="fewer steps/queries (a smoke run)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    if args.verb == "presets":
        from rtd.config import list_presets

        print("\n".join(list_presets()))
    elif args.verb in ("train", "train-phi"):
        _train_command(args, "train" if args.verb == "train" else "phi")
    elif args.verb == "eval":
        evaluate_command(args)
    elif args.verb == "baselines":
        baselines_command(args)
    elif args.verb == "quickstart":
        from rtd.ray_adapters.quickstart import run_quickstart

        run_quickstart(Path(args.out), serve=args.serve, fast=args.fast)
    return 0


if __name__ == "__main__":
    sys.exit(main())
