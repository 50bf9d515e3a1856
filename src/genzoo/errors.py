"""The one exception type users see.

Every failure we can foresee (bad data, bad config, corrupt run directory, non-finite loss) is raised as a
``GenzooError`` whose message names the file or value at fault. The CLI prints it on one line and exits non-zero;
library users catch it.
"""

from __future__ import annotations


class GenzooError(Exception):
    """A failure caused by input or state the user controls, with a message that names the problem."""


class DataError(GenzooError):
    """A data spec that names nothing, or data that cannot be read or is malformed."""


class ConfigError(GenzooError):
    """An unknown model, an unknown hyperparameter, or a value of the wrong type."""


class RunDirError(GenzooError):
    """A run directory that is missing, incomplete or corrupt."""


class NonFiniteError(GenzooError):
    """A loss or gradient became NaN/Inf during training."""
