"""`keras_pcl.baselines.DMLModel` and `KDCLModel`: separate full networks.

Spec section 9.
"""

import keras
import numpy as np
import pytest

from keras_pcl import baselines
from tests.testing import colour_dataset
from tests.testing import tiny_backbone
from tests.testing import weights_of


@pytest.mark.parametrize("name", ["dml", "kdcl"])
def test_separate_networks_share_no_layer(name):
    model = baselines.get(name)(tiny_backbone(), 3, num_peers=2)
    assert model.trunk is None
    first, second = (weights_of(h)[0] for h in model.peer_heads)
    assert not np.allclose(first, second)  # Independent initialisations.
    paths = [v.path for v in model.weights]
    assert len(paths) == len(set(paths))


def test_views_per_network_for_kdcl_and_one_view_for_dml():
    x, _ = colour_dataset(8)
    kdcl = baselines.KDCLModel(tiny_backbone(), 3, num_peers=3)
    views = [keras.ops.convert_to_numpy(v) for v in kdcl.peer_views(x, training=True)]
    assert not np.allclose(views[0], views[1])
    dml = baselines.DMLModel(tiny_backbone(), 3, num_peers=3)
    views = dml.peer_views(x, training=True)
    assert views[0] is views[1] is views[2]
