"""RTD step time: this project's step vs the reference-style step, same model, same batch, same optimizer.

* ``rtd``: frozen target/reference embeddings from the frozen-embedding cache, queries trimmed to the batch's
  longest row (``rtd.train.step.rtd_step``).
* ``reference``: as the official script: every text padded to 77 tokens and the frozen tower run on T_t and
  T_r in every step.

    source scripts/env.sh
    python bench/fast_step.py --model minilm --batch-size 32 --steps 20

Prints ms/step (median after warm-up) of each and the speed-up.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

MODELS = {
    "tiny": {"backend": "open_clip", "name": "rtd-tiny-clip", "pretrained": None},
    "minilm": {"backend": "hf_text", "name": "minilm"},
}
DATA = "data/text_proxy/ip2p.triplets.jsonl.gz"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), default="minilm")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--pad-to", type=int, default=77)
    args = p.parse_args()
    torch.set_num_threads(1)

    from rtd.config import ModelConfig, TrainConfig, validate_config
    from rtd.data.batching import collate_rtd, query_texts
    from rtd.data.triplets import clean_caption, load_triplets
    from rtd.losses.contrastive import build_loss
    from rtd.model.projector import build_projector
    from rtd.ray_adapters.cache import build_bundle
    from rtd.train.cache import FrozenEmbeddingCache
    from rtd.train.optim import build_optimizer
    from rtd.train.step import RTDModels, rtd_step

    model = {**MODELS[args.model], "context_length": args.pad_to}
    cfg = validate_config(TrainConfig, {"model": model, "data": {"batch_size": args.batch_size}})
    bundle = build_bundle(ModelConfig(**model), "$", 0)
    trips, _ = load_triplets([DATA])
    B = args.batch_size
    batches = [trips[i : i + B] for i in range(0, len(trips) - B + 1, B)]
    cache = FrozenEmbeddingCache(tempfile.mkdtemp(prefix="rtd-bench-cache-"), bundle.fingerprint)
    cache.ensure(sorted({clean_caption(t.target) for t in trips} | {clean_caption(t.reference) for t in trips}),
                 bundle.encode_frozen_text)
    phi = build_projector(cfg.projector, bundle.embed_dim, bundle.token_dim).eval().requires_grad_(False)
    loss_fn = build_loss(cfg.loss.kind, cfg.loss.tau)
    tok = bundle.tokenizer

    def rtd_batch(rows):
        b = collate_rtd(rows, tok, cfg.prompts, cfg.rtd, with_frozen_ids=False)  # trimmed per batch
        b["target_emb"] = cache.get([clean_caption(t.target) for t in rows])
        b["reference_emb"] = cache.get([clean_caption(t.reference) for t in rows])
        return b

    def reference_batch(rows):
        q = tok(query_texts(rows, cfg.prompts, cfg.rtd), trim=False)
        t = tok([clean_caption(x.target) for x in rows], trim=False)
        r = tok([clean_caption(x.reference) for x in rows], trim=False)
        return {"query_ids": q.ids, "query_mask": q.mask, "target_ids": t.ids, "target_mask": t.mask,
                "reference_ids": r.ids, "reference_mask": r.mask}

    def untrimmed_step(models, batch, gen):
        """The reference step: no trimming anywhere, frozen forwards on 77-token inputs."""
        import torch.nn.functional as F

        from rtd.train.step import add_noise

        with torch.no_grad():
            e_t = models.frozen(batch["target_ids"], batch["target_mask"]).float()
            e_r = models.frozen(batch["reference_ids"], batch["reference_mask"]).float()
            if models.normalize:
                e_t, e_r = F.normalize(e_t, dim=-1), F.normalize(e_r, dim=-1)
            s = models.phi(add_noise(e_r, 0.5, gen))
            pseudo, targets = torch.cat([s, s]), torch.cat([e_t, e_r])
        return loss_fn(models.student(batch["query_ids"], batch["query_mask"], pseudo), targets)

    def run(kind: str) -> tuple[float, float]:
        student = bundle.trainable_copy()
        opt = build_optimizer(student, cfg.optim)
        models = RTDModels(student, bundle.text, phi, bundle.normalize_embeddings)
        gen = torch.Generator().manual_seed(0)
        times, lens = [], []
        for i in range(args.warmup + args.steps):
            rows = batches[i % len(batches)]
            t0 = time.perf_counter()
            batch = rtd_batch(rows) if kind == "rtd" else reference_batch(rows)
            if kind == "rtd":
                loss, _ = rtd_step(models, batch, cfg.rtd, 0.5, loss_fn, gen)
            else:
                loss = untrimmed_step(models, batch, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
                lens.append(int(batch["query_mask"].sum(1).max()))
        return 1000 * statistics.median(times), statistics.mean(lens)

    fast, Lf = run("rtd")
    ref, _ = run("reference")
    print(f"model={args.model} batch={B} triplets ({2 * B} query/target pairs) steps={args.steps} data={DATA}")
    print(f"reference-style step (pad {args.pad_to} + frozen forwards): {ref:8.1f} ms/step")
    print(f"rtd step (cache + per-batch trim, mean query len {Lf:.1f}): {fast:8.1f} ms/step")
    print(f"speed-up x{ref / fast:.2f}")


if __name__ == "__main__":
    main()
