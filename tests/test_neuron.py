"""LIF neuron: hand-computed traces, strict threshold, reset, surrogate gradient, snntorch parity."""
import pytest
import torch

from mksgn.neuron import LIF, lif_scan


def test_hand_computed_trace():
    # β = 0.25, vth = 1: I = [0.8, 0.8, 0.4, 2.0, 0.5]
    # h0 = 0.8 -> v 0.8; h1 = 0.2 + 0.8 = 1.0 (== vth: no spike) -> v 1.0;
    # h2 = 0.25 + 0.4 = 0.65; h3 = 0.1625 + 2 = 2.1625 -> spike, v 0; h4 = 0 + 0.5 = 0.5
    lif = LIF(beta=0.25, threshold=1.0)
    cur = torch.tensor([0.8, 0.8, 0.4, 2.0, 0.5], dtype=torch.float64).view(5, 1)
    s = lif(cur)
    v = lif.membrane(cur)
    assert s.view(-1).tolist() == [0, 0, 0, 1, 0]
    assert torch.allclose(v.view(-1), torch.tensor([0.8, 1.0, 0.65, 0.0, 0.5], dtype=torch.float64))


def test_exact_threshold_does_not_spike_and_reset_is_immediate():
    s, v = lif_scan(torch.tensor([[1.0], [1.5], [0.25]]), 0.5, 1.0)
    assert s.view(-1).tolist() == [0.0, 1.0, 0.0]  # 1.0 == vth: no spike; 0.5 + 1.5 = 2 > 1
    assert v.view(-1).tolist() == [1.0, 0.0, 0.25]  # v after the spike is 0, next step 0·β + 0.25
    assert LIF(beta=0.0, threshold=1.0)(torch.full((3, 1), 1.0)).sum() == 0  # h == vth every step


def test_matches_snntorch_leaky_zero_reset_no_delay():
    snn = pytest.importorskip("snntorch")
    torch.manual_seed(0)
    cur = torch.randn(6, 4, 7) * 1.5
    ref = snn.Leaky(beta=0.25, threshold=1.0, reset_mechanism="zero", reset_delay=False)
    mem = ref.init_leaky()
    spk_ref, mem_ref = [], []
    for t in range(cur.shape[0]):
        spk, mem = ref(cur[t], mem)
        spk_ref.append(spk)
        mem_ref.append(mem)
    s, v = lif_scan(cur, 0.25, 1.0)
    assert torch.equal(s, torch.stack(spk_ref))
    assert torch.allclose(v, torch.stack(mem_ref), atol=1e-6)


def test_surrogate_gradient_bptt():
    # one neuron, two steps, β = 0.25, a = 1: h0 = 0.7 (in window, no spike), h1 = 0.175 + 0.9
    # = 1.075 (in window, spike). L = s0 + s1: dL/dI1 = 1, dL/dI0 = 1 + β·(1−s0)·1 = 1.25
    cur = torch.tensor([[0.7], [0.9]], requires_grad=True)
    LIF(0.25, 1.0, 1.0)(cur).sum().backward()
    assert torch.allclose(cur.grad.view(-1), torch.tensor([1.25, 1.0]))
    # outside the window (|h − vth| >= a/2) the gradient is zero; the reset blocks the carry
    cur = torch.tensor([[3.0], [0.1]], requires_grad=True)
    LIF(0.25, 1.0, 1.0)(cur).sum().backward()
    assert cur.grad.view(-1).tolist() == [0.0, 0.0]


def test_validation():
    with pytest.raises(ValueError):
        LIF(beta=1.5)
