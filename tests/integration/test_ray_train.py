"""Ray Train + Ray Data integration: DDP replicas stay identical, kill-and-resume, same-name re-run resumes, and
every kind of bad row is counted (skip) or named (fail). Each ``fit`` costs ~30 s on 2 CPUs; keep this file small.
"""

from __future__ import annotations

import csv
import gzip
import json
import signal
import threading
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "triplets.jsonl"


def _timeout(seconds: int):
    """Fail (instead of hanging CI) when a Ray run blocks; SIGALRM raises in the main thread."""

    def handler(signum, frame):
        raise TimeoutError(f"Ray test exceeded {seconds}s")

    class _Ctx:
        def __enter__(self):
            assert threading.current_thread() is threading.main_thread()
            self.old = signal.signal(signal.SIGALRM, handler)
            signal.alarm(seconds)

        def __exit__(self, *exc):
            signal.alarm(0)
            signal.signal(signal.SIGALRM, self.old)

    return _Ctx()


def _cfg(tmp: Path, name: str, **over):
    from rtd.config import TrainConfig, validate_config

    d = {
        "model": {"backend": "open_clip", "name": "rtd-tiny-clip", "pretrained": None},
        "projector": {"kind": "phi"},
        "optim": {"lr": 1e-3},
        "data": {"paths": [str(FIXTURE)], "batch_size": 4, "cache_dir": str(tmp / "cache")},
        "run": {"name": name, "storage_path": str(tmp / "runs"), "steps": 8, "log_every": 2, "checkpoint_every": 4,
                "min_report_interval_s": 0},  # every log step reports (the throttle has its own unit test)
        "scaling": {"num_workers": 2, "cpus_per_worker": 0.5},
    }
    for key, val in over.items():
        sec, k = key.split("__")
        d.setdefault(sec, {})[k] = val
    return validate_config(TrainConfig, d)


def _steps(run_dir: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def clean_run(ray_cluster, tmp_path_factory):
    """One clean 2-worker run (8 steps) shared by the DDP and the fault-tolerance tests."""
    from rtd.ray_adapters.train import run_training

    tmp = tmp_path_factory.mktemp("ray_clean")
    cfg = _cfg(tmp, "clean")
    with _timeout(240):
        summary = run_training(cfg, extra_runtime={"dump_weights_digest": True})
    return cfg, summary, tmp


def test_ddp_replicas_identical_after_training(clean_run):
    """2 CPU workers, 8 steps on different shards: gradients are all-reduced, so both replicas end bit-identical,
    equal to the saved checkpoint, and different from the initial weights."""
    import torch
    from safetensors.torch import load_file

    from rtd.model.backends import MODEL_INIT_SEED
    from rtd.ray_adapters.cache import build_bundle
    from rtd.ray_adapters.train import weights_digest

    cfg, summary, tmp = clean_run
    run_dir = tmp / "runs" / "clean"
    digests = [json.loads((run_dir / "weights_digest" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert digests[0]["digest"] == digests[1]["digest"]
    assert digests[0]["reports"] == digests[1]["reports"] == 4  # every rank reports equally often
    assert summary["final_step"] == 8

    init = build_bundle(cfg.model, cfg.prompts.placeholder, MODEL_INIT_SEED).trainable_copy()
    assert weights_digest(init) != digests[0]["digest"], "the weights did not move"
    init.load_state_dict(load_file(str(Path(summary["checkpoint"]) / "model.safetensors")))
    assert weights_digest(init) == digests[0]["digest"], "checkpoint differs from the replicas"

    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6, 8]
    last = rows[-1]
    assert len(last["workers"]) == 2 and all(w["samples_per_s"] > 0 for w in last["workers"])
    for key in ("train/loss", "train/lr", "train/tokens_per_s", "train/data_wait_frac", "train/step_time",
                "data/bad_rows/missing", "data/rows_kept"):
        assert key in last, key
    assert (run_dir / "loss_curve.png").stat().st_size > 0
    assert json.loads((run_dir / "summary.json").read_text())["data"]["rows_kept"] == 48
    assert summary["cache"]["texts"] > 0
    assert torch.isfinite(torch.tensor(last["train/loss"]))


def test_kill_worker_resumes_from_checkpoint_and_rerun_resumes(clean_run, tmp_path):
    """Rank 1 is SIGKILLed at step 5; FailureConfig(max_failures=1) restarts the group, which continues from the
    step-4 checkpoint (no step is reported twice) and ends at the clean run's step. A re-run with the same name
    and more steps resumes from step 8."""
    from rtd.ray_adapters.train import run_training

    _, clean_summary, _ = clean_run
    cfg = _cfg(tmp_path, "faulty", run__checkpoint_every=2, run__fail_at_step=5, run__fail_rank=1,
               scaling__max_failures=1, data__use_cache=False)
    run_dir = tmp_path / "runs" / "faulty"
    with _timeout(300):
        summary = run_training(cfg)
    assert (run_dir / ".fault_injected_faulty").read_text() == "5"
    assert summary["final_step"] == clean_summary["final_step"] == 8
    assert _steps(run_dir) == [2, 4, 6, 8]  # from step 0 again would repeat 2 and 4

    more = cfg.model_copy(update={"run": cfg.run.model_copy(update={"steps": 10})})
    with _timeout(240):
        summary2 = run_training(more)
    assert summary2["final_step"] == 10
    assert _steps(run_dir) == [2, 4, 6, 8, 10]


# --------------------------------------------------------------------------------------------------- bad rows

GOOD = {"reference_caption": "a red car", "conditioning_caption": "make it blue", "target_caption": "a blue car"}


def _bad_rows_folder(root: Path) -> Path:
    """One folder, four formats, every kind of bad row: missing, empty, non-string, over-long, malformed JSON."""
    root.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(GOOD), json.dumps({k: v for k, v in GOOD.items() if k != "target_caption"}),  # missing
             json.dumps({**GOOD, "conditioning_caption": "   "}),  # empty
             json.dumps({**GOOD, "reference_caption": 17}),  # non_string
             json.dumps({**GOOD, "target_caption": "x" * 300}),  # too_long
             '{"reference_caption": "a cat", "conditioning_caption": ',  # malformed
             "[1, 2, 3]", json.dumps(GOOD)]  # not an object (malformed), good
    (root / "a.jsonl").write_text("\n".join(lines) + "\n")
    with gzip.open(root / "b.jsonl.gz", "wt") as f:
        f.write(json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "target_caption": None}) + "\n")  # missing
    (root / "c.json").write_text(json.dumps([GOOD, {**GOOD, "target_caption": ["list"]}]))  # non_string
    with open(root / "d.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(GOOD))
        w.writeheader()
        w.writerow(GOOD)
        w.writerow({**GOOD, "reference_caption": ""})  # empty
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([GOOD, {**GOOD, "conditioning_caption": "y" * 300}]), root / "e.parquet")
    return root


def test_bad_rows_counted_when_skipped_and_named_when_failing(ray_cluster, tmp_path):
    from rtd.config import DataConfig, ModelConfig, PromptConfig, RTDMethodConfig
    from rtd.ray_adapters.data import BadRowError, count_rows, read_rows, tokenize_rtd, triplet_fields

    folder = _bad_rows_folder(tmp_path / "data")
    data = DataConfig(paths=[str(folder)], max_chars=200)
    fields = triplet_fields(data.fields)
    with _timeout(120):
        rows = read_rows(data, fields)
        stats = count_rows(rows)
        assert stats.read == 16 and stats.kept == 6
        assert dict(stats.bad) == {"missing": 2, "empty": 2, "non_string": 2, "too_long": 2, "malformed": 2}
        m = stats.as_metrics()
        assert m["data/bad_rows/malformed"] == 2 and m["data/bad_rows/too_long"] == 2
        tiny = ModelConfig(backend="open_clip", name="rtd-tiny-clip", pretrained=None)
        tok = tokenize_rtd(rows, tiny, PromptConfig(), RTDMethodConfig(), frozen_ids=False).take_all()
        assert len(tok) == 6 and len(tok[0]["qc_ids"]) == len(tok[0]["qp_ids"]) == 77  # fixed length
        assert {r["target_text"] for r in tok} == {"a blue car"}

        only_bad = tmp_path / "one"
        only_bad.mkdir()
        (only_bad / "x.jsonl").write_text(json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "target_caption": ""}) + "\n")
        with pytest.raises(BadRowError, match=r"x\.jsonl row 1: field 'target_caption' is empty"):
            count_rows(read_rows(DataConfig(paths=[str(only_bad)], on_bad_rows="fail"), fields))
        with pytest.raises(BadRowError, match=r"a\.jsonl row 1: field 'target_caption' is missing"):
            count_rows(read_rows(DataConfig(paths=[str(folder / "a.jsonl")], on_bad_rows="fail"), fields))
