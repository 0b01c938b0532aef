"""The one exception family of the ``hw_sim`` package."""
from mksgn.errors import MksgnError


class SimError(MksgnError):
    """An export cannot be simulated or compared: what was wrong, where, and what to do."""
