"""The errors OpenHART raises on purpose, under one base class, each with the CLI's exit code.

Library code raises these (never ``sys.exit``, never a CLI type); the command line turns any
:class:`OpenHARTError` into one line on stderr and its class's exit code, and shows the traceback
only with ``--debug`` or ``OPENHART_DEBUG=1``. Each category also subclasses the built-in
exception that callers already catch (``ValueError``, ``OSError``, ``RuntimeError``), so code
written against the built-ins keeps working.

Exit codes: 0 success, 1 an unexpected error (a bug: the traceback is printed), 2 a usage error
(the argument parser's own), and from 3 up, one per category below.
"""

from __future__ import annotations

import errno

# errno values that mean "the disk cannot take more": no space left, quota reached, or a file
# past the process's size limit (``RLIMIT_FSIZE``). Writers report them alike, as a full disk.
NO_ROOM_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class OpenHARTError(Exception):
    """Base class: an expected failure whose message is meant for the user, in one line."""

    exit_code: int = 1


class InvalidInputError(OpenHARTError, ValueError):
    """A prompt, image, mask, seed or option that cannot be used as given."""

    exit_code = 3


class ModelLoadError(OpenHARTError, ValueError):
    """A model folder, preset name or weights file that does not load (names the file or tensor)."""

    exit_code = 4


class ConfigError(OpenHARTError, ValueError):
    """A config or recipe that is malformed (names the field)."""

    exit_code = 5


class StorageError(OpenHARTError, OSError):
    """A file or folder that cannot be read or written (names the path)."""

    exit_code = 6


class NetworkError(OpenHARTError, RuntimeError):
    """A download or remote lookup that failed, or files missing from the offline cache."""

    exit_code = 7


class DependencyError(OpenHARTError, RuntimeError):
    """An optional dependency or a device that this machine does not have."""

    exit_code = 8
