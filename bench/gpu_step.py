"""GPU step benchmark: open_clip ViT-L-14 text tower (random init), the faithful RTD step (128 triplets -> 256
queries, cached frozen targets, per-batch padding), bf16 autocast vs fp32: steps/s, peak memory and the projected
time for 2,000 steps (the paper's run). Goal: <= 60 s for 2,000 steps on one H200-class GPU.

    python bench/gpu_step.py                    # on a CUDA machine (about 2-4 minutes)
    python bench/gpu_step.py --device cpu --model rtd-tiny-clip --steps 3 --warmup 1   # plumbing check on CPU

Prints one table at the end.
"""

from __future__ import annotations

import argparse
import time

import torch

from rtd.config import ModelConfig, ProjectorConfig, PromptConfig, RTDMethodConfig
from rtd.data.batching import collate_rtd
from rtd.data.triplets import Triplet
from rtd.losses.contrastive import build_loss
from rtd.model.backends import build_encoders
from rtd.model.projector import build_projector
from rtd.train.step import RTDModels, rtd_step


def make_triplets(n: int) -> list[Triplet]:
    objs = ["dog", "cat", "car", "house", "tree", "bird", "boat", "chair", "lamp", "horse", "table", "cup"]
    cols = ["red", "blue", "green", "yellow", "black", "white"]
    out = []
    for i in range(n):
        o, c1, c2 = objs[i % 12], cols[i % 6], cols[(i // 6) % 6]
        out.append(Triplet(f"a {c1} {o} standing next to a wooden fence in the afternoon sun",
                           f"change the colour of the {o} to {c2} and add a second one",
                           f"two {c2} {o}s standing next to a wooden fence in the afternoon sun"))
    return out


def run(mode: str, args, bundle, batch, phi) -> dict[str, float]:
    device = torch.device(args.device)
    torch.manual_seed(0)
    student = bundle.trainable_copy().to(device)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-5, weight_decay=0.01)
    loss_fn = build_loss("nt_xent", 0.07)
    models = RTDModels(student, bundle.text, phi, bundle.normalize_embeddings)
    rtd = RTDMethodConfig()
    use_amp = mode == "bf16" and device.type == "cuda"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        torch.backends.cuda.matmul.allow_tf32 = mode != "fp32"

    def one():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss, _ = rtd_step(models, batch, rtd, 0.5, loss_fn)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    for _ in range(args.warmup):
        one()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = one()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / args.steps
    mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return {"mode": mode, "s_per_step": dt, "steps_per_s": 1 / dt, "peak_mem_gib": mem,
            "projected_2000_steps_s": 2000 * dt, "loss": float(loss.detach())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="ViT-L-14")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=128, help="triplets per step (queries = 2x)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--modes", nargs="*", default=["fp32", "bf16"])
    args = ap.parse_args()
    bundle = build_encoders(ModelConfig(backend="open_clip", name=args.model, pretrained=None), device=args.device)
    phi = build_projector(ProjectorConfig(kind="phi"), bundle.embed_dim, bundle.token_dim).to(args.device).eval()
    trips = make_triplets(args.batch)
    batch = collate_rtd(trips, bundle.tokenizer, PromptConfig(), RTDMethodConfig(), with_frozen_ids=False)
    with torch.no_grad():
        batch["target_emb"] = bundle.encode_frozen_text([t.target for t in trips])
        batch["reference_emb"] = bundle.encode_frozen_text([t.reference for t in trips])
    batch = {k: v.to(args.device) for k, v in batch.items()}
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    rows = [run(m, args, bundle, batch, phi) for m in args.modes]
    print(f"\ngpu_step: {args.model} text tower, {args.batch} triplets/step ({2 * args.batch} queries), device {name}")
    print("| mode | s/step | steps/s | peak mem GiB | projected 2,000 steps (s) | goal <= 60 s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ok = "met" if r["projected_2000_steps_s"] <= 60 else "missed"
        print(f"| {r['mode']} | {r['s_per_step']:.4f} | {r['steps_per_s']:.2f} | {r['peak_mem_gib']:.2f} | "
              f"{r['projected_2000_steps_s']:.1f} | {ok} |")
    if len(rows) == 2:
        print(f"bf16/fp32 speed-up: {rows[0]['s_per_step'] / rows[1]['s_per_step']:.2f}x")


if __name__ == "__main__":
    main()
