"""Experiment tracking: --wandb and --tensorboard receive what metrics.jsonl holds, read back from the files each
package writes (W&B offline); asked for and absent, a package is one line before anything is trained. Both are
optional (not in requirements.txt); CI installs them."""
import json
import struct
import sys
import time

import pytest

import train
from test_train import TINY

TRACKED = [*TINY, "--train_examples", "4", "--batch_size", "4", "--epochs", "2", "--val_examples", "1"]


def wandb_records(log):
    """The records of a W&B transaction log, in LevelDB's log format: a 7-byte file header, then blocks of 32 KiB
    of records, each with a 7-byte header (checksum, length, type: whole, first, middle or last part)."""
    from wandb.proto import wandb_internal_pb2
    data, position, chunks = log.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while position + 7 <= len(data):
        if 32768 - position % 32768 < 7:  # too little room left in a block for a header: padding
            position += 32768 - position % 32768
            continue
        length, kind = struct.unpack("<HB", data[position + 4:position + 7])
        chunks, position = chunks + data[position + 7:position + 7 + length], position + 7 + length
        if kind in (1, 4):  # a whole record, or the last part of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


def wandb_history(run_dir, timeout=60):
    """The history rows of the offline W&B run in run_dir, once its log is complete (its exit record written:
    the service that writes it may still be at it when the run has finished)."""
    [log] = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    deadline = time.time() + timeout
    while not any(r.WhichOneof("record_type") == "exit" for r in wandb_records(log)):
        assert time.time() < deadline, "the W&B log was not completed"
        time.sleep(0.2)
    return [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
            for r in wandb_records(log) if r.WhichOneof("record_type") == "history"]


def test_wandb_and_tensorboard_log_each_line_of_metrics(tmp_path, data_dir, monkeypatch):
    pytest.importorskip("wandb", reason="optional: pip install wandb")
    pytest.importorskip("tensorboard", reason="optional: pip install tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    train.main([*TRACKED, "--data_dir", str(data_dir), "--out_dir", str(out), "--wandb", "coconut-tests",
                "--tensorboard"])
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2
    logged = [{k.removeprefix("coconut/"): v for k, v in row.items() if k.startswith("coconut/")}
              for row in wandb_history(out)]
    assert logged == [{k: v for k, v in row.items() if v is not None} for row in metrics]
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    for key in metrics[0]:
        scalars = events.Scalars(f"coconut/{key}")
        assert [s.step for s in scalars] == [row["epoch"] for row in metrics]
        assert [s.value for s in scalars] == pytest.approx([row[key] for row in metrics], rel=1e-6)  # float32


@pytest.mark.parametrize("flag, module", [(["--wandb", "p"], "wandb"), (["--tensorboard"], "torch.utils.tensorboard")])
def test_a_tracker_asked_for_and_absent_is_one_line_before_training(tmp_path, data_dir, monkeypatch, flag, module):
    monkeypatch.setitem(sys.modules, module, None)  # what `import` finds when the package is not installed
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        train.main([*TRACKED, "--data_dir", str(data_dir), "--out_dir", str(out), *flag])
    package = module.split(".")[-1]
    assert stop.value.code == f"error: {flag[0]} needs the {package} package: pip install {package}"
    assert not (out / "latest").exists()
