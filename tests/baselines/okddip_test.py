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


def test_only_the_leader_deploys():
    model = baselines.OKDDipModel(tiny_backbone(), 3, num_peers=3, split_at="split")
    assert model.deployable_peers == (2,)
    with pytest.raises(ValueError, match=r"deploys, \[2\].*deploy_peer=0"):
        model.deploy_peer = 0
    with pytest.raises(ValueError, match="deploy_peer=1"):
        baselines.OKDDipModel(
            tiny_backbone(), 3, num_peers=3, split_at="split", deploy_peer=1
        )
    # An auxiliary peer can still be inspected as a network.
    assert model.get_peer(0).name == "peer_0_student"


def test_best_peer_tracker_picks_the_leader_even_when_a_peer_scores_higher():
    import keras_pcl

    model = baselines.OKDDipModel(tiny_backbone(), 3, num_peers=3, split_at="split")
    tracker = keras_pcl.callbacks.BestPeerTracker(verbose=0)
    tracker.set_model(model)
    tracker.on_train_begin()
    logs = {"val_peer_0_accuracy": 0.9, "val_peer_1_accuracy": 0.8}
    logs["val_peer_2_accuracy"] = 0.5
    tracker.on_epoch_end(0, logs)
    assert model.best_peer.peer == 2
    assert model.best_peer.score == pytest.approx(0.5)
    assert model.deploy_peer == 2
