"""Deploying one peer of a multi-branch model as an ordinary network.

Every method of keras-pcl trains several peers and deploys one of them: PCL
a peer's mean teacher, the baselines a peer itself (OKDDip only its group
leader). `PeerDeployment` is that part of `MultiBranchModel`: which peers may
deploy, which one `call` and `predict` use, the best peer that
`keras_pcl.callbacks.BestPeerTracker` recorded, and `get_peer` /
`export_peer`, which build the deployed network from plain Keras layers.
"""

import collections
import json
import os

import keras

from keras_pcl import _compat
from keras_pcl.export import CLASS_NAMES_FILE
from keras_pcl.export import export_peer as _export_peer
from keras_pcl.validation import check_class_names
from keras_pcl.validation import raise_invalid


class BestPeer(collections.namedtuple("BestPeer", ["peer", "epoch", "score"])):
    """The best peer so far: index, epoch (1-based, as Keras' logs), score."""


# The file (in a `.keras` archive, a SavedModel's `assets.extra/`) and the
# ONNX metadata key that hold the class names.


def resolve_peer(model, peer):
    """The peer index that `peer` (`"best"`, `"deploy"` or an int) stands for.

    Args:
        model: a `keras_pcl.PeerCollaborativeModel` or a baseline.
        peer: `"best"` (recorded by `BestPeerTracker`), `"deploy"` (the
            model's `deploy_peer`) or an int peer index.

    Returns:
        An int in `[0, model.num_peers)`.

    Raises:
        ValueError: a `peer` of another kind, an index out of range or not
            deployable, or `"best"` when no best peer was recorded.
    """
    if peer == "best":
        record = model.best_peer
        if record is None:
            raise ValueError(
                "`peer='best'`, but this model has no best peer recorded: "
                "train it with `keras_pcl.callbacks.BestPeerTracker()` and "
                "validation data, or pass a peer index (e.g. "
                f"peer={model.deploy_peer}, the current `deploy_peer`). "
                f"Received: peer={peer!r}"
            )
        return record.peer
    if peer == "deploy":
        return model.deploy_peer
    if isinstance(peer, bool) or not isinstance(peer, int):
        raise_invalid("peer", peer, "'best', 'deploy' or an int peer index")
    model._check_peer_index(peer, "peer")
    return peer


class PeerDeployment:
    """Mixin of `MultiBranchModel`: which peer deploys, and as what network.

    The model must have `num_peers`, `preprocessing`, `has_mean_teachers`,
    `trunk`, `peer_heads` and `peer_classifiers` (the mean-teacher parts
    where it has them, see `_peer_parts`), and call `_create_peer_record()`
    in its constructor.
    """

    def _create_peer_record(self, deploy_peer):
        """Creates the best-peer record variables and sets `deploy_peer`."""
        self._check_peer_index(deploy_peer, "deploy_peer", deployable=True)
        self._deploy_peer = deploy_peer
        # What `keras_pcl.callbacks.BestPeerTracker` recorded: variables, so
        # that `save`, `load_model` and `BackupAndRestore` keep them.
        self._best_peer_index = self._add_record_variable("best_peer", "int32", -1)
        self._best_peer_epoch = self._add_record_variable(
            "best_peer_epoch", "int32", -1
        )
        self._best_peer_score = self._add_record_variable(
            "best_peer_score", "float32", float("-inf")
        )

    @property
    def class_names(self):
        """The class names, label `i` being `class_names[i]`; None if unknown.

        `keras_pcl.training.train` sets them from the dataset; set them
        yourself after building a model (`model.class_names = names`). They
        are saved with the model (`.keras`) and `export_peer` writes them
        into every export (see `keras_pcl.export`), so that `keras-pcl
        evaluate` refuses a dataset whose classes are other ones.
        """
        return getattr(self, "_class_names", None)

    @class_names.setter
    def class_names(self, names):
        self._class_names = check_class_names(names, self.num_classes)

    def save_assets(self, dir_path):
        """Writes `class_names.json` (Keras' `.keras` saving calls this)."""
        if self.class_names is not None:
            with open(os.path.join(dir_path, CLASS_NAMES_FILE), "w") as f:
                json.dump(list(self.class_names), f)

    def load_assets(self, dir_path):
        """Reads `class_names.json` back (absent: names unknown)."""
        path = os.path.join(dir_path, CLASS_NAMES_FILE)
        if os.path.isfile(path):
            with open(path) as f:
                self.class_names = json.load(f)

    @property
    def deployable_peers(self):
        """The peer indices this method may deploy, as a tuple.

        Every peer for PCL and most baselines; OKDDip deploys only its group
        leader. `deploy_peer`, `record_best_peer` and `BestPeerTracker`
        accept these only; `get_peer` and `export_peer` take any index.
        """
        return tuple(range(self.num_peers))

    @property
    def deploy_peer(self):
        """Index of the peer that `call` and `predict` use."""
        return self._deploy_peer

    @deploy_peer.setter
    def deploy_peer(self, value):
        self._check_peer_index(value, "deploy_peer", deployable=True)
        if value != self._deploy_peer:
            self._deploy_peer = value
            # `predict` was traced for the previous peer; so were `evaluate`
            # and `fit` where compiled metrics score the deployed network.
            self.predict_function = None
            if _compat.compiled_metrics(self) is not None:
                self.test_function = None
                self._train_function_stale = True

    @property
    def best_peer(self):
        """The best peer recorded by `BestPeerTracker`, or None.

        A `BestPeer(peer, epoch, score)` tuple: the peer index, the epoch
        (1-based, as in Keras' logs and `BestPeerTracker`'s line "Epoch 3:
        best peer is ...") and the monitored validation accuracy. It is part of the
        model's weights, so it survives `save`/`load_model` and
        `BackupAndRestore`.
        """
        peer = int(keras.ops.convert_to_numpy(self._best_peer_index.value))
        if peer < 0:
            return None
        return BestPeer(
            peer=peer,
            # Stored 0-based (as `on_epoch_end` counts), shown 1-based.
            epoch=int(keras.ops.convert_to_numpy(self._best_peer_epoch.value)) + 1,
            score=float(keras.ops.convert_to_numpy(self._best_peer_score.value)),
        )

    def record_best_peer(self, peer, epoch, score):
        """Records `peer` as the best and makes it the `deploy_peer`.

        Called by `keras_pcl.callbacks.BestPeerTracker`; not part of a
        training step. `epoch` is the 0-based index that Keras passes to
        `on_epoch_end`; `best_peer.epoch` reads it back 1-based.
        """
        self._check_peer_index(peer, "peer", deployable=True)
        self._best_peer_index.assign(peer)
        self._best_peer_epoch.assign(epoch)
        self._best_peer_score.assign(score)
        self.deploy_peer = peer

    def export_peer(
        self,
        filepath,
        peer="best",
        mean_teacher=None,
        format=None,
        overwrite=False,
        verbose=False,
        class_names=None,
    ):
        """Writes one peer as a standalone network for serving.

        See `keras_pcl.export.export_peer` for the formats, the serving
        signature and the errors.

        Args:
            filepath: a directory (`"tf_saved_model"`) or a file ending in
                `.keras`, `.onnx` or `.tflite`.
            peer: `"best"` (recorded by `BestPeerTracker`), `"deploy"` or an
                int peer index.
            mean_teacher: the peer's mean teacher or its student; defaults to
                the mean teacher where the method has one.
            format: `"keras"`, `"tf_saved_model"`, `"onnx"` or `"tflite"`;
                None (default): from the extension of `filepath` (a path
                without `.keras`, `.onnx` or `.tflite` is a SavedModel).
            overwrite: replace an existing `filepath`.
            verbose: let Keras print what it writes.
            class_names: written into the export (default:
                `self.class_names`; see `keras_pcl.export.write_class_names`).

        Returns:
            The exported `keras.Model`.

        Example:

        ```python
        model.export_peer("served/pcl_resnet32", peer="best")
        model.export_peer("pcl_resnet32.onnx", peer=0, format="onnx")
        ```
        """
        return _export_peer(
            self,
            filepath,
            peer=peer,
            mean_teacher=mean_teacher,
            format=format,
            overwrite=overwrite,
            verbose=verbose,
            class_names=class_names,
        )

    def get_peer(self, index, mean_teacher=None):
        """Returns peer `index` as a standalone `keras.Model`.

        The network is exactly the target architecture: `preprocessing`,
        trunk, the peer's own layers and its classifier, from raw images to
        logits. Its weights are copies, so it can be saved, exported or
        fine-tuned without touching this model.

        Args:
            index: int in `[0, num_peers)` (any peer, also one that the
                method does not deploy, e.g. an OKDDip auxiliary peer).
            mean_teacher: the peer's mean teacher (what PCL deploys) or, if
                False, the student peer. Defaults to the mean teacher where
                the method has mean teachers, else the peer.

        Input contract: raw pixels `(batch, height, width, channels)` in
        [0, 255] (uint8, or floats of that range; the input is named
        `images`), as in training: the network's first layer is the
        model's `preprocessing`, which scales them. Images already scaled
        to [0, 1] would be scaled twice.

        Returns:
            A functional `keras.Model` from raw images to logits.
        """
        self._check_peer_index(index, "index")
        mean_teacher = self._resolve_mean_teacher(mean_teacher)
        inputs = keras.Input(shape=self._image_shape, name="images")
        x = inputs
        for part in (self.preprocessing,) + self._peer_parts(index, mean_teacher):
            clone = clone_layer(part)
            x = clone(x)
            clone.set_weights(part.get_weights())
        kind = "mean_teacher" if mean_teacher else "student"
        return keras.Model(inputs, x, name=f"peer_{index}_{kind}")

    def resolve_peer(self, peer):
        """The peer index of `"best"`, `"deploy"` or an int; see `resolve_peer`."""
        return resolve_peer(self, peer)

    def _resolve_mean_teacher(self, mean_teacher):
        if mean_teacher is None:
            return self.has_mean_teachers
        if not isinstance(mean_teacher, bool):
            raise_invalid("mean_teacher", mean_teacher, "True, False or None")
        if mean_teacher and not self.has_mean_teachers:
            raise ValueError(
                f"{type(self).__name__} has no mean teachers; pass "
                "`mean_teacher=False` (or leave it None) to get the peer "
                "itself. Received: mean_teacher=True"
            )
        return mean_teacher

    def _peer_parts(self, index, mean_teacher):
        """The layers of peer `index` after `preprocessing`, in order."""
        parts = (self.peer_heads[index], self.peer_classifiers[index])
        return parts if self.trunk is None else (self.trunk,) + parts

    def _add_record_variable(self, name, dtype, value):
        return self.add_weight(
            shape=(),
            dtype=dtype,
            initializer=keras.initializers.Constant(value),
            trainable=False,
            aggregation="only_first_replica",
            name=name,
        )

    def _check_peer_index(self, value, name, deployable=False):
        """Checks a peer index; with `deployable`, one of `deployable_peers`."""
        if isinstance(value, bool) or not isinstance(value, int):
            raise_invalid(name, value, "an int peer index")
        if not 0 <= value < self.num_peers:
            raise_invalid(
                name,
                value,
                f"a peer index in [0, {self.num_peers - 1}] "
                f"(num_peers={self.num_peers})",
            )
        if deployable and value not in self.deployable_peers:
            raise_invalid(
                name,
                value,
                f"one of the peers that {type(self).__name__} deploys, "
                f"{list(self.deployable_peers)}",
            )


def clone_layer(layer):
    """A new layer (or functional model) with the same config, unshared."""
    if isinstance(layer, keras.Model):
        return keras.models.clone_model(layer)
    return keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer)
    )
