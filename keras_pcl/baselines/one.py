"""`ONEModel`: on-the-fly native ensemble (Lan et al., NeurIPS 2018)."""

import keras
from keras import ops

from keras_pcl.losses import one_loss
from keras_pcl.multi_branch import MultiBranchModel
from keras_pcl.validation import check_bool


@keras.saving.register_keras_serializable(package="keras_pcl")
class ONEModel(MultiBranchModel):
    """Branches on a shared trunk, distilled from their gated ensemble.

    All branches see the same augmented batch. A gate on the trunk output
    (global average pooling, dense to `num_peers`, batch norm, ReLU,
    softmax) weights the branch logits into the teacher
    `z_t = sum_i g_i z_i`; the loss is
    `sum_i CE(z_i) + CE(z_t) + w(t) sum_i KD_T(z_i, z_t)`
    (`keras_pcl.losses.one_loss`, spec section 9). Logs `ce`, `kd`,
    `consistency_weight`, every `peer_{j}_accuracy` and `ensemble_accuracy`
    (the gated teacher). One branch deploys (`get_peer(j)`).

    Args:
        backbone: a built functional `keras.Model` from images to pooled
            features.
        num_classes: int >= 2.
        num_peers: int >= 2, the number of branches. Defaults to 3.
        split_at: the layer that ends the shared trunk; defaults to the
            backbone's `default_split_at`.
        augmentation: as in `keras_pcl.PeerCollaborativeModel`, one draw for
            all branches.
        preprocessing: a Keras layer from raw pixels to network inputs.
        temperature: positive float `T`.
        consistency_weight: the weight that `w(t)` ramps up to.
        rampup_steps: ramp-up length in steps (spec: 80 epochs).
        detach_teacher: if True (default, as in the official code), the KD
            terms send no gradient into the teacher; its own cross-entropy
            trains it.
        deploy_peer: the branch that `call`/`predict` use.
        **kwargs: passed to `keras.Model`.

    Example:

    ```python
    model = keras_pcl.baselines.ONEModel(
        backbone, num_classes=10, rampup_steps=80 * 391
    )
    ```
    """

    shares_trunk = True
    views_per_peer = False
    loss_term_names = ("ce", "kd")

    def __init__(self, backbone, num_classes, detach_teacher=True, **kwargs):
        check_bool("detach_teacher", detach_teacher)
        super().__init__(backbone, num_classes, **kwargs)
        self.detach_teacher = detach_teacher
        trunk_shape = tuple(self.trunk.outputs[0].shape)
        layers = []
        if len(trunk_shape) == 4:
            layers.append(keras.layers.GlobalAveragePooling2D(name="gate_pool"))
        layers += [
            keras.layers.Dense(self.num_peers, name="gate_dense"),
            keras.layers.BatchNormalization(name="gate_batch_norm"),
            keras.layers.ReLU(name="gate_relu"),
            keras.layers.Softmax(dtype="float32", name="gate_softmax"),
        ]
        self.gate = keras.Sequential(layers, name="gate")
        self.gate.build(trunk_shape)

    def compute_branch_outputs(self, views, training):
        shared = self.apply_layer(self.trunk, views[0], training)
        peer_logits = self.classify(
            [self.apply_layer(head, shared, training) for head in self.peer_heads]
        )
        gates = self.gate(shared, training=training)  # (batch, m)
        gated = ops.sum(ops.stack(peer_logits, axis=1) * gates[:, :, None], axis=1)
        return {"peer_logits": peer_logits, "gated_logits": gated}

    def compute_loss_terms(self, y, outputs):
        return one_loss(
            y,
            outputs["peer_logits"],
            outputs["gated_logits"],
            temperature=self.temperature,
            consistency_weight=outputs["consistency_weight"],
            detach_teacher=self.detach_teacher,
        )

    def accuracy_names(self):
        return super().accuracy_names() + ["ensemble"]

    def accuracy_logits(self, outputs):
        return list(outputs["peer_logits"]) + [outputs["gated_logits"]]

    def get_config(self):
        config = super().get_config()
        config["detach_teacher"] = self.detach_teacher
        return config
