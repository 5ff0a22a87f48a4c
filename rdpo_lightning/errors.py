"""Bad input found while a run starts (a path that does not exist, a column the data lacks, an adapter that does not
fit the model): a ``ValueError`` whose message names the YAML key, which ``rdpo`` prints as one line.

Configuration values are checked when the CLI builds the objects and reported there; these errors surface later, in
``setup`` / ``configure_model``, when files are read. Raising this class (rather than a plain ``ValueError``) tells
the CLI the message is complete for a user, so it can drop the traceback without hiding a genuine bug's.
"""

from __future__ import annotations


class InputError(ValueError):
    """A problem with the user's input, described in full (with its YAML key) by the message."""
