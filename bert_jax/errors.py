"""The errors a user can fix. The CLIs print these as one sentence and exit 2; every other
exception is a bug or a machine problem and keeps its traceback.

Each class also derives from the builtin its callers caught before (ValueError, RuntimeError,
...), so `except ValueError` around library calls keeps working.
"""


class UserError(Exception):
  """Bad input, flags, files or state: the message says what was wrong and what to do."""


class ConfigError(UserError, ValueError):
  """A config value or flag that cannot work."""


class DataError(UserError, ValueError):
  """Bad input data, with the file, the problem and what to do."""


class ModelFileError(UserError, ValueError):
  """A model directory, HF folder or TF1 checkpoint that cannot be read or written."""


class CheckpointError(UserError, RuntimeError):
  """A training checkpoint that cannot be used, with what to do about it."""


class TrainingError(UserError, RuntimeError):
  """A run that cannot continue, with the reason and what to do."""


class MissingFileError(UserError, FileNotFoundError):
  """A path the user gave does not exist."""


class ExistsError(UserError, FileExistsError):
  """A path would be overwritten; pass the overwrite option or choose another."""
