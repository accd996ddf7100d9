"""Errors that describe a problem the user can fix. Their messages name the problem and the fix;
the command-line tools print them as one line and exit with status 1 (see ``cli.py``)."""


class UserError(Exception):
    """Base class: bad input, not a bug."""


class CheckpointError(UserError):
    """A checkpoint is missing, corrupt, or does not fit the run."""


class NonFiniteError(UserError):
    """The loss or the gradient stopped being finite."""


class DatasetNotPreparedError(UserError, FileNotFoundError):
    """The TFDS dataset has not been prepared in the data directory."""


class DiskFullError(CheckpointError):
    """A checkpoint could not be written for want of space; earlier checkpoints are intact."""
