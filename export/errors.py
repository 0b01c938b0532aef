"""The one exception family of the ``export`` package."""
from mksgn.errors import MksgnError


class ExportError(MksgnError):
    """A checkpoint cannot be exported: what was wrong, where, and what to do."""
