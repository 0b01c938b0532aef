"""The command-line layer: ``mksgn-data``, ``mksgn-train``, ``mksgn-eval`` (``cli.data``,
``cli.train``, ``cli.evaluate``), ``mksgn-export`` / ``mksgn-qcheck`` (``cli.export``) and
``mksgn-sim`` / ``mksgn-energy`` (``cli.sim``).

The top layer (docs/design.md, "Layers"): these modules may import ``mksgn``, ``export`` and
``hw_sim``; none of those imports them.
"""
