"""Replay an export in Lava (``Loihi2SimCfg(select_tag="fixed_pt")``), compare it bit for bit
with the PyTorch twin, count synaptic events and report energy.

lava-nc's message infrastructure calls ``multiprocessing.set_start_method("fork")`` when it is
first imported and fails if anything (torch data loading, for one) has already fixed the start
method. On Linux the default already is ``fork``, so we clear a ``fork`` setting and import
Lava's runtime here, once, before any other ``hw_sim`` module needs it.
"""
import multiprocessing as _mp

if _mp.get_start_method(allow_none=True) == "fork":
    _mp.set_start_method(None, force=True)

import lava.magma.runtime.runtime  # noqa: E402,F401  (sets the start method itself)
