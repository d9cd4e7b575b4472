"""`VanillaModel`: the backbone trained alone, the reference for every gain."""

import keras

from keras_pcl.losses import cross_entropy
from keras_pcl.multi_branch import MultiBranchModel


@keras.saving.register_keras_serializable(package="keras_pcl")
class VanillaModel(MultiBranchModel):
    """The backbone plus a dense classifier, trained with cross-entropy alone.

    The same network that the other methods deploy, trained on its own with
    the same inputs, augmentation and API (`fit`, `get_peer(0)`,
    `export_peer`), so that every method is compared with it on equal terms.
    Logs `ce` and `peer_0_accuracy`.

    Args:
        backbone: a built functional `keras.Model` from images to pooled
            features, e.g. `keras_pcl.backbones.CIFARResNet(depth=32)`.
        num_classes: int >= 2.
        augmentation: as in `keras_pcl.PeerCollaborativeModel`
            (`"default"`: pad, random crop, flip).
        preprocessing: a Keras layer from raw pixels to network inputs;
            defaults to `Rescaling(1 / 255)`.
        **kwargs: passed to `keras.Model`.

    Example:

    ```python
    model = keras_pcl.baselines.VanillaModel(
        keras_pcl.backbones.CIFARResNet(depth=32), num_classes=10
    )
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    model.fit(images_uint8, labels, batch_size=128, epochs=300)
    network = model.get_peer(0)  # images -> logits
    ```
    """

    shares_trunk = False
    views_per_peer = False
    min_peers = 1
    uses_rampup = False
    fixed_arguments = (
        "num_peers",
        "split_at",
        "temperature",
        "consistency_weight",
        "rampup_steps",
        "deploy_peer",
    )

    def __init__(
        self,
        backbone,
        num_classes,
        augmentation="default",
        preprocessing=None,
        **kwargs,
    ):
        super().__init__(
            backbone,
            num_classes,
            num_peers=1,
            augmentation=augmentation,
            preprocessing=preprocessing,
            rampup_steps=0,
            **kwargs,
        )

    def compute_branch_outputs(self, views, training):
        return {"peer_logits": self.classify(self.peer_features(views, training))}

    def compute_loss_terms(self, y, outputs):
        ce = cross_entropy(y, outputs["peer_logits"][0])
        return {"loss": ce, "ce": ce}
