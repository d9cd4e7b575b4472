"""`KDCLModel`: knowledge distillation via collaborative learning (Guo et al.,
CVPR 2020), in its "mean of logits" form."""

import keras

from keras_pcl.losses import kdcl_loss
from keras_pcl.multi_branch import MultiBranchModel
from keras_pcl.validation import check_number


@keras.saving.register_keras_serializable(package="keras_pcl")
class KDCLModel(MultiBranchModel):
    """Separate networks, each on its own view, taught by their mean.

    Each peer is the whole backbone (no shared layers) and sees its own
    augmentation of the batch; the teacher is the detached mean of their
    logits, and each network gets `(1 - a) CE + a KD_T`
    (`keras_pcl.losses.kdcl_loss`, spec section 9). Logs `ce`, `kd`, every
    `peer_{j}_accuracy` and `ensemble_accuracy` (the teacher).

    Args:
        backbone: a built functional `keras.Model` from images to pooled
            features.
        num_classes: int >= 2.
        num_peers: int >= 2. Defaults to 3.
        augmentation: as in `keras_pcl.PeerCollaborativeModel`, drawn
            independently for each peer.
        preprocessing: a Keras layer from raw pixels to network inputs.
        temperature: positive float `T`; 4 as in the public
            reimplementation.
        kd_weight: `a` in [0, 1]; 0.5 as in the public reimplementation.
        deploy_peer: the peer that `call`/`predict` use.
        **kwargs: passed to `keras.Model`.

    Example:

    ```python
    model = keras_pcl.baselines.KDCLModel(backbone, num_classes=10)
    ```
    """

    shares_trunk = False
    views_per_peer = True
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
        temperature=4.0,
        kd_weight=0.5,
        deploy_peer=0,
        **kwargs,
    ):
        check_number(
            "kd_weight", kd_weight, "a number in [0, 1]", lambda a: 0 <= a <= 1
        )
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
        self.kd_weight = float(kd_weight)

    def compute_branch_outputs(self, views, training):
        return {"peer_logits": self.classify(self.peer_features(views, training))}

    def compute_loss_terms(self, y, outputs):
        return kdcl_loss(y, outputs["peer_logits"], self.temperature, self.kd_weight)

    def accuracy_names(self):
        return super().accuracy_names() + ["ensemble"]

    def accuracy_logits(self, outputs):
        peers = list(outputs["peer_logits"])
        return peers + [keras.ops.mean(keras.ops.stack(peers), axis=0)]

    def get_config(self):
        config = super().get_config()
        config["kd_weight"] = self.kd_weight
        return config
