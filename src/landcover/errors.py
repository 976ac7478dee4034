"""The one exception type users see.

Anything the user can fix (a missing file, a bad option, rasters that do not overlap) is raised as
:class:`LandcoverError` with a single line that names the file and the fix. The CLI prints that line and exits
with code 2; the Python API lets it propagate so notebooks show the same message.
"""

from __future__ import annotations


class LandcoverError(Exception):
    """A problem with the user's input, described in one line."""

    exit_code = 2

    def __init__(self, message: str):
        # Keep messages on one line: CLI users read them in a terminal, scripts grep them.
        super().__init__(" ".join(str(message).split()))
