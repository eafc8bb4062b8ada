"""A full disk for the processes of one test: a sweep's driver and its Ray workers import
this at start-up when a test puts this folder on PYTHONPATH. With $DSR_TUNE_TEST_NO_SPACE
set to a folder, writing a checkpoint under it fails as on a full disk (ENOSPC); every
other file is written as usual."""

import builtins
import errno
import os

_FULL = os.environ.get("DSR_TUNE_TEST_NO_SPACE")

if _FULL:
    _open = builtins.open

    def _no_space(file, mode="r", *args, **kwargs):
        if (any(c in mode for c in "wax+") and isinstance(file, (str, os.PathLike))
                and os.path.abspath(file).startswith(_FULL) and "checkpoint.pt" in os.path.basename(file)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
        return _open(file, mode, *args, **kwargs)

    builtins.open = _no_space
