"""Storage faults: a disk that fills while a run checkpoints or logs, an output
folder that cannot be written, a tracking store that breaks mid-run. Each is one
line naming the file and the cause, the last complete checkpoint is intact and
resumes exactly (also from a copy of the folder elsewhere), and nothing
half-written is left to be read. The faults are injected (tests and CI run as
root, where permissions do not bite), except two real ones: an --output under a
plain file, and the kernel's own refusal of a write past RLIMIT_FSIZE."""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dsr_tune import checkpoint as ckpt
from dsr_tune import cli, config as C, runfolder
from dsr_tune.records import TIMED
from dsr_tune.train import train

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "configs" / "digits.yaml")
FAST = ["train.epochs=4", "optim.milestones=[2]", "sparsity.period_schedule=[[0, 7]]", "sparsity.stop_epoch=4",
        "sparsity.dsr.target_pruned=100", "train.threads=1", "data.loader_workers=0"]
TIMING = set(TIMED)  # the only fields two runs of the same config may differ in


def _records(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in runfolder.read_records(run_dir)]


def _same_run(a: Path, b: Path) -> None:
    """Two run folders hold the same finished run: records, weights and masks."""
    assert _records(a) == _records(b)
    sa, sb = ckpt.load(a), ckpt.load(b)
    assert sa["epoch"] == sb["epoch"]
    assert all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"])
    assert all(torch.equal(sa["masking"]["masks"][k], sb["masking"]["masks"][k]) for k in sa["masking"]["masks"])


def _whole_lines(path: Path) -> list[dict]:
    """Every line of a metrics.jsonl parses: no torn record to be read."""
    text = path.read_text()
    assert not text or text.endswith("\n"), text[-80:]
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The run no fault ever touched."""
    out = tmp_path_factory.mktemp("straight") / "run"
    train(C.load(DIGITS, FAST), out, progress=False)
    return out


class _FillsUp:
    """A file whose write stores part of the data, then fails as a full disk does."""

    def __init__(self, f, err: int):
        self._f, self._err = f, err

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        self._f.write(data[: len(data) // 2])
        raise OSError(self._err, os.strerror(self._err))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def __getattr__(self, name):
        return getattr(self._f, name)


def _fail_atomic_writes(monkeypatch, name: str, nth: int, err: int = errno.ENOSPC) -> None:
    """The ``nth`` (1-based) and later atomic writes of files called ``name`` fail with ``err``."""
    real, seen = open, []

    def opener(file, mode="r", *args, **kwargs):
        f = real(file, mode, *args, **kwargs)
        if "w" in mode and Path(file).name.startswith(f".{name}.tmp-"):
            seen.append(file)
            if len(seen) >= nth:
                return _FillsUp(f, err)
        return f

    monkeypatch.setattr(runfolder, "open", opener, raising=False)  # the module's `open`: atomic_write's


def _one_error(capsys) -> str:
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if "error" in ln]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def test_a_disk_full_while_checkpointing_is_one_line_and_the_last_checkpoint_resumes_from_a_copy(
        straight, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    argv = ["train", DIGITS, *FAST]
    _fail_atomic_writes(monkeypatch, runfolder.CHECKPOINT, nth=3)  # epochs 1 and 2 saved, epoch 3's save fails
    assert cli.main(argv + ["--output", str(run)]) == 1
    line = _one_error(capsys)
    monkeypatch.undo()
    assert f"cannot write {run / runfolder.CHECKPOINT}: No space left on device" in line, line
    assert "the last complete checkpoint, epoch 2, is intact" in line and "free space" in line, line
    assert f"--output {run} --resume" in line, line
    # intact: the checkpoint of epoch 2, the config, a log of whole records; no temporary left
    assert ckpt.load(run)["epoch"] == 2 and C.load(run / runfolder.CONFIG) == C.load(DIGITS, FAST)
    assert [r["epoch"] for r in _whole_lines(run / runfolder.METRICS) if r["kind"] == "epoch"] == [0, 1]
    assert not [p for p in run.iterdir() if runfolder.temp_writer(p.name) is not None]
    # the folder copied elsewhere (the original gone): resume there, the same run as one never interrupted
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(run, copy)
    shutil.rmtree(run)
    assert cli.main(argv + ["--output", str(copy), "--resume"]) == 0
    _same_run(copy, straight)


def test_a_disk_full_mid_record_leaves_no_torn_line(straight, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    metrics = run / runfolder.METRICS
    real, lines = os.write, []

    def write(fd, data):  # metrics.jsonl's 8th record: half of it reaches the disk, then ENOSPC
        if metrics.exists() and os.path.samestat(os.fstat(fd), os.stat(metrics)):
            lines.append(data)
            if len(lines) == 8:
                real(fd, bytes(data)[: len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)
    assert cli.main(["train", DIGITS, *FAST, "--output", str(run)]) == 1
    line = _one_error(capsys)
    monkeypatch.undo()
    assert f"cannot write {metrics}: No space left on device" in line, line
    kept = ckpt.load(run)["epoch"]
    assert f"epoch {kept}, is intact" in line and kept >= 1, line
    assert len(_whole_lines(metrics)) == 7  # the cut record is gone, the seven before it are whole
    assert cli.main(["train", DIGITS, *FAST, "--output", str(run), "--resume"]) == 0
    _same_run(run, straight)


def test_a_disk_full_before_the_first_checkpoint_says_there_is_nothing_to_resume(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    _fail_atomic_writes(monkeypatch, runfolder.CHECKPOINT, nth=1)
    assert cli.main(["train", DIGITS, *FAST, "--output", str(run)]) == 1
    line = _one_error(capsys)
    assert "checkpoint.pt: No space left on device" in line and "nothing to resume" in line, line
    assert not (run / runfolder.CHECKPOINT).exists()


@pytest.mark.parametrize("cause", ["under a file", "read-only", "no permission"])
def test_an_output_that_cannot_be_written_is_one_line_before_any_work(cause, tmp_path, monkeypatch, capsys):
    out = tmp_path / "runs" / "x"
    if cause == "under a file":  # real: a path through a plain file
        (tmp_path / "runs").write_text("not a folder")
        want = "Not a directory"
    else:  # injected: root writes anywhere, so a chmod would not stop this test's process
        err = errno.EROFS if cause == "read-only" else errno.EACCES
        want = os.strerror(err)
        real = open

        def refuse(file, mode="r", *args, **kwargs):
            if "w" in mode:
                raise OSError(err, want, str(file))
            return real(file, mode, *args, **kwargs)

        monkeypatch.setattr(runfolder, "open", refuse, raising=False)
    assert cli.main(["train", DIGITS, *FAST, "--output", str(out)]) == 2
    err_text = capsys.readouterr().err
    assert len(err_text.strip().splitlines()) == 1, err_text  # not even the "starting" line: nothing began
    assert err_text.startswith(f"dsr-tune: error: --output {out}: cannot write ") and want in err_text, err_text
    assert not out.exists() and (cause == "under a file" or not (tmp_path / "runs").exists())  # nothing made


def test_a_storage_error_is_an_oserror_naming_the_file_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    runfolder.atomic_write(path, "old\n")
    _fail_atomic_writes(monkeypatch, "config.yaml", nth=1, err=errno.EDQUOT)
    with pytest.raises(OSError) as caught:  # what the sweep will catch: a runfolder.StorageError
        runfolder.atomic_write(path, "new\n" * 1000)
    exc = caught.value
    assert isinstance(exc, runfolder.StorageError) and exc.path == path and exc.errno == errno.EDQUOT
    assert str(exc) == f"cannot write {path}: {os.strerror(errno.EDQUOT)}"
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["config.yaml"]
    # a copy whose source is missing is the source's error, not a storage fault of the target
    with pytest.raises(FileNotFoundError) as missing:
        runfolder.atomic_copy(tmp_path / "nope", tmp_path / "dst")
    assert not isinstance(missing.value, runfolder.StorageError)


def _saved(obj) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _limit_file_size(limit: int):
    def apply():  # a write past the limit fails with EFBIG (SIGXFSZ ignored), as the kernel does it
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_real_write_failure_in_the_dsr_tune_process_is_one_line(straight, tmp_path):
    """No injection: the kernel cuts the last checkpoint's write short (it is the
    largest file: it carries every record), the process reports it in one line."""
    run = tmp_path / "run"
    exe = str(Path(sys.executable).with_name("dsr-tune"))
    last = ckpt.load(straight)  # the size of epoch 3's checkpoint: the last one less its epoch's records
    last["records"] = [r for r in last["records"] if r["epoch"] < 3]
    smaller = len(_saved(last))
    limit = (smaller + (straight / runfolder.CHECKPOINT).stat().st_size) // 2
    assert smaller < limit < (straight / runfolder.CHECKPOINT).stat().st_size
    done = subprocess.run([exe, "train", DIGITS, *FAST, "--output", str(run)], capture_output=True, text=True,
                          timeout=600, preexec_fn=_limit_file_size(limit), cwd=tmp_path)
    # the embedded MLflow store is on the same full disk: its logger may say once that it went offline
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("dsr-tune: error:")]
    assert done.returncode == 1 and len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"cannot write {run / runfolder.CHECKPOINT}: File too large" in errors[0], errors
    assert "epoch 3, is intact" in errors[0] and "fix the storage" in errors[0], errors
    assert ckpt.load(run)["epoch"] == 3 and len(_whole_lines(run / runfolder.METRICS)) > 3
    assert not [p for p in run.iterdir() if runfolder.temp_writer(p.name) is not None]
    done = subprocess.run([exe, "train", DIGITS, *FAST, "--output", str(run), "--resume"], capture_output=True,
                          text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    _same_run(run, straight)


def test_a_tracking_store_that_breaks_mid_run_does_not_stop_training(tmp_path):
    """The live MLflow logger's store loses its metric tables after the first epoch:
    the logger goes offline (noted in the run folder for dsr-tune sync), training
    finishes with every record in metrics.jsonl."""
    import sqlite3
    import time

    from mlflow import MlflowClient

    from dsr_tune.tracking import MlflowLoggerSpec, store
    from dsr_tune.tracking.logger import OFFLINE_FILE, offline_reason

    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    client = store.client(store.resolve(uri))
    rid = client.create_run(store.experiment_id(client, "faults", store.resolve(uri))).info.run_id
    run = tmp_path / "run"
    logger = MlflowLoggerSpec(uri, str(run), run_id=rid).make()

    def break_the_store(record, path):
        if record["epoch"] != 0:
            return
        deadline = time.monotonic() + 60
        while not MlflowClient(uri).get_metric_history(rid, "epoch/test_acc") and time.monotonic() < deadline:
            time.sleep(0.1)  # the logger writes from its own thread: let epoch 1 land first
        with sqlite3.connect(db) as con:
            con.execute("DROP TABLE metrics")
            con.execute("DROP TABLE latest_metrics")

    record = train(C.load(DIGITS, FAST), run, loggers=[logger], on_epoch_end=break_the_store, progress=False)
    assert record["epoch"] == 3 and ckpt.load(run)["epoch"] == 4
    assert [r["epoch"] for r in runfolder.epochs(run)] == [0, 1, 2, 3]
    assert not logger.online and (run / OFFLINE_FILE).exists() and "metrics" in offline_reason(run)


def test_a_copied_ray_train_run_folder_resumes_from_its_own_storage(tmp_path, monkeypatch):
    """A Ray Train run keeps its checkpoints in <output>/ray unless train.storage_path
    says otherwise: a copy of the folder resumes from the copy's, not the original's."""
    import contextlib

    import dsr_tune.distributed.launcher as D

    calls = []
    monkeypatch.setattr(D, "ray_session", lambda *a, **k: contextlib.nullcontext(True))
    monkeypatch.setattr(D, "fit", lambda cfg, **kw: calls.append(kw))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cfg = C.load(DIGITS, ["train.workers=2"])
    D.launch(cfg, tmp_path / "run")
    (tmp_path / "run" / "ray" / calls[0]["name"] / "epoch_00001").mkdir(parents=True)
    shutil.copytree(tmp_path / "run", tmp_path / "elsewhere" / "copy")
    shutil.rmtree(tmp_path / "run")
    D.launch(cfg, tmp_path / "elsewhere" / "copy", resume=True)
    assert calls[1]["name"] == calls[0]["name"] and calls[1]["storage_path"] is None  # None: <output>/ray, the copy's
    # storage named by the user stays where it is
    shared = tmp_path / "shared"
    D.launch(C.load(DIGITS, ["train.workers=2", f"train.storage_path={shared}"]), tmp_path / "other")
    shutil.copytree(tmp_path / "other", tmp_path / "elsewhere" / "other")
    D.launch(C.load(DIGITS, ["train.workers=2"]), tmp_path / "elsewhere" / "other", resume=True)
    assert calls[3]["storage_path"] == str(shared)
