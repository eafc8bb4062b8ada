"""Where a Ray Train run keeps its checkpoints, and how to find the newest one.

Layout under ``<storage_path>/<name>/`` (local folder, shared file system or
object store; Ray Train copies each reported checkpoint there)::

    init.pt                 the initial weights and masks (ablations), stored once
                            by rank 0 beside the checkpoints (Ray's num_to_keep
                            never deletes it; not re-uploaded every epoch)
    epoch_00003/            one per checkpointed epoch (epochs done, 5 digits)
        checkpoint.pt       everything the single-process checkpoint holds
        metrics.jsonl       the run record up to and including that epoch
        config.yaml         the resolved config
        manifest.json       {"epoch": 3, "files": {name: size in bytes}}

(Checkpoints written before init.pt moved out hold it inside; it is restored
from there too.)

The manifest makes a checkpoint checkable without Ray: one whose files do not
all have their listed sizes was cut off mid-upload and is skipped. That lets a
restarted worker group take the newest *complete* checkpoint in storage, even
one Ray Train had not registered yet (a worker that dies within the
controller's poll interval after a report loses that report in Ray's books,
never its files).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

PREFIX = "epoch_"
MANIFEST = "manifest.json"
# = dsr_tune.train.checkpoint.LATEST (tests check it): not imported, so that this module
# (which the sweep driver loads) does not pull in torch
CHECKPOINT = "checkpoint.pt"
INIT = "init.pt"
RUN_RECORD = ("metrics.jsonl", "config.yaml")  # files that follow the checkpoint around
_NAME = re.compile(rf"^{PREFIX}(\d+)$")


def checkpoint_dir_name(epochs_done: int) -> str:
    return f"{PREFIX}{epochs_done:05d}"


def epoch_of(path: str | None) -> int | None:
    """Epochs done for a checkpoint folder named by :func:`checkpoint_dir_name`."""
    if not path:
        return None
    match = _NAME.match(Path(str(path).rstrip("/")).name)
    return int(match.group(1)) if match else None


def resolve(storage_path: str | None, run_dir: Path) -> str:
    """An absolute storage location: URIs as given, local paths made absolute
    (Ray workers run in their own working directories); None -> <run_dir>/ray."""
    if not storage_path:
        return str(Path(run_dir).resolve() / "ray")
    if "://" in storage_path:
        return storage_path
    return str(Path(storage_path).expanduser().resolve())


def _fs(storage_path: str):
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(storage_path)


# ---------------------------------------------------------------- writing (rank 0)


def stage(run_dir: Path, epochs_done: int) -> Path:
    """A local folder holding this epoch's checkpoint and run record, ready for
    ``ray.train.report``. The .pt files are hard links where possible: the
    trainer replaces them atomically, never edits them in place; metrics.jsonl
    is appended to in place, so it is copied."""
    run_dir = Path(run_dir)
    folder = run_dir / f".ray_stage_{checkpoint_dir_name(epochs_done)}"  # removed after the report
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    sizes = {}
    for name in (CHECKPOINT, *RUN_RECORD):
        src = run_dir / name
        if not src.exists():
            continue
        if name.endswith(".pt"):
            _link_or_copy(src, folder / name)
        else:
            shutil.copyfile(src, folder / name)
        sizes[name] = (folder / name).stat().st_size
    (folder / MANIFEST).write_text(json.dumps({"epoch": epochs_done, "files": sizes}))
    return folder


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or no hard links there
        shutil.copyfile(src, dst)


# ---------------------------------------------------------------- reading


def _complete(fs, folder: str) -> bool:
    """Every file listed in the manifest is there with its size."""
    try:
        with fs.open_input_stream(f"{folder}/{MANIFEST}") as f:
            manifest = json.loads(f.read().decode())
        files = manifest["files"]
    except Exception:  # missing or cut-off manifest: not a finished upload
        return False
    if CHECKPOINT not in files:
        return False
    infos = fs.get_file_info([f"{folder}/{name}" for name in files])
    return all(info.size == size for info, size in zip(infos, files.values()))


def newest_complete(storage_path: str, name: str) -> tuple[str, int] | None:
    """(URI-or-path of the folder, epochs done) of the newest complete
    checkpoint under ``storage_path/name``, or None."""
    import pyarrow.fs

    fs, base = _fs(storage_path)
    root = f"{base.rstrip('/')}/{name}"
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    except (FileNotFoundError, OSError):
        return None
    found = sorted(((epoch_of(i.path), i.path) for i in infos
                    if i.type == pyarrow.fs.FileType.Directory and epoch_of(i.path) is not None), reverse=True)
    for epoch, path in found:
        if _complete(fs, path):
            return _as_uri(storage_path, base, path), epoch
    return None


def _as_uri(storage_path: str, base: str, fs_path: str) -> str:
    """Put the scheme back on a path pyarrow stripped (s3://bucket/... -> bucket/...)."""
    if "://" not in storage_path:
        return fs_path
    return storage_path.rstrip("/") + fs_path[len(base.rstrip("/")):]


def restore_run_record(checkpoint_dir: Path, run_dir: Path) -> None:
    """Put a checkpoint's run record into ``run_dir`` (overwriting), so the
    records after a restart continue exactly where the checkpoint stopped, on
    whichever node rank 0 now runs."""
    if Path(checkpoint_dir).resolve() == Path(run_dir).resolve():
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in (*RUN_RECORD, INIT):  # INIT: checkpoints that still held it
        src = Path(checkpoint_dir) / name
        if src.exists():
            tmp = run_dir / f".{name}.restore"
            shutil.copyfile(src, tmp)
            tmp.replace(run_dir / name)


def sync_run_record(checkpoint, run_dir: Path) -> bool:
    """After a run: if ``run_dir`` lacks the final record (rank 0 ran on another
    node without a shared run folder), copy it and the checkpoint from storage.
    Returns True when something was copied."""
    if checkpoint is None:
        return False
    run_dir = Path(run_dir)
    try:  # compare the small file first: no download of checkpoint.pt when it is already here
        with checkpoint.filesystem.open_input_stream(f"{checkpoint.path}/metrics.jsonl") as f:
            theirs = f.read()
    except (FileNotFoundError, OSError):
        return False
    ours = run_dir / "metrics.jsonl"
    if ours.exists() and ours.read_bytes() == theirs:
        return False
    with checkpoint.as_directory() as folder:
        restore_run_record(Path(folder), run_dir)
        shutil.copyfile(Path(folder) / CHECKPOINT, run_dir / CHECKPOINT)
    if not (run_dir / INIT).exists():
        _download(checkpoint.filesystem, f"{checkpoint.path.rstrip('/').rsplit('/', 1)[0]}/{INIT}", run_dir / INIT)
    return True


# ---------------------------------------------------------------- init.pt, once per run


def put_init(storage_path: str, name: str, run_dir: Path) -> bool:
    """Rank 0: store ``run_dir``/init.pt at ``<storage_path>/<name>/init.pt``
    unless a file of the same size is there. Returns True when it uploaded."""
    import pyarrow.fs

    src = Path(run_dir) / INIT
    if not src.exists():
        return False
    fs, base = _fs(storage_path)
    dst = f"{base.rstrip('/')}/{name}/{INIT}"
    info = fs.get_file_info(dst)
    if info.type == pyarrow.fs.FileType.File and info.size == src.stat().st_size:
        return False
    fs.create_dir(f"{base.rstrip('/')}/{name}", recursive=True)
    tmp = f"{dst}.tmp"  # a cut-off upload never has init.pt's name
    pyarrow.fs.copy_files(str(src), tmp, source_filesystem=pyarrow.fs.LocalFileSystem(), destination_filesystem=fs)
    fs.move(tmp, dst)
    return True


def get_init(storage_path: str, name: str, run_dir: Path) -> bool:
    """Rank 0 after a restart: ``run_dir``/init.pt from storage when the run
    folder lacks it (rank 0 now runs on another node). True when copied."""
    if (Path(run_dir) / INIT).exists():
        return False
    fs, base = _fs(storage_path)
    return _download(fs, f"{base.rstrip('/')}/{name}/{INIT}", Path(run_dir) / INIT)


def _download(fs, path: str, dst: Path) -> bool:
    import pyarrow.fs

    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.download")
    pyarrow.fs.copy_files(path, str(tmp), source_filesystem=fs, destination_filesystem=pyarrow.fs.LocalFileSystem())
    tmp.replace(dst)
    return True
