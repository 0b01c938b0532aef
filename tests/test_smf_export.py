"""Export of the four-modality MK-SGN (SMF, paper eq. 24): the frozen fusion weights are folded
into the synapses that read the encoders' spikes, the folded float graph equals the PyTorch
model, and the exported integer graph replays in Lava bit-exactly on a real clip.

A tiny (width 0.125) SMF MK-SGN with BN statistics warmed on real NW-UCLA clips and
fusion weights set away from 1 (so that ignoring or misplacing them changes the logits).
"""
import copy
import functools

import numpy as np
import pytest
import torch

from export.exporter import run_export
from export.frontend import from_model
from export.pipeline import fold_all, graph_input, input_modalities, lower
from export.resources import synapse_count
from export.twin import run_graph
from mksgn.data import SkeletonDataset
from mksgn.models import ModelConfig, build_model
from mksgn.preprocess import MODALITIES

from .conftest import UCLA

FUSION = [0.4, 1.3, 0.7, 1.6]


@functools.lru_cache(maxsize=None)
def _clips(split: str, n: int):
    ds = SkeletonDataset(UCLA, split, MODALITIES, train=False)
    items = [ds[i] for i in range(n)]
    batch = {m: torch.stack([it[0][m] for it in items]) for m in MODALITIES}
    return batch, np.array([int(it[1]) for it in items])


@functools.lru_cache(maxsize=None)
def _smf_model():
    torch.manual_seed(0)
    m = build_model(ModelConfig.from_dict({"arch": "mksgn", "layout": "ucla20", "num_classes": 10, "width": 0.125,
                                           "temporal_kernel": 3, "fusion": "smf"}))
    bns = [mod for mod in m.modules() if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.momentum = None
    m.train()
    x, _ = _clips("train", 16)
    with torch.no_grad():
        for _ in range(3):
            m(x)
        m.sc.fusion_weight.copy_(torch.tensor(FUSION))
    return m.eval()


@pytest.fixture(scope="module")
def smf(ucla_dir):
    return _smf_model()


def test_folded_smf_graph_equals_the_pytorch_model(smf):
    """fold_all (BN, adjacency, fusion weights, delays) gives a float graph whose logits
    equal the model's on real clips, reading the four modalities concatenated on C."""
    x, _ = _clips("test", 4)
    g = from_model(smf)
    assert g.input_shape[0] == 4 * 3 and g.meta["fusion_weights"] == pytest.approx(FUSION)
    assert g.groups["sc.lif"].channels == 4 * smf.sc.encoders["joint"].conv.out_channels
    with torch.no_grad():
        ref = smf(x).double()
    got = run_graph(fold_all(g), graph_input(x, list(MODALITIES)), "float").logits
    assert torch.allclose(got, ref, atol=1e-9), (got - ref).abs().max()
    # with the fusion weights left out (plain sum) the logits differ: the fold is what matters
    g1 = from_model(smf)
    g1.meta["fusion_weights"] = [1.0] * 4
    plain = run_graph(fold_all(g1), graph_input(x, list(MODALITIES)), "float").logits
    assert not torch.allclose(plain, ref, atol=1e-3)


def test_fused_synapses_cover_every_encoder_channel(smf):
    """The input conv is block-diagonal (each encoder reads only its modality: 4× one
    encoder's synapses, zero blocks absent) and the layer-1 one-to-one residual becomes a
    1×1 conv with one synapse from each encoder neuron of the channel, weighted by w_m."""
    f = fold_all(from_model(smf))
    c = smf.sc.encoders["joint"].conv.out_channels
    sc = f.synapses["sc.conv"]
    one = sc.weight[:c, :3]
    assert np.count_nonzero(sc.weight) == 4 * np.count_nonzero(one)
    joint_only = copy.copy(sc)
    joint_only.weight = np.zeros_like(sc.weight)
    joint_only.weight[:c, :3] = one
    assert synapse_count(f, sc) == 4 * synapse_count(f, joint_only) > 0
    res = f.synapses["layers.0.sa_sgc.res"]
    assert res.kind == "conv" and res.weight.shape == (c, 4 * c, 1, 1)
    a = smf.layers[0].sa_sgc.res.weight.detach().double().numpy()
    for m, w in enumerate(FUSION):
        assert np.allclose(np.diag(res.weight[:, m * c:(m + 1) * c, 0, 0]), w * a)
    assert np.count_nonzero(res.weight) == 4 * c
    gcn = f.synapses["layers.0.sa_sgc.gcn"]
    V = f.groups["sc.lif"].shape[2]
    assert gcn.weight.shape[1] == 4 * c * V
    assert np.allclose(gcn.weight[:, V * c:2 * V * c], FUSION[1] / FUSION[0] * gcn.weight[:, :V * c])


def test_input_modalities_rule():
    assert input_modalities({"modalities": ["bone"]}) == ["bone"]
    assert input_modalities({"modalities": list(reversed(MODALITIES))}) == list(MODALITIES)
    from export.errors import ExportError
    with pytest.raises(ExportError, match="neither"):
        input_modalities({"modalities": ["joint", "bone"]})


@pytest.mark.slow
def test_smf_export_replays_bit_exact_in_lava(smf, tmp_path):
    """The main job for a four-modality checkpoint: mksgn-export --target lava, then the Lava
    replay of a real test clip (four modalities read from the manifest) equals the twin in
    every group, step, spike, u, v and logit, with equal event counts."""
    from hw_sim.simulate import simulate
    from mksgn.checkpoint import save_checkpoint
    from mksgn.io import UCLA_CLASS_NAMES
    ckpt = tmp_path / "smf.pt"
    save_checkpoint(ckpt, {"config": {"model": smf.cfg.to_dict(), "train": {}},
                           "state_dict": {k: v.clone() for k, v in smf.state_dict().items()},
                           "class_names": list(UCLA_CLASS_NAMES),
                           "data": {"dataset": "ucla", "layout": "ucla20", "modalities": list(MODALITIES),
                                    "window": 52, "protocol": "view3"},
                           "metrics": {}, "git_revision": "test", "epoch": 0})
    out = tmp_path / "export"
    run_export(ckpt, "lava", out, UCLA, calib_clips=8, progress=False)
    result, report = simulate(out, UCLA, clips=1, progress=False)
    assert result.bit_exact and result.mismatches == []
    assert report["events_equal"] and report["synaptic_events_per_clip"] > 0
    # the twin of the export agrees with a direct lowering of the model
    x, _ = _clips("test", 1)
    from export.pipeline import calibration_clips
    q = lower(from_model(smf), calibration_clips(UCLA, list(MODALITIES), 8, progress=False))
    direct = run_graph(q, graph_input(x, list(MODALITIES)), "int").logits
    assert int(direct.argmax(1)[0]) == int(result.twin_pred[0])
