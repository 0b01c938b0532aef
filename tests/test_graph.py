import numpy as np
import pytest

from mksgn.errors import ConfigError
from mksgn.graph import get_layout


@pytest.mark.parametrize("name,V,edges", [("ntu25", 25, 24), ("ucla20", 20, 19)])
def test_adjacency_partition_normalised(name, V, edges):
    A = get_layout(name).adjacency()
    assert A.shape == (3, V, V)
    np.testing.assert_array_equal(A[0], np.eye(V))
    for k in (1, 2):
        assert np.count_nonzero(A[k]) == edges          # one entry per edge (a tree)
        col = A[k].sum(0)
        assert np.all(np.isclose(col, 1) | (col == 0))  # columns normalise to 1 or are empty
    # inward and outward are each other's transpose before normalisation
    np.testing.assert_array_equal(A[1] > 0, (A[2] > 0).T)


def test_skeleton_is_a_tree_rooted_at_one_joint():
    for name in ("ntu25", "ucla20"):
        lay = get_layout(name)
        roots = [v for v, p in lay.bone_pairs if v == p]
        assert len(roots) == 1
        # every joint reaches the root by following parents
        for v in range(lay.num_joints):
            seen = set()
            while lay.bone_parent[v] != v:
                assert v not in seen
                seen.add(v)
                v = lay.bone_parent[v]


def test_known_edges():
    ntu = get_layout("ntu25")
    assert ntu.bone_parent[3] == 2      # head -> neck (CTR-GCN pair (4, 3))
    assert ntu.bone_parent[20] == 20    # spine shoulder is the root (pair (21, 21))
    ucla = get_layout("ucla20")
    assert ucla.bone_parent[3] == 2     # head -> shoulder centre
    assert ucla.bone_parent[2] == 2     # shoulder centre is the root


def test_unknown_layout():
    with pytest.raises(ConfigError, match="unknown joint layout 'coco18'"):
        get_layout("coco18")
