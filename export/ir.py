"""The small explicit IR that ``export`` hands to the writers, the twin and ``hw_sim``.

A :class:`Graph` is a DAG of

* :class:`NeuronGroup` — a CUBA-LIF population of shape ``(C, T, V)`` per sample (channels,
  frames, joints; bodies are folded into the batch), with float parameters (``beta``,
  ``threshold``, per-channel ``bias``) and, after quantisation, Loihi integers (``du``,
  ``dv``, ``vth_mant``, ``bias_mant``, ``bias_exp``, ``scale``);
* :class:`Synapse` — a linear map from the *sum* of the spikes of its ``sources`` (or from
  the real-valued clip for the host-side first layer) into one ``target`` neuron group, or
  into the logits for the readout. Kinds:

  ==============  ==========================================================================
  ``input_conv``  host-side first layer: conv ``(C', C, kt, 1)`` over frames on the real clip
  ``conv``        temporal conv ``(C', C, kt, 1)``, stride and zero padding over frames
  ``affine``      one-to-one per-channel weight ``(C,)`` (temporal stride allowed)
  ``graph``       graph conv; before :func:`~export.passes.fold_graph` ``weight`` is
                  ``(C', K·C)`` with ``adjacency (K, V, V)``, after it a per-frame dense
                  ``(C'·V, C·V)`` joint-mixing matrix (zero entries are absent synapses)
  ``pool``        global average over frames, joints and bodies, per-channel ``(C,)``
  ``attention``   SG-SA ``s·(Q Kᵀ) V`` over joints, sources ``(Q, K, V)``; ``weight`` ``()``
  ``readout``     FC ``(classes, C)`` + bias into the logits (no neuron)
  ==============  ==========================================================================

  Each synapse may carry a ``bn`` (mean, var, gamma, beta, eps) until
  :func:`~export.passes.fold_bn` folds it, and a ``bias`` (float, per target channel) until
  folded into the target neuron. ``delay`` (steps) is set by
  :func:`~export.passes.balance_delays`; after :func:`~export.passes.quantise` each synapse
  has ``weight_mant`` (int) and ``weight_exp``.

Topological order is the order of ``Graph.groups`` (the frontend appends in execution order);
:meth:`Graph.validate` checks it.
"""
from __future__ import annotations

import copy
import sys
import warnings
from dataclasses import dataclass, field

import numpy as np

from .errors import ExportError

# Graph.copy shares arrays read-only; the twin, the writers and the Lava builders only read
# them, so torch's one-time notice about wrapping a read-only array (torch.as_tensor) is noise.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)

SYNAPSE_KINDS = ("input_conv", "conv", "affine", "graph", "pool", "attention", "readout")
INPUT = "input"
LOGITS = "logits"


#: dtype of the synapse mantissas (``Synapse.weight_mant``) in a quantised graph: 8-bit
#: values (a weight-split partner's too). int64 doubled the export's largest arrays: the folded
#: graph convs of the paper-width model hold 1.7 GB of mantissas as int64, 0.85 GB as int32.
#: ``network.net`` stores int64; :func:`export.writers.lava_writer.read_lava` gives this dtype.
MANT_DTYPE = np.int32


@dataclass
class NeuronGroup:
    """A CUBA-LIF population; shape ``(C, T, V)`` per sample (B = N·M folded)."""

    name: str
    shape: tuple
    beta: float
    threshold: float
    bias: np.ndarray  # (C,) float, threshold units
    layer: str = ""
    latency: int = 0  # steps from the input (set by balance_delays)
    # Loihi fixed point (set by quantise)
    du: int | None = None
    dv: int | None = None
    vth_mant: int | None = None
    bias_mant: np.ndarray | None = None
    bias_exp: np.ndarray | None = None
    scale: float | None = None  # integer v per unit float v (λ)

    @property
    def channels(self) -> int:
        return int(self.shape[0])

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


@dataclass
class Synapse:
    """A linear map from summed source spikes into one target; see the module docstring."""

    name: str
    kind: str
    sources: tuple
    target: str
    weight: np.ndarray
    stride: int = 1
    padding: int = 0
    adjacency: np.ndarray | None = None
    bn: tuple | None = None
    bias: np.ndarray | None = None
    layer: str = ""
    delay: int = 0
    weight_mant: np.ndarray | None = None
    weight_exp: int | None = None
    meta: dict = field(default_factory=dict)


@dataclass
class Graph:
    """The network: neuron groups in execution order and the synapses between them.

    Attributes
    ----------
    groups : dict name → NeuronGroup (insertion order is topological)
    synapses : dict name → Synapse (insertion order is topological)
    input_shape : tuple ``(C, T, V, M)`` of one clip
    time_steps : int (T_s)
    meta : dict — arch, layout, class names, quantisation report, ...
    """

    groups: dict
    synapses: dict
    input_shape: tuple
    time_steps: int
    meta: dict = field(default_factory=dict)

    def copy(self) -> "Graph":
        """A deep copy of the structure (groups, synapses, meta) that shares the arrays.

        The NumPy arrays and torch tensors held by groups and synapses (weights, mantissas,
        biases, adjacency, BN statistics) are shared, not copied: the passes replace
        attributes instead of changing arrays in place. Sharing keeps a pass's peak memory
        at one graph (at paper width the folded graph-conv matrices alone are ~1 GB, and
        every pass used to hold two or three copies), and a copied tensor would lose its
        autograd link to the model's parameters. Shared NumPy arrays are made read-only, so
        an in-place write to one raises ``ValueError`` instead of changing both graphs.
        """
        # no torch import here: the IR is imported by the Lava builders' light modules
        # (hw_sim.attention), and a tensor can exist only once torch is loaded
        tensor = getattr(sys.modules.get("torch"), "Tensor", None)
        memo = {}
        for obj in list(self.groups.values()) + list(self.synapses.values()):
            for v in vars(obj).values():
                for t in (v if isinstance(v, tuple) else (v,)):
                    if isinstance(t, np.ndarray):
                        t.flags.writeable = False
                        memo[id(t)] = t
                    elif tensor is not None and isinstance(t, tensor):
                        memo[id(t)] = t
        return copy.deepcopy(self, memo)

    def incoming(self, target: str) -> list:
        """Synapses into ``target`` (a group name or ``"logits"``), in graph order."""
        return [s for s in self.synapses.values() if s.target == target]

    def outgoing(self, source: str) -> list:
        return [s for s in self.synapses.values() if source in s.sources]

    @property
    def quantised(self) -> bool:
        return all(s.weight_mant is not None for s in self.synapses.values())

    def validate(self) -> "Graph":
        """Check names, kinds and topological order.

        Raises
        ------
        ExportError
            Unknown kind or endpoint, a source used before it is computed, a group
            without input.
        """
        order = {n: i for i, n in enumerate(self.groups)}
        for s in self.synapses.values():
            if s.kind not in SYNAPSE_KINDS:
                raise ExportError(f"synapse {s.name}: unknown kind {s.kind!r}")
            if s.target != LOGITS and s.target not in order:
                raise ExportError(f"synapse {s.name}: unknown target {s.target!r}")
            for src in s.sources:
                if src != INPUT and src not in order:
                    raise ExportError(f"synapse {s.name}: unknown source {src!r}")
                if src != INPUT and s.target != LOGITS and order[src] >= order[s.target]:
                    raise ExportError(f"synapse {s.name}: source {src} comes after target {s.target}")
        for g in self.groups:
            if not self.incoming(g):
                raise ExportError(f"neuron group {g} has no incoming synapse")
        if not self.incoming(LOGITS):
            raise ExportError("graph has no readout")
        return self
