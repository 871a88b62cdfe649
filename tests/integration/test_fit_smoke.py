"""fit() end to end without Ray: loss falls on a fixed batch, only the trainable module gets gradients,
checkpoints are complete and resumable."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from rtd.config import ModelConfig, PhiTrainConfig, TrainConfig, load_config
from rtd.data.triplets import load_triplets
from rtd.losses.contrastive import build_loss
from rtd.model.backends import build_encoders
from rtd.model.checkpoint import CheckpointError, load_text_tower
from rtd.model.projector import build_projector
from rtd.train.loop import RunContext, fit
from rtd.train.sources import TripletSource
from rtd.train.step import RTDModels, rtd_step


def _fixed_batch_losses(bundle, fixtures_dir, steps=12):
    cfg = load_config("train/tiny")
    trips, _ = load_triplets([str(fixtures_dir / "triplets.jsonl")])
    src = TripletSource(trips[:8], bundle.tokenizer, cfg.prompts, cfg.rtd, batch_size=8, shuffle=False)
    batch = next(src.batches(0))
    student = bundle.trainable_copy()
    phi = build_projector(cfg.projector, bundle.embed_dim, bundle.token_dim).eval().requires_grad_(False)
    image = bundle.image
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3)
    loss_fn = build_loss("nt_xent", 0.07)
    losses = []
    for i in range(steps):
        loss, _ = rtd_step(RTDModels(student, bundle.text, phi, bundle.normalize_embeddings), batch, cfg.rtd, 0.5,
                           loss_fn, torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        if i == 0:
            assert all(p.grad is None for p in bundle.text.parameters()), "frozen tower got a gradient"
            assert all(p.grad is None for p in phi.parameters()), "phi got a gradient"
            if image is not None:
                assert all(p.grad is None for p in image.parameters())
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_loss_falls_tiny_open_clip(fixtures_dir):
    torch.manual_seed(0)
    bundle = build_encoders(ModelConfig(backend="open_clip", name="rtd-tiny-clip", pretrained=None,
                                        load_image_tower=True))
    losses = _fixed_batch_losses(bundle, fixtures_dir)
    assert losses[-1] < 0.7 * losses[0], losses


def test_loss_falls_tiny_hf_clip(fixtures_dir, tiny_hf_clip_dir):
    bundle = build_encoders(ModelConfig(backend="hf_clip", name=str(tiny_hf_clip_dir), load_image_tower=True))
    losses = _fixed_batch_losses(bundle, fixtures_dir, steps=20)
    assert losses[-1] < 0.8 * losses[0], losses


def test_fit_checkpoints_and_resume(tmp_path, fixtures_dir):
    base = ["run.storage_path=" + str(tmp_path), f"data.paths=[{fixtures_dir / 'triplets.jsonl'}]"]
    cfg = load_config("train/tiny", base + ["run.steps=6", "run.name=a"])
    res = fit(cfg)
    assert res.step == 6
    ck = res.last_checkpoint
    assert ck is not None and ck.name == "checkpoint_000000006"
    for f in ("model.safetensors", "phi.safetensors", "phi.pt", "trainer_state.pt", "config.yaml", "run_info.json"):
        assert (ck / f).is_file(), f
    rows = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 3, 4, 6]
    for key in ("train/loss", "train/lr", "train/samples_per_s", "train/tokens_per_s", "train/data_wait_frac",
                "train/step_time", "data/bad_rows/missing"):
        assert key in rows[-1]
    assert (tmp_path / "a" / "loss_curve.png").is_file()

    # same run name, more steps: resumes from step 6, not 0
    cfg2 = load_config("train/tiny", base + ["run.steps=9", "run.name=a"])
    res2 = fit(cfg2)
    rows = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert res2.step == 9 and [r["step"] for r in rows][4:] == [8, 9]

    # a straight 9-step run ends with identical weights (model, optimizer, RNG and data position restored)
    cfg3 = load_config("train/tiny", base + ["run.steps=9", "run.name=b"])
    res3 = fit(cfg3)
    from safetensors.torch import load_file

    a = load_file(str(res2.last_checkpoint / "model.safetensors"))
    b = load_file(str(res3.last_checkpoint / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)


def test_phi_fit_only_phi_trains(tmp_path, fixtures_dir):
    caps = tmp_path / "caps.jsonl"
    caps.write_text("\n".join(json.dumps({"caption": f"a {c} {o} on a table"})
                              for c in ["red", "blue", "green", "black"] for o in ["cup", "dog", "car", "lamp"]))
    cfg = PhiTrainConfig.model_validate({
        "model": {"backend": "open_clip", "name": "rtd-tiny-clip", "pretrained": None},
        "data": {"paths": [str(caps)], "fields": {"reference": "caption"}, "batch_size": 8},
        "optim": {"lr": 1e-3}, "run": {"name": "phi", "storage_path": str(tmp_path), "steps": 4, "log_every": 2,
                                        "checkpoint_every": 4}})
    torch.manual_seed(0)
    bundle = build_encoders(cfg.model)
    before = {k: v.clone() for k, v in bundle.text.state_dict().items()}
    res = fit(cfg, RunContext(bundle=bundle))
    assert res.step == 4 and (res.last_checkpoint / "phi.pt").is_file()
    for k, v in bundle.text.state_dict().items():
        assert torch.equal(v, before[k]), f"frozen text tower changed: {k}"
    state = torch.load(res.last_checkpoint / "phi.pt", weights_only=True)
    assert set(state) == {"epoch", "Phi"} and state["epoch"] == 4


def test_wrong_architecture_checkpoint_names_both_shapes(tmp_path, tiny_clip_bundle, minilm_bundle):
    from rtd.model.checkpoint import save_checkpoint

    ck = save_checkpoint(tmp_path / "ck", tiny_clip_bundle.trainable_copy(), TrainConfig())
    with pytest.raises(CheckpointError, match="different architecture"):
        load_text_tower(minilm_bundle.trainable_copy(), ck)


def test_unknown_model_and_tag_list_accepted():
    from rtd.model.backends import ModelLoadError

    with pytest.raises(ModelLoadError, match="accepted: .*ViT-L-14"):
        build_encoders(ModelConfig(backend="open_clip", name="ViT-Q-99", pretrained=None))
    with pytest.raises(ModelLoadError, match="accepted tags: .*openai"):
        build_encoders(ModelConfig(backend="open_clip", name="ViT-L-14", pretrained="not-a-tag"))


def test_official_rtd_checkpoint_layout_loads(tmp_path, tiny_hf_clip_dir):
    """RTD's released file: {"epoch", "CLIPTextModelWithProjection": HF state dict} -> our HF CLIP tower."""
    from transformers import CLIPTextModelWithProjection

    src = CLIPTextModelWithProjection.from_pretrained(tiny_hf_clip_dir)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(0.01)
    path = tmp_path / "text_encoder_best.pt"
    torch.save({"epoch": 2000, "CLIPTextModelWithProjection": src.state_dict()}, path)
    bundle = build_encoders(ModelConfig(backend="hf_clip", name=str(tiny_hf_clip_dir)))
    tower = bundle.trainable_copy().eval()
    load_text_tower(tower, path)
    tb = bundle.tokenizer(["a photo of a dog"], trim=False)
    with torch.no_grad():
        torch.testing.assert_close(tower(tb.ids, tb.mask), src.eval()(input_ids=tb.ids).text_embeds)


class _SlowPollReporter:
    """Records report steps; ``min_interval_s`` as a Ray Train worker's reporter declares it."""

    def __init__(self, min_interval_s: float) -> None:
        self.min_interval_s = min_interval_s
        self.rows: list[tuple[int, bool, float]] = []

    def latest_checkpoint(self):
        return None

    def report(self, metrics, checkpoint_dir=None) -> None:
        self.rows.append((metrics["step"], checkpoint_dir is not None, metrics["train/samples_per_s"]))
        if checkpoint_dir is not None:
            shutil.rmtree(checkpoint_dir.parent, ignore_errors=True)  # fit stages it in a temp dir


@pytest.mark.parametrize("interval, expected", [(0.0, [2, 4, 6, 8, 10, 12]), (3600.0, [2, 6, 12])])
def test_metric_reports_are_throttled_but_checkpoints_are_not(tmp_path, fixtures_dir, interval, expected):
    """Ray Train drains one report per poll (2 s): metric-only reports wait for the reporter's floor, while the
    first log step, every checkpoint and the last step always report; skipped steps stay in the next window."""
    cfg = load_config("train/tiny", [f"data.paths=[{fixtures_dir / 'triplets.jsonl'}]", "data.batch_size=4",
                                     "run.steps=12", "run.log_every=2", "run.checkpoint_every=6",
                                     f"run.storage_path={tmp_path}", "validation.benchmark=none"])
    rep = _SlowPollReporter(interval)
    res = fit(cfg, RunContext(bundle=build_encoders(cfg.model), reporter=rep, run_dir=tmp_path / "run"))
    assert res.step == 12
    assert [s for s, _, _ in rep.rows] == expected
    assert [s for s, ck, _ in rep.rows if ck] == [6, 12]
    assert all(sps > 0 for _, _, sps in rep.rows)
    # an explicit setting overrides the reporter's floor
    cfg0 = cfg.model_copy(update={"run": cfg.run.model_copy(update={"min_report_interval_s": 0.0})})
    rep0 = _SlowPollReporter(3600.0)
    fit(cfg0, RunContext(bundle=build_encoders(cfg.model), reporter=rep0, run_dir=tmp_path / "run0"))
    assert [s for s, _, _ in rep0.rows] == [2, 4, 6, 8, 10, 12]
