"""Expected errors: each carries a one-line message the CLI prints without a traceback."""


class LipstepError(Exception):
    """Base class for errors caused by bad input or configuration, not by bugs."""


class ConfigError(LipstepError):
    """A configuration key, value or file is invalid."""


class MediaError(LipstepError):
    """A media file is missing, empty, corrupt or lacks a needed stream."""

    def __init__(self, path, problem: str):
        self.path, self.problem = str(path), problem
        super().__init__(f"{path}: {problem}")


class DataError(LipstepError):
    """A dataset or prepared directory is missing, empty or malformed."""


class MissingDependency(LipstepError):
    """An optional package that a requested feature needs is not installed (the message names the extra)."""


class IntegrityError(LipstepError):
    """A file lipstep wrote is damaged, truncated or missing (its sha256 differs from the recorded one)."""


class UnsafeFile(LipstepError):
    """A file points outside where it belongs or holds more than data (pickled code); it is refused, never followed."""
