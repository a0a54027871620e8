"""Error types: what the user can fix, and the exit code each one gives.

Everything the user can act on (a bad image, a bad checkpoint, an alignment that failed, a job
that does not fit in memory, COLMAP that could not register the photos, a bad setting) is a
:class:`UserError`. The page shows its message as it is; the CLI prints it on one line and exits
with its class's ``exit_code``. Any other exception is a bug: it is logged with its traceback
under a short id (:func:`internal_error_id`) and shown as an internal error naming that id.

The concrete classes also derive from the builtin they always were (``ValueError`` or
``RuntimeError``), so code that caught those keeps working.

>>> issubclass(ImageLoadError, UserError), ImageLoadError.exit_code
(True, 3)
>>> exit_code_for(CheckpointError("x")), exit_code_for(KeyError("x"))
(4, 70)
"""

from __future__ import annotations

import uuid

__all__ = [
    "EXIT_OK",
    "EXIT_FAILED",
    "EXIT_USAGE",
    "EXIT_INPUT",
    "EXIT_WEIGHTS",
    "EXIT_INTERNAL",
    "EXIT_TERMINATED",
    "EXIT_INTERRUPTED",
    "UserError",
    "SettingsError",
    "ImageLoadError",
    "CheckpointError",
    "ReconstructionError",
    "AlignmentError",
    "ColmapError",
    "PairsFileError",
    "InsufficientMemoryError",
    "StorageError",
    "DiskFullError",
    "ResultExpiredError",
    "RunLimitError",
    "Cancelled",
    "Interrupted",
    "Terminated",
    "exit_code_for",
    "internal_error_id",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_WEIGHTS = 4
EXIT_INTERNAL = 70
EXIT_TERMINATED = 143
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """Something the user can fix; the message says what and how."""

    exit_code: int = EXIT_FAILED
    title: str = "Failed"


class SettingsError(UserError, ValueError):
    """A setting out of range or of the wrong kind (a bad command line, a bad API parameter)."""

    exit_code = EXIT_USAGE
    title = "Invalid setting"


class ImageLoadError(UserError, ValueError):
    """An input file that cannot be used (missing, not an image, truncated, too small, a
    decompression bomb); the message starts with the file name."""

    exit_code = EXIT_INPUT
    title = "Bad input file"

    def __init__(self, message: str, *, filename: str | None = None) -> None:
        super().__init__(message)
        self.filename = filename


class CheckpointError(UserError, ValueError):
    """A checkpoint could not be found, read, parsed or matched to the network."""

    exit_code = EXIT_WEIGHTS
    title = "Weights unavailable"


class ReconstructionError(UserError, ValueError):
    """The engine ran but could not build a scene from these inputs."""

    title = "Reconstruction failed"


class AlignmentError(ReconstructionError):
    """The predictions cannot be aligned (non-finite values, degenerate focal, disconnected pairs...)."""


class ColmapError(ReconstructionError):
    """COLMAP could not reconstruct the images (too few registered, no matches, bad input)."""


class PairsFileError(UserError, ValueError):
    """A pair-predictions file (``pairs.npz``) that cannot be read: a bad input file (exit 3)."""

    exit_code = EXIT_INPUT
    title = "Unreadable pairs file"


class InsufficientMemoryError(UserError, RuntimeError):
    """The job does not fit in the device memory (predicted before running, or a CUDA OOM)."""

    title = "Not enough memory"


class StorageError(UserError, RuntimeError):
    """Not enough storage for a new run: the output folder's size limit is reached by results still
    in use, or the disk's free space is below the configured floor. Nothing was written."""

    title = "Not enough storage"


class DiskFullError(StorageError):
    """The disk filled up while a run was writing; the message names the folder and the free space.
    The run's partial files were removed, so the next run succeeds once space is freed."""

    def __init__(self, message: str, *, folder: str | None = None, free_bytes: int | None = None) -> None:
        super().__init__(message)
        self.folder = folder
        self.free_bytes = free_bytes


class ResultExpiredError(UserError, RuntimeError):
    """A kept result whose files were cleaned up (too old, or its session ended): run it again."""

    title = "Result expired"


class RunLimitError(UserError, ValueError):
    """A run over one of the web app's per-run limits (pairs, run time); the message names the limit."""

    title = "Over the server's limits"


class Cancelled(UserError, RuntimeError):
    """The user cancelled the run."""

    exit_code = EXIT_INTERRUPTED
    title = "Cancelled"


class Interrupted(Cancelled):
    """The process is shutting down (SIGTERM/SIGINT): the running job was stopped and marked
    ``interrupted``; raised in worker threads at their next progress report."""

    exit_code = EXIT_TERMINATED
    title = "Server shutting down"


class Terminated(BaseException):
    """A stop signal in the main thread (SIGTERM, or SIGINT where KeyboardInterrupt would be
    swallowed): a BaseException, so no ``except Exception`` catches it on the way out. Exit code
    128 + the signal number: 143 for SIGTERM, 130 for SIGINT."""

    exit_code = EXIT_TERMINATED

    def __init__(self, signum: int = 15) -> None:
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum
        self.exit_code = 128 + signum


def exit_code_for(exc: BaseException) -> int:
    """The CLI exit code of an exception: its class's for a :class:`UserError`, 3 for a missing
    file, 130 for Ctrl-C, 143 for SIGTERM, else 70 (internal error)."""
    if isinstance(exc, (UserError, Terminated)):
        return exc.exit_code
    if isinstance(exc, FileNotFoundError):
        return EXIT_INPUT
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return EXIT_INTERNAL


def internal_error_id() -> str:
    """A short id that names one internal error in the log (``E-1a2b3c4d``)."""
    return "E-" + uuid.uuid4().hex[:8]
