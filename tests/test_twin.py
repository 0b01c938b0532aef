"""The integer twin's fast paths compute the same integers as its plain float64 path: float32
spike-driven synapses where :func:`export.twin.float32_exact` proves every partial sum below 2²⁴,
and batched runs (``batch_size``) merged into one result. Real NW-UCLA clips, tiny MK-SGN."""
import copy

import numpy as np
import pytest
import torch

from export import twin
from export.frontend import from_model
from export.passes import SPLIT_KINDS
from export.pipeline import lower
from export.twin import F32_EXACT, float32_exact, run_graph

from .export_fixtures import real_clips, tiny_model


@pytest.fixture(scope="module", params=[(), SPLIT_KINDS], ids=["plain", "split"])
def lowered(request):
    model = tiny_model("mksgn")
    return lower(from_model(model), real_clips("train", 16), weight_split=request.param), real_clips("test", 8)


def _same(a, b):
    assert torch.equal(a.logits, b.logits)
    assert a.spike_counts == b.spike_counts and a.saturation == b.saturation
    for key in ("spikes", "u", "v", "attention_mid"):
        da, db = getattr(a, key), getattr(b, key)
        assert da.keys() == db.keys()
        for name in da:
            assert torch.equal(da[name].to(torch.float64), db[name].to(torch.float64)), (key, name)


def test_float32_synapses_give_the_float64_integers(lowered, monkeypatch):
    """Every spike, u, v, a_in, attention middle product and logit of the default run equals
    a run with every synapse forced to float64, on real clips; and the fast path is taken."""
    q, x = lowered
    assert sum(float32_exact(s) for s in q.synapses.values()) >= len(q.synapses) // 2
    fast = run_graph(q, x, mode="int", record=True)
    monkeypatch.setattr(twin, "float32_exact", lambda s: False)
    slow = run_graph(q, x, mode="int", record=True)
    _same(fast, slow)


def test_float32_exact_is_the_2_24_bound():
    """Per output row: Σ|mantissa| · number of summed sources < 2²⁴; the host input conv,
    attention and pool are never float32."""
    q = lower(from_model(tiny_model("mksgn")), real_clips("train", 8), weight_split=())
    conv = next(s for s in q.synapses.values() if s.kind == "conv")
    s = copy.copy(conv)
    s.weight_mant = np.zeros((3, 4, 5, 1), dtype=np.int64)
    s.weight_mant[1, 0, 0, 0] = F32_EXACT // len(s.sources) - 1
    assert float32_exact(s)
    s.weight_mant[1, 1, 0, 0] = 1  # the same row reaches the bound
    assert not float32_exact(s)
    s.weight_mant[1, 1, 0, 0] = 0
    s.weight_mant[2, 1, 0, 0] = F32_EXACT // len(s.sources) - 1  # another row: each row alone counts
    assert float32_exact(s)
    for kind in ("input_conv", "attention", "pool"):
        assert not any(float32_exact(t) for t in q.synapses.values() if t.kind == kind)


def test_a_batched_run_equals_one_run(lowered):
    """``batch_size`` splits the clips and merges: equal records, counts and saturation in
    integer mode (also with ``cache_weights=False``), equal maxima of the input currents in
    float mode."""
    q, x = lowered
    one = run_graph(q, x, mode="int", record=True)
    _same(run_graph(q, x, mode="int", record=True, batch_size=3), one)
    # weights converted at each use (the export's saturation check) give the same integers
    _same(run_graph(q, x, mode="int", record=True, batch_size=3, cache_weights=False), one)
    a = run_graph(q, x, mode="float", track_currents=True, batch_size=3)
    b = run_graph(q, x, mode="float", track_currents=True)
    assert a.currents_absmax == b.currents_absmax and torch.equal(a.logits, b.logits)
    with pytest.raises(ValueError, match="float_dtype"):
        run_graph(q, x, mode="float", float_dtype=torch.float16)
