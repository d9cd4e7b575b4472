"""`keras_pcl.baselines.OKDDipModel`: attention targets; the leader deploys.

Spec section 9.
"""

import keras
import numpy as np
import pytest

from keras_pcl import baselines
from tests.testing import colour_dataset
from tests.testing import tiny_backbone


@pytest.mark.parametrize("m", [2, 4])
def test_okddip_attention_mixes_the_auxiliary_peers_and_the_leader_deploys(m):
    x, _ = colour_dataset(8)
    model = baselines.OKDDipModel(tiny_backbone(), 3, num_peers=m, split_at="split")
    assert model.deploy_peer == m - 1
    outputs = model._inference_outputs(x)
    attention = keras.ops.convert_to_numpy(outputs["attention"])
    assert attention.shape == (8, m - 1, m - 1)
    np.testing.assert_allclose(attention.sum(axis=-1), 1.0, rtol=1e-5)
    assert len(outputs["peer_logits"]) == m - 1
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(outputs["leader_logits"]),
        model.get_peer(m - 1).predict(x, verbose=0),
        rtol=1e-4,
        atol=1e-5,
    )
    # Projections: features -> features / 8, no bias, shared by all peers.
    assert model.query_projection.kernel.shape == (6, 1)
    assert not model.query_projection.use_bias
