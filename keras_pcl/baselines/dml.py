"""`DMLModel`: deep mutual learning (Zhang et al., CVPR 2018)."""

import keras

from keras_pcl.losses import dml_loss
from keras_pcl.multi_branch import MultiBranchModel
from keras_pcl.validation import check_bool


@keras.saving.register_keras_serializable(package="keras_pcl")
class DMLModel(MultiBranchModel):
    """`num_peers` separate copies of the backbone that teach each other.

    No shared layers: each peer is the whole backbone with its own fresh
    weights and classifier, and all peers see the same augmented batch. Each
    peer's loss is `CE + 1/(m-1) sum_{k != j} KD_T(z_j, z_k)`
    (`keras_pcl.losses.dml_loss`, spec section 9). Logs `ce`, `kd`, every
    `peer_{j}_accuracy` and `ensemble_accuracy` (the mean of the peers'
    logits, reported only). Any peer deploys on its own (`get_peer(j)`).

    Args:
        backbone: a built functional `keras.Model` from images to pooled
            features.
        num_classes: int >= 2.
        num_peers: int >= 2, the number of networks. Defaults to 3.
        augmentation: as in `keras_pcl.PeerCollaborativeModel`.
        preprocessing: a Keras layer from raw pixels to network inputs.
        temperature: positive float `T`.
        detach_teacher: if True (default), `KD_T(z_j, z_k)` sends no gradient
            into peer `k`.
        deploy_peer: the peer that `call`/`predict` use.
        **kwargs: passed to `keras.Model`.

    Example:

    ```python
    model = keras_pcl.baselines.DMLModel(backbone, num_classes=10)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    model.fit(images_uint8, labels, epochs=300)
    ```
    """

    shares_trunk = False
    views_per_peer = False
    uses_rampup = False
    loss_term_names = ("ce", "kd")
    fixed_arguments = ("split_at", "consistency_weight", "rampup_steps")

    def __init__(
        self,
        backbone,
        num_classes,
        num_peers=3,
        augmentation="default",
        preprocessing=None,
        temperature=3.0,
        detach_teacher=True,
        deploy_peer=0,
        **kwargs,
    ):
        check_bool("detach_teacher", detach_teacher)
        super().__init__(
            backbone,
            num_classes,
            num_peers=num_peers,
            augmentation=augmentation,
            preprocessing=preprocessing,
            temperature=temperature,
            rampup_steps=0,
            deploy_peer=deploy_peer,
            **kwargs,
        )
        self.detach_teacher = detach_teacher

    def compute_branch_outputs(self, views, training):
        return {"peer_logits": self.classify(self.peer_features(views, training))}

    def compute_loss_terms(self, y, outputs):
        return dml_loss(
            y, outputs["peer_logits"], self.temperature, self.detach_teacher
        )

    def accuracy_names(self):
        return super().accuracy_names() + ["ensemble"]

    def accuracy_logits(self, outputs):
        peers = list(outputs["peer_logits"])
        return peers + [keras.ops.mean(keras.ops.stack(peers), axis=0)]

    def get_config(self):
        config = super().get_config()
        config["detach_teacher"] = self.detach_teacher
        return config
