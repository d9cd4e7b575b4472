"""`OKDDipModel`: online knowledge distillation with diverse peers (Chen et
al., AAAI 2020)."""

import keras
from keras import ops

from keras_pcl.losses import okddip_loss
from keras_pcl.multi_branch import MultiBranchModel
from keras_pcl.validation import check_bool


@keras.saving.register_keras_serializable(package="keras_pcl")
class OKDDipModel(MultiBranchModel):
    """`num_peers - 1` auxiliary peers and a group leader on a shared trunk.

    Two dense projections without bias (features to features / 8), shared by
    the auxiliary peers, give each peer's query and key; the attention
    weights `softmax(Q K^T)` (self included) mix the auxiliary peers' logits
    into a separate target for each of them. The leader (the last branch,
    index `num_peers - 1`) learns from the mean of the auxiliary peers'
    logits, and is what deploys (`deploy_peer` defaults to it). Loss:
    `keras_pcl.losses.okddip_loss` (spec section 9). All branches see the
    same augmented batch. Logs `ce`, `kd`, `consistency_weight`, every
    `peer_{j}_accuracy` (the leader is the last) and `ensemble_accuracy`
    (the auxiliary peers' mean, the leader's teacher).

    Args:
        backbone: a built functional `keras.Model` from images to pooled
            features.
        num_classes: int >= 2.
        num_peers: int >= 2, auxiliary peers plus the leader. Defaults to 3.
        split_at: the layer that ends the shared trunk.
        augmentation: as in `keras_pcl.PeerCollaborativeModel`, one draw for
            all branches.
        preprocessing: a Keras layer from raw pixels to network inputs.
        temperature: positive float `T`.
        consistency_weight: the weight that `w(t)` ramps up to.
        rampup_steps: ramp-up length in steps.
        detach_teacher: if True (default), the peer logits inside every
            target send no gradient; the attention projections are trained
            through the targets either way.
        deploy_peer: the branch that `call`/`predict` use; defaults to the
            leader, `num_peers - 1`.
        **kwargs: passed to `keras.Model`.

    Example:

    ```python
    model = keras_pcl.baselines.OKDDipModel(backbone, num_classes=10)
    leader = model.get_peer(model.num_peers - 1)
    ```
    """

    shares_trunk = True
    views_per_peer = False
    loss_term_names = ("ce", "kd")

    def __init__(
        self,
        backbone,
        num_classes,
        num_peers=3,
        detach_teacher=True,
        deploy_peer=None,
        **kwargs,
    ):
        check_bool("detach_teacher", detach_teacher)
        if deploy_peer is None and isinstance(num_peers, int):
            deploy_peer = num_peers - 1
        super().__init__(
            backbone,
            num_classes,
            num_peers=num_peers,
            deploy_peer=deploy_peer,
            **kwargs,
        )
        self.detach_teacher = detach_teacher
        projection_dim = max(1, self.feature_dim // 8)
        self.query_projection = keras.layers.Dense(
            projection_dim, use_bias=False, name="query_projection"
        )
        self.key_projection = keras.layers.Dense(
            projection_dim, use_bias=False, name="key_projection"
        )
        self.query_projection.build((None, self.feature_dim))
        self.key_projection.build((None, self.feature_dim))

    @property
    def deployable_peers(self):
        """Only the group leader (the last branch) deploys."""
        return (self.num_peers - 1,)

    def deployed_logits(self, outputs):
        return outputs["leader_logits"]

    def compute_branch_outputs(self, views, training):
        features = self.peer_features(views, training)
        logits = self.classify(features)
        peers = ops.stack(features[:-1], axis=1)  # (batch, m - 1, features)
        queries = self.query_projection(peers)
        keys = self.key_projection(peers)
        scores = ops.matmul(queries, ops.transpose(keys, (0, 2, 1)))
        attention = ops.softmax(ops.cast(scores, "float32"), axis=-1)
        return {
            "peer_logits": logits[:-1],
            "leader_logits": logits[-1],
            "attention": attention,
        }

    def compute_loss_terms(self, y, outputs):
        return okddip_loss(
            y,
            outputs["peer_logits"],
            outputs["leader_logits"],
            outputs["attention"],
            temperature=self.temperature,
            consistency_weight=outputs["consistency_weight"],
            detach_teacher=self.detach_teacher,
        )

    def accuracy_names(self):
        return super().accuracy_names() + ["ensemble"]

    def accuracy_logits(self, outputs):
        peers = list(outputs["peer_logits"])
        return peers + [outputs["leader_logits"]] + [ops.mean(ops.stack(peers), axis=0)]

    def get_config(self):
        config = super().get_config()
        config["detach_teacher"] = self.detach_teacher
        return config
