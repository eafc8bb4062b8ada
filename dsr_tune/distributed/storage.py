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

Every local file written here (the staged checkpoint folder, a restored run
record, init.pt in a local or shared storage, a download) goes through
:func:`dsr_tune.runfolder.atomic_write`, named as its temporaries are; the
file names are :mod:`dsr_tune.runfolder`'s.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from .. import runfolder
from ..runfolder import CHECKPOINT, INIT, MANIFEST, METRICS, RUN_RECORD

PREFIX = "epoch_"
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
        return str(Path(run_dir).resolve() / runfolder.RAY_STORAGE)
    if "://" in storage_path:
        return storage_path
    return str(Path(storage_path).expanduser().resolve())


def _fs(storage_path: str):
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(storage_path)


def _local(fs) -> bool:
    import pyarrow.fs

    return isinstance(fs, pyarrow.fs.LocalFileSystem)


def clean_stale(storage_path: str, name: str) -> list[str]:
    """Rank 0 at the start of a worker group: remove temporary files left in a
    local ``<storage_path>/<name>/`` by a writer that was killed. The folder is
    the group's alone (the group before it is gone, perhaps from another node,
    so a pid would tell nothing): every temporary goes. Object stores hold no
    temporaries (see :func:`put_init`)."""
    if "://" in storage_path and not storage_path.startswith("file://"):
        return []
    _, base = _fs(storage_path)
    return [str(p) for p in runfolder.clean_stale(Path(base) / name, owned=True)]


# ---------------------------------------------------------------- writing (rank 0)


def stage(run_dir: Path, epochs_done: int) -> Path:
    """A local folder holding this epoch's checkpoint and run record, ready for
    ``ray.train.report``: a temporary of the run folder (``.ray_stage_epoch_<N>.tmp-<pid>``),
    removed after the report, or at the next start if this process dies first.
    The checkpoint is a hard link where possible: the trainer replaces it
    atomically, never edits it in place; metrics.jsonl is appended to in
    place, so it is copied."""
    run_dir = Path(run_dir)
    folder = runfolder.temp_path(run_dir / f"ray_stage_{checkpoint_dir_name(epochs_done)}")
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    sizes = {}
    for name in (CHECKPOINT, *RUN_RECORD):
        src = run_dir / name
        if not src.exists():
            continue
        if name == CHECKPOINT:
            _link_or_copy(src, folder / name)
        else:
            runfolder.atomic_copy(src, folder / name)
        sizes[name] = (folder / name).stat().st_size
    runfolder.atomic_write(folder / MANIFEST, json.dumps({"epoch": epochs_done, "files": sizes}))
    return folder


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or no hard links there
        runfolder.atomic_copy(src, dst)


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
    for name in (*RUN_RECORD, INIT):  # INIT: checkpoints that still held it
        src = Path(checkpoint_dir) / name
        if src.exists():
            runfolder.atomic_copy(src, Path(run_dir) / name)


def sync_run_record(checkpoint, run_dir: Path) -> bool:
    """After a run: if ``run_dir`` lacks the final record (rank 0 ran on another
    node without a shared run folder), copy it and the checkpoint from storage.
    Returns True when something was copied."""
    if checkpoint is None:
        return False
    run_dir = Path(run_dir)
    try:  # compare the small file first: no download of checkpoint.pt when it is already here
        with checkpoint.filesystem.open_input_stream(f"{checkpoint.path}/{METRICS}") as f:
            theirs = f.read()
    except (FileNotFoundError, OSError):
        return False
    ours = run_dir / METRICS
    if ours.exists() and ours.read_bytes() == theirs:
        return False
    with checkpoint.as_directory() as folder:
        restore_run_record(Path(folder), run_dir)
        runfolder.atomic_copy(Path(folder) / CHECKPOINT, run_dir / CHECKPOINT)
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
    if _local(fs):  # a local or shared folder: the one atomic write (a cut-off copy never has init.pt's name)
        runfolder.atomic_copy(src, dst)
        return True
    # An object store (s3, gs, abfs) makes an object visible only once its upload is
    # complete, so it is written in place: no temporary name, nothing to clean up.
    fs.create_dir(f"{base.rstrip('/')}/{name}", recursive=True)
    pyarrow.fs.copy_files(str(src), dst, source_filesystem=pyarrow.fs.LocalFileSystem(), destination_filesystem=fs)
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
    runfolder.atomic_copy(path, dst, opener=fs.open_input_stream)
    return True
