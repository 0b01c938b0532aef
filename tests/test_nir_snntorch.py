"""Another framework executes our NIR: snntorch (``snntorch.import_nir.import_from_nir`` on
nirtorch) runs ``mksgn-export --target nir`` of the shipped Base-SGN* on 32 real NW-UCLA
test clips; predictions and per-group spikes are compared with our float model and with the
Loihi integer twin, and asserted against thresholds.

Why thresholds and not equality (export/nir_run.py): NIR is real-valued, so Loihi's
round-toward-zero decays, the 24-bit wrap of u, the clip of v and the rounding of a_in for a
negative weight_exp are not carried; the export quantises the float model's weights to 8-bit
mantissas (+ a low-mantissa partner); snntorch sums in float32 in its own order. A membrane
that lands within those differences of the threshold flips a spike, and flips propagate to
later layers, so agreement falls with depth; an argmax between two close logits can flip.
Measured (shipped model, first 32 test clips, 16 calibration clips here, 64 in
benchmarks/nir_snntorch.py; docs/results.md): spike agreement 0.955-0.999 with the float model
and 0.970-0.9999 with the twin; predictions equal to the float model's on 31/32 clips, to the
twin's on 29/32. The thresholds leave ~2 points below the worst group; a layout, time-step,
threshold or reset error costs far more (the planted case below). The comparison with the twin
runs the twin on 32 clips as well and is marked slow.
"""
from __future__ import annotations

import nir
import numpy as np
import pytest
import snntorch as snn
import torch

from export.exporter import run_export
from export.nir_run import SnntorchRunner, agreement, format_agreement, nir_layout
from export.twin import run_graph
from export.writers.nir_writer import to_nir

from .conftest import ROOT
from .export_fixtures import real_clips, tiny_quantised

SHIPPED = ROOT / "models" / "base_sgn_ucla_joint.pt"
CLIPS = 32
PRED_MIN = 0.90  # predictions equal to the float model's on >= 90 % of the clips (measured 31/32)
PRED_MIN_TWIN = 0.85  # ... to the integer twin's (measured 29/32 with this 16-clip calibration, 61/64 with 64)
SPIKE_MIN_FLOAT = 0.93  # every group's spike agreement with the float model
SPIKE_MIN_TWIN = 0.95  # ... and with the integer twin


def _twin_agreement(runner: SnntorchRunner, graph, x: torch.Tensor) -> dict:
    """Per-group fraction of equal spikes, snntorch vs the integer twin, on clips ``x``."""
    ref = run_graph(graph, x, mode="int", record=runner.groups)
    eq = {g: 0.0 for g in runner.groups}
    for i in range(len(x)):
        _, spikes = runner.run(x[i])
        for g, s in spikes.items():
            eq[g] += float((s == nir_layout(ref.spikes[g][:, i] > 0)).float().mean()) / len(x)
    return eq


def test_snntorch_runs_a_tiny_export_like_the_twin():
    """Fast: snntorch's import of a tiny Base-SGN*'s NIR graph spikes like the integer twin in
    the first groups (4 real clips); with every threshold doubled it does not (the check can
    fail). Only the first groups: this untrained tiny model's deep layers sit close to their
    thresholds, and flips accumulate with depth (0.80 at layer 9 measured); the whole depth
    is asserted on the shipped model below."""
    _, g = tiny_quantised("base_sgn")
    x = real_clips("test", 4)
    graph = to_nir(g)
    runner = SnntorchRunner(graph)
    assert sum(isinstance(m, snn.Synaptic) for m in runner.module.modules()) == len(g.groups)
    first = ("sc.lif", "layers.0.gcn_lif", "layers.0.lif")
    eq = _twin_agreement(runner, g, x)
    assert all(eq[n] >= 0.99 for n in first), eq
    for node in graph.nodes.values():  # planted defect: every threshold doubled
        if isinstance(node, nir.CubaLIF):
            node.v_threshold = node.v_threshold * 2
    bad = _twin_agreement(SnntorchRunner(graph), g, x)
    assert all(bad[n] < 0.97 for n in first), bad


@pytest.fixture(scope="module")
def shipped_nir(ucla_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("nir") / "export"
    torch.set_num_threads(1)
    summary = run_export(SHIPPED, "nir", out, ucla_dir, calib_clips=16, progress=False)
    return out, summary


def test_snntorch_agrees_with_the_float_model_on_32_real_clips(shipped_nir, ucla_dir):
    out, summary = shipped_nir
    assert any("Loihi integer arithmetic" in n for n in summary.manifest["not_expressed"])
    assert "NIR does not express: Loihi integer arithmetic" in summary.format()  # the export log
    r = agreement(out, SHIPPED, ucla_dir, clips=CLIPS, progress=False)
    print("\n" + format_agreement(r))
    assert r["clips"] == CLIPS
    assert set(r["spike_agreement"]) == set(summary.graph.groups)
    assert r["prediction_agreement"] >= PRED_MIN
    assert r["spike_agreement_min"] >= SPIKE_MIN_FLOAT, r["spike_agreement"]
    # spikes are not trivially equal (all-silent groups would agree everywhere)
    assert all(0.05 < rate < 0.6 for rate in r["spike_rate"].values()), r["spike_rate"]


@pytest.mark.slow
def test_snntorch_agrees_with_the_integer_twin_on_32_real_clips(shipped_nir, ucla_dir):
    out, summary = shipped_nir
    r = agreement(out, SHIPPED, ucla_dir, clips=CLIPS, graph=summary.graph, progress=False)
    print("\n" + format_agreement(r))
    assert r["prediction_agreement_twin"] >= PRED_MIN_TWIN
    assert r["spike_agreement_twin_min"] >= SPIKE_MIN_TWIN, r["spike_agreement_twin"]
