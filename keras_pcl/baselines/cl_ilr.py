"""`CLILRModel`: collaborative learning with intermediate-level representation
sharing (Song & Chai, NeurIPS 2018)."""

import keras
from keras import ops

from keras_pcl.losses import cl_ilr_loss
from keras_pcl.multi_branch import MultiBranchModel
from keras_pcl.validation import check_bool


def scale_gradient(x, scale):
    """Identity in the forward pass, gradient multiplied by `scale` backward.

    Written by hand (Keras has no such op): `x * s + stop_gradient(x - x * s)`
    has the value of `x` and the derivative `s`, on every backend.

    Example:

    >>> float(scale_gradient(keras.ops.ones(()), 0.25))
    1.0
    """
    x = ops.convert_to_tensor(x)
    scaled = x * scale
    return scaled + ops.stop_gradient(x - scaled)


@keras.saving.register_keras_serializable(package="keras_pcl")
class CLILRModel(MultiBranchModel):
    """Branches on a shared trunk, each taught by the mean of the others.

    No gate: the target of branch `i` is the mean of the other branches'
    logits, and the loss is `sum_i CE(z_i) + w(t) sum_i KD_T(z_i, target_i)`
    (`keras_pcl.losses.cl_ilr_loss`, spec section 9). The gradient that
    flows back into the shared trunk is divided by `num_peers` (backward
    pass only; `scale_gradient`). All branches see the same augmented batch.
    Logs `ce`, `kd`, `consistency_weight`, every `peer_{j}_accuracy` and
    `ensemble_accuracy` (the mean of the branches' logits).

    Args:
        backbone: a built functional `keras.Model` from images to pooled
            features.
        num_classes: int >= 2.
        num_peers: int >= 2, the number of branches. Defaults to 3.
        split_at: the layer that ends the shared trunk.
        augmentation: as in `keras_pcl.PeerCollaborativeModel`, one draw for
            all branches.
        preprocessing: a Keras layer from raw pixels to network inputs.
        temperature: positive float `T`.
        consistency_weight: the weight that `w(t)` ramps up to.
        rampup_steps: ramp-up length in steps.
        detach_teacher: if True (default), the targets send no gradient.
        deploy_peer: the branch that `call`/`predict` use.
        **kwargs: passed to `keras.Model`.

    Example:

    ```python
    model = keras_pcl.baselines.CLILRModel(backbone, num_classes=10)
    ```
    """

    shares_trunk = True
    views_per_peer = False
    loss_term_names = ("ce", "kd")

    def __init__(self, backbone, num_classes, detach_teacher=True, **kwargs):
        check_bool("detach_teacher", detach_teacher)
        super().__init__(backbone, num_classes, **kwargs)
        self.detach_teacher = detach_teacher

    def peer_features(self, views, training):
        shared = self.apply_layer(self.trunk, views[0], training)
        if training:
            shared = scale_gradient(shared, 1.0 / self.num_peers)
        return [self.apply_layer(head, shared, training) for head in self.peer_heads]

    def compute_branch_outputs(self, views, training):
        return {"peer_logits": self.classify(self.peer_features(views, training))}

    def compute_loss_terms(self, y, outputs):
        return cl_ilr_loss(
            y,
            outputs["peer_logits"],
            temperature=self.temperature,
            consistency_weight=outputs["consistency_weight"],
            detach_teacher=self.detach_teacher,
        )

    def accuracy_names(self):
        return super().accuracy_names() + ["ensemble"]

    def accuracy_logits(self, outputs):
        peers = list(outputs["peer_logits"])
        return peers + [ops.mean(ops.stack(peers), axis=0)]

    def get_config(self):
        config = super().get_config()
        config["detach_teacher"] = self.detach_teacher
        return config
