"""`MultiBranchModel`: what PCL and the online-distillation baselines share.

Every method in this package trains `num_peers` copies of the high-level
layers of one backbone ("peers", or "branches"), each with its own dense
classifier, on top of a trunk that is either shared (PCL, ONE, CL-ILR,
OKDDip) or absent (DML, KDCL: separate full networks). This base class owns
that structure and everything that does not depend on the loss:

* cutting the backbone (`keras_pcl.splitting`), building fresh peers;
* the inputs: raw pixels, in-model augmentation (one view per peer, or one
  view shared by all), `preprocessing`;
* a step counter and the consistency ramp-up `w(t)` inside the compiled step;
* the best-peer record (`BestPeerTracker`), `deploy_peer`, `get_peer` and
  `export_peer`: any method deploys one network through the same path;
* `compile` (the loss and metrics are built in), loss and accuracy trackers,
  regularization losses, `tf.distribute` loss scaling, serialisation.

A method subclasses it and writes three things: `_branch_outputs` (the
forward pass of every branch), `_loss_terms` (a function from
`keras_pcl.losses`) and `_accuracy_logits` (what to report).
"""

import collections

import keras
from keras import ops

from keras_pcl.augmentation import default_augmentation
from keras_pcl.losses import consistency_rampup
from keras_pcl.losses import standardize_labels
from keras_pcl.splitting import check_backbone
from keras_pcl.splitting import fresh_clone
from keras_pcl.splitting import split_backbone
from keras_pcl.splitting import split_candidates

# The paper's CIFAR recipe: 80 ramp-up epochs of ceil(50000 / 128) steps.
DEFAULT_RAMPUP_STEPS = 80 * 391


class BestPeer(collections.namedtuple("BestPeer", ["peer", "epoch", "score"])):
    """The best peer so far: index, 0-based epoch, monitored score."""


class MultiBranchModel(keras.Model):
    """Base class of multi-branch online-distillation models.

    Not used directly: see `keras_pcl.PeerCollaborativeModel` and
    `keras_pcl.baselines`. Subclasses set the class attributes below and
    implement `_branch_outputs`, `_loss_terms` and `_accuracy_logits`.

    Class attributes:
        shares_trunk: whether the peers share the layers up to `split_at`
            (False: each peer is a full copy of the backbone).
        views_per_peer: whether each peer sees its own augmentation of the
            batch (False: one augmented view for all).
        has_mean_teachers: whether `get_peer(j, mean_teacher=True)` exists.
        min_peers: the smallest `num_peers` the method accepts.
        loss_term_names: the components of the loss that are logged.
        uses_rampup: whether the loss has a ramp-up weight `w(t)` (logged as
            `consistency_weight`).
        fixed_arguments: base-class arguments that the subclass sets itself
            and does not take (left out of `get_config`).

    Args:
        backbone: a built functional `keras.Model` from images to a pooled
            feature vector `(batch, features)`, e.g.
            `keras_pcl.backbones.CIFARResNet(depth=32)`.
        num_classes: int >= 2.
        num_peers: int, the number of peers (branches) `m`.
        split_at: name of the backbone layer that ends the shared trunk.
            Defaults to the backbone's `default_split_at`. Must be None for
            methods without a shared trunk.
        augmentation: the training augmentation, applied to raw pixels inside
            the training step. `"default"`: pad `size // 8` pixels, random
            crop, random horizontal flip. Any layer or callable works; None
            disables it.
        preprocessing: a Keras layer from raw pixels to network inputs.
            Defaults to `keras.layers.Rescaling(1 / 255)`.
        temperature: positive float, the distillation temperature `T`.
        consistency_weight: float >= 0, the weight `lambda` that the ramp-up
            `w(t)` reaches.
        rampup_steps: int >= 0, the ramp-up length in training steps.
        deploy_peer: int, the peer that `call` and `predict` use.
        **kwargs: passed to `keras.Model` (e.g. `name`).
    """

    shares_trunk = True
    views_per_peer = True
    has_mean_teachers = False
    min_peers = 2
    loss_term_names = ("ce",)
    uses_rampup = True
    # Constructor arguments a subclass fixes (dropped from `get_config`).
    fixed_arguments = ()

    def __init__(
        self,
        backbone,
        num_classes,
        num_peers=3,
        split_at=None,
        augmentation="default",
        preprocessing=None,
        temperature=3.0,
        consistency_weight=1.0,
        rampup_steps=DEFAULT_RAMPUP_STEPS,
        deploy_peer=0,
        **kwargs,
    ):
        check_int("num_classes", num_classes, minimum=2)
        check_int("num_peers", num_peers, minimum=self.min_peers)
        check_number("temperature", temperature, "a positive number")
        if temperature <= 0:
            raise_invalid("temperature", temperature, "a positive number")
        check_number("consistency_weight", consistency_weight, "a number >= 0")
        if consistency_weight < 0:
            raise_invalid("consistency_weight", consistency_weight, "a number >= 0")
        check_int("rampup_steps", rampup_steps, minimum=0)
        check_int("deploy_peer", deploy_peer, minimum=0)
        if deploy_peer >= num_peers:
            raise_invalid(
                "deploy_peer",
                deploy_peer,
                f"a peer index in [0, num_peers - 1] = [0, {num_peers - 1}]",
            )
        check_backbone(backbone)
        if self.shares_trunk:
            if split_at is None:
                split_at = getattr(backbone, "default_split_at", None)
                if split_at is None:
                    raise ValueError(
                        "`split_at` is required: backbone "
                        f"'{backbone.name}' has no `default_split_at`. Pass "
                        "the name of the layer that ends the shared trunk, "
                        f"one of {split_candidates(backbone)}. "
                        "Received: split_at=None"
                    )
            trunk, head = split_backbone(backbone, split_at)
        else:
            if split_at is not None:
                raise ValueError(
                    f"{type(self).__name__} trains separate full networks and "
                    "has no shared trunk; leave `split_at` as None. "
                    f"Received: split_at={split_at!r}"
                )
            trunk, head = None, backbone
        image_shape = tuple(backbone.inputs[0].shape[1:])
        if preprocessing is not None and not isinstance(
            preprocessing, keras.layers.Layer
        ):
            raise ValueError(
                "`preprocessing` must be a Keras layer (it becomes part of "
                "every deployed network), e.g. "
                "`keras.layers.Normalization(mean=..., variance=...)`. "
                f"Received: preprocessing={preprocessing!r}"
            )
        if not (
            augmentation is None or augmentation == "default" or callable(augmentation)
        ):
            raise ValueError(
                "`augmentation` must be 'default', None, a Keras layer or a "
                f"callable. Received: augmentation={augmentation!r}"
            )

        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.num_peers = num_peers
        self.split_at = split_at
        self.temperature = float(temperature)
        self.consistency_weight = float(consistency_weight)
        self.rampup_steps = rampup_steps
        self._image_shape = image_shape
        self._deploy_peer = deploy_peer
        # The backbone is kept as a config only: tracking it would add the
        # unused weights of its own head to this model.
        object.__setattr__(
            self,
            "_backbone_config",
            keras.saving.serialize_keras_object(backbone),
        )
        self._augmentation_arg = augmentation

        if preprocessing is None:
            preprocessing = keras.layers.Rescaling(1.0 / 255, name="rescaling")
        if not preprocessing.built:
            # Built here, not inside the first traced step: a layer such as
            # `Normalization(mean=..., variance=...)` creates tensors in
            # `build` that a later trace could not reach.
            preprocessing.build((None,) + image_shape)
        self.preprocessing = preprocessing
        if augmentation == "default":
            channels_first = keras.config.image_data_format() == "channels_first"
            spatial = image_shape[1:] if channels_first else image_shape[:2]
            augmentation = default_augmentation(spatial)
        self.augmentation = augmentation
        if isinstance(augmentation, keras.layers.Layer):
            augmentation.build((None,) + image_shape)

        self.feature_dim = head.outputs[0].shape[-1]
        # Kept for subclasses that build more copies of the peer head.
        object.__setattr__(self, "_head_template", head)
        self.trunk = trunk
        self.peer_heads = [
            fresh_clone(head, f"peer_{j}_head") for j in range(num_peers)
        ]
        self.peer_classifiers = [
            dense_classifier(num_classes, self.feature_dim, f"peer_{j}_classifier")
            for j in range(num_peers)
        ]
        self.step_counter = self.add_weight(
            shape=(),
            dtype="int32",
            initializer="zeros",
            trainable=False,
            aggregation="only_first_replica",
            name="pcl_step",
        )
        # What `keras_pcl.callbacks.BestPeerTracker` recorded: variables, so
        # that `save`, `load_model` and `BackupAndRestore` keep them.
        self._best_peer_index = self._add_record_variable("best_peer", "int32", -1)
        self._best_peer_epoch = self._add_record_variable(
            "best_peer_epoch", "int32", -1
        )
        self._best_peer_score = self._add_record_variable(
            "best_peer_score", "float32", float("-inf")
        )

    def _build_metrics(self):
        """Creates the loss and accuracy trackers; call at the end of __init__.

        The accuracy metrics are named after the keys of `_accuracy_logits`
        (`peer_{j}` -> `peer_{j}_accuracy`).
        """
        self.loss_trackers = [
            keras.metrics.Mean(name=name) for name in self.loss_term_names
        ]
        self.weight_tracker = None
        if self.uses_rampup:
            self.weight_tracker = keras.metrics.Mean(name="consistency_weight")
        self.accuracy_metrics = [
            keras.metrics.SparseCategoricalAccuracy(name=f"{name}_accuracy")
            for name in self._accuracy_names()
        ]
        self.built = True

    # ------------------------------------------------------------------
    # What a method defines
    # ------------------------------------------------------------------

    def _branch_outputs(self, views, training):
        """Returns a dict of tensors with at least `peer_logits` (a list)."""
        raise NotImplementedError

    def _loss_terms(self, y, outputs):
        """Returns a dict with `loss` and every name of `loss_term_names`."""
        raise NotImplementedError

    def _accuracy_names(self):
        return [f"peer_{j}" for j in range(self.num_peers)]

    def _accuracy_logits(self, outputs):
        """Logits to score, in the order of `_accuracy_names`."""
        return list(outputs["peer_logits"])

    def _before_training_forward(self, step):
        """Runs at the start of each training step (e.g. an EMA update)."""

    # ------------------------------------------------------------------
    # Public API
    # ------------------------------------------------------------------

    @property
    def deploy_peer(self):
        """Index of the peer that `call` and `predict` use."""
        return self._deploy_peer

    @deploy_peer.setter
    def deploy_peer(self, value):
        self._check_peer_index(value, "deploy_peer")
        if value != self._deploy_peer:
            self._deploy_peer = value
            # `predict` was traced for the previous peer.
            self.predict_function = None

    @property
    def deployable_peers(self):
        """The peer indices this method may deploy, as a tuple.

        Every peer for PCL and most baselines; OKDDip deploys only its group
        leader. `BestPeerTracker`, `export_peer(peer="best")` and the
        benchmarks choose among these only.
        """
        return tuple(range(self.num_peers))

    @property
    def best_peer(self):
        """The best peer recorded by `BestPeerTracker`, or None.

        A `BestPeer(peer, epoch, score)` tuple: the peer index, the (0-based)
        epoch and the monitored validation accuracy. It is part of the
        model's weights, so it survives `save`/`load_model` and
        `BackupAndRestore`.
        """
        peer = int(keras.ops.convert_to_numpy(self._best_peer_index.value))
        if peer < 0:
            return None
        return BestPeer(
            peer=peer,
            epoch=int(keras.ops.convert_to_numpy(self._best_peer_epoch.value)),
            score=float(keras.ops.convert_to_numpy(self._best_peer_score.value)),
        )

    def record_best_peer(self, peer, epoch, score):
        """Records `peer` as the best and makes it the `deploy_peer`.

        Called by `keras_pcl.callbacks.BestPeerTracker`; not part of a
        training step.
        """
        self._check_peer_index(peer, "peer")
        self._best_peer_index.assign(peer)
        self._best_peer_epoch.assign(epoch)
        self._best_peer_score.assign(score)
        self.deploy_peer = peer

    def export_peer(
        self,
        filepath,
        peer="best",
        mean_teacher=None,
        format="tf_saved_model",
        overwrite=False,
        verbose=False,
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
            format: `"keras"`, `"tf_saved_model"`, `"onnx"` or `"tflite"`.
            overwrite: replace an existing `filepath`.
            verbose: let Keras print what it writes.

        Returns:
            The exported `keras.Model`.

        Example:

        ```python
        model.export_peer("served/pcl_resnet32", peer="best")
        model.export_peer("pcl_resnet32.onnx", peer=0, format="onnx")
        ```
        """
        from keras_pcl.export import export_peer

        return export_peer(
            self,
            filepath,
            peer=peer,
            mean_teacher=mean_teacher,
            format=format,
            overwrite=overwrite,
            verbose=verbose,
        )

    def get_peer(self, index, mean_teacher=None):
        """Returns peer `index` as a standalone `keras.Model`.

        The network is exactly the target architecture: `preprocessing`,
        trunk, the peer's own layers and its classifier, from raw images to
        logits. Its weights are copies, so it can be saved, exported or
        fine-tuned without touching this model.

        Args:
            index: int in `[0, num_peers)`.
            mean_teacher: the peer's mean teacher (what PCL deploys) or, if
                False, the student peer. Defaults to the mean teacher where
                the method has mean teachers, else the peer.

        Returns:
            A functional `keras.Model`.
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

    # ------------------------------------------------------------------
    # Forward passes
    # ------------------------------------------------------------------

    def call(self, inputs, training=False):
        views = self.peer_views(inputs, training)
        if training:
            return self._training_forward(views)
        j = self._deploy_peer
        x = views[j]
        for part in self._peer_parts(j, self.has_mean_teachers):
            x = part(x, training=False)
        return x

    def _training_forward(self, views):
        step = self.step_counter.value
        self._before_training_forward(step)
        outputs = self._branch_outputs(views, training=True)
        outputs["consistency_weight"] = consistency_rampup(
            step, self.rampup_steps, self.consistency_weight
        )
        self.step_counter.assign_add(1)
        return outputs

    def _inference_outputs(self, inputs):
        """All branches in inference mode, for `evaluate`."""
        outputs = self._branch_outputs(
            self.peer_views(inputs, training=False), training=False
        )
        outputs["consistency_weight"] = consistency_rampup(
            self.step_counter.value, self.rampup_steps, self.consistency_weight
        )
        return outputs

    def peer_views(self, inputs, training=True):
        """The `num_peers` network inputs that the peers see for a batch.

        This is the first thing a training step does: each view is a draw of
        `augmentation` applied to the raw images (one per peer, or one for
        all when the method shares its view), then `preprocessing`.

        Args:
            inputs: a batch of raw images `(batch, height, width, channels)`,
                or, for methods with a view per peer, a tuple of `num_peers`
                such batches (views augmented by the input pipeline, which
                are only preprocessed).
            training: whether to augment; outside training every peer gets
                the same preprocessed images.

        Returns:
            A list of `num_peers` tensors (the same tensor repeated when the
            peers share one view).
        """
        if isinstance(inputs, dict):
            raise ValueError(
                "`x` must be a batch of images or a tuple of `num_peers` "
                f"batches (one view per peer). Received: a dict with keys "
                f"{sorted(inputs)}"
            )
        if isinstance(inputs, (list, tuple)):
            if not self.views_per_peer:
                raise ValueError(
                    f"{type(self).__name__} gives all peers the same view; "
                    "pass one batch of images, not a tuple of "
                    f"{len(inputs)} views."
                )
            if len(inputs) != self.num_peers:
                raise ValueError(
                    f"`x` holds {len(inputs)} views, but the model has "
                    f"num_peers={self.num_peers}. Pass one batch of images "
                    "(augmented in the model) or exactly one view per peer."
                )
            views = [self._check_images(v) for v in inputs]
            return [self.preprocessing(v) for v in views]
        images = self._check_images(inputs)
        if training and self.augmentation is not None:
            if self.views_per_peer:
                views = [self._augment(images) for _ in range(self.num_peers)]
                return [self.preprocessing(v) for v in views]
            return [self.preprocessing(self._augment(images))] * self.num_peers
        return [self.preprocessing(images)] * self.num_peers

    def _augment(self, images):
        if isinstance(self.augmentation, keras.layers.Layer):
            return self.augmentation(images, training=True)
        return self.augmentation(images)

    def _check_images(self, images):
        images = ops.convert_to_tensor(images)
        shape = tuple(images.shape)
        expected = self._image_shape
        if len(shape) != len(expected) + 1 or any(
            e is not None and s is not None and e != s
            for s, e in zip(shape[1:], expected)
        ):
            raise ValueError(
                f"Images must have shape (batch, {', '.join(map(str, expected))}) "
                f"to match the backbone's input. Received: x.shape={shape}"
            )
        if not keras.backend.is_float_dtype(images.dtype):
            images = ops.cast(images, "float32")
        return images

    def _peer_features(self, views, training):
        """Pooled features of every (student) peer, each on its own view."""
        if self.trunk is None:
            trunk_outputs = views
        elif self.views_per_peer:
            trunk_outputs = per_view(self.trunk, views, training)
        else:  # One view for all: the shared trunk runs once.
            trunk_outputs = [self.trunk(views[0], training=training)] * len(views)
        return [
            head(trunk_outputs[j], training=training)
            for j, head in enumerate(self.peer_heads)
        ]

    def _classify(self, features):
        return [classifier(f) for classifier, f in zip(self.peer_classifiers, features)]

    # ------------------------------------------------------------------
    # Loss and metrics
    # ------------------------------------------------------------------

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, **kwargs):
        """Configures training; the loss and metrics are built in.

        Args:
            optimizer: as in `keras.Model.compile`. The paper uses
                `keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True)`.
            loss: must be None: the method's loss is set by the constructor.
            metrics: must be None: the accuracy of every peer (and of every
                teacher the method has) is always reported.
            **kwargs: other `keras.Model.compile` arguments
                (`jit_compile`, `steps_per_execution`, ...).
        """
        name = type(self).__name__
        if loss is not None:
            raise ValueError(
                f"{name} computes its own loss (see `keras_pcl.losses`); "
                "configure it with the constructor's arguments (e.g. "
                f"`temperature`, `rampup_steps`) instead. Received: loss={loss!r}"
            )
        for key in ("metrics", "weighted_metrics"):
            value = metrics if key == "metrics" else kwargs.get(key)
            if value:
                raise ValueError(
                    f"{name} does not take `{key}`: it reports the accuracy "
                    "of every peer and of every teacher itself. "
                    f"Received: {key}={value!r}"
                )
        kwargs.pop("weighted_metrics", None)
        super().compile(optimizer=optimizer, **kwargs)

    def compile_from_config(self, config):
        # Restores the optimizer (and its state) when a `.keras` file is
        # loaded; Keras skips this for models that override `compile`.
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.optimizer is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        name = type(self).__name__
        if sample_weight is not None:
            raise ValueError(
                f"{name} does not support `sample_weight` or `class_weight`: "
                "its objective averages every term over the batch. Resample "
                "the dataset instead."
            )
        if y is None:
            raise ValueError(
                f"{name} needs labels: pass `y` to `fit` or `evaluate`, or a "
                "dataset of (images, labels) pairs."
            )
        outputs = y_pred if training else self._inference_outputs(x)
        terms = self._loss_terms(y, outputs)
        loss = scale_for_replicas(terms["loss"])
        for extra in self.losses:  # Regularizers and `add_loss` terms.
            # Keras' own aggregation: summed, and scaled for replicas on TF.
            loss = loss + ops.cast(self._aggregate_additional_loss(extra), "float32")

        for tracker in self.loss_trackers:
            tracker.update_state(terms[tracker.name])
        if self.weight_tracker is not None:
            self.weight_tracker.update_state(outputs["consistency_weight"])
        labels, sparse = standardize_labels(y, self.num_classes)
        if not sparse:
            labels = ops.argmax(labels, axis=-1)
        for metric, logits in zip(
            self.accuracy_metrics, self._accuracy_logits(outputs)
        ):
            metric.update_state(labels, logits)
        return loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        # Metrics are updated in `compute_loss`, where all branches' outputs
        # are at hand in training and in evaluation.
        return self.get_metrics_result()

    def zero_grad(self, set_to_none=True):
        """Clears the gradients of every trainable variable (torch backend).

        Keras' torch trainer calls `zero_grad()` before each backward pass.
        The inherited `torch.nn.Module.zero_grad` only reaches variables that
        Keras registered with torch, keyed by `variable.path`; a backbone with
        nested models that repeat layer names has repeated paths, and the
        gradients of the unregistered variables would then accumulate over
        steps. Clearing them directly is exact whatever the names.
        """
        for variable in self.trainable_variables:
            variable.value.grad = None

    # ------------------------------------------------------------------
    # Serialisation
    # ------------------------------------------------------------------

    def get_config(self):
        config = super().get_config()
        augmentation = self._augmentation_arg
        if augmentation is not None and augmentation != "default":
            augmentation = keras.saving.serialize_keras_object(augmentation)
        config.update(
            {
                "backbone": self._backbone_config,
                "num_classes": self.num_classes,
                "num_peers": self.num_peers,
                "split_at": self.split_at,
                "augmentation": augmentation,
                "preprocessing": keras.saving.serialize_keras_object(
                    self.preprocessing
                ),
                "temperature": self.temperature,
                "consistency_weight": self.consistency_weight,
                "rampup_steps": self.rampup_steps,
                "deploy_peer": self._deploy_peer,
            }
        )
        for key in self.fixed_arguments:
            config.pop(key)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        config["preprocessing"] = keras.saving.deserialize_keras_object(
            config["preprocessing"]
        )
        if isinstance(config.get("augmentation"), dict):
            config["augmentation"] = keras.saving.deserialize_keras_object(
                config["augmentation"]
            )
        return cls(**config)

    def save_own_variables(self, store):
        # Keras keeps the random-number states of augmentation (and dropout)
        # layers out of the weights. Saving them too lets `BackupAndRestore`
        # and `load_model` continue the exact augmentation sequence, so a
        # resumed run ends with the weights of an uninterrupted one.
        super().save_own_variables(store)
        for i, state in enumerate(self._random_states()):
            store[f"random_state_{i}"] = state

    def load_own_variables(self, store):
        keys = list(store.keys())
        own = {k: store[k] for k in keys if not k.startswith("random_state_")}
        super().load_own_variables(own)
        for i, state in enumerate(self._random_states()):
            if f"random_state_{i}" in keys:  # Absent in older files.
                state.assign(store[f"random_state_{i}"])

    # ------------------------------------------------------------------
    # Helpers
    # ------------------------------------------------------------------

    def _random_states(self):
        """The `SeedGenerator` states of every layer, in tracking order."""
        return [v for v in self.variables if v.name == "seed_generator_state"]

    def _add_record_variable(self, name, dtype, value):
        return self.add_weight(
            shape=(),
            dtype=dtype,
            initializer=keras.initializers.Constant(value),
            trainable=False,
            aggregation="only_first_replica",
            name=name,
        )

    def _check_peer_index(self, value, name):
        if isinstance(value, bool) or not isinstance(value, int):
            raise_invalid(name, value, "an int peer index")
        if not 0 <= value < self.num_peers:
            raise_invalid(
                name,
                value,
                f"a peer index in [0, num_peers - 1] = [0, {self.num_peers - 1}]",
            )


def scale_for_replicas(loss):
    """Divides a per-replica batch-mean loss by the number of replicas.

    Keras' TensorFlow trainer sums the gradients of all replicas of a
    `tf.distribute` strategy, so each replica's loss must be divided by their
    number to give the gradient of the global-batch mean; its logs multiply
    it back. Keras does this inside its compiled losses
    (`keras.src.losses.loss.scale_loss_for_distribution`, not public API);
    `compute_loss` is overridden here, so it is done here. Other backends
    (JAX `keras.distribution`) compute the global-batch mean directly.
    """
    if keras.backend.backend() != "tensorflow":
        return loss
    import tensorflow as tf

    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    if replicas == 1:
        return loss
    return loss * (1.0 / replicas)


def per_view(network, views, training):
    """Runs `network` on each peer's view.

    In training every peer runs it (batch-norm statistics are updated once
    per peer, as in the spec); outside training a view that repeats is
    computed once.
    """
    if training:
        return [network(view, training=True) for view in views]
    cache = {}
    outputs = []
    for view in views:
        if id(view) not in cache:
            cache[id(view)] = network(view, training=False)
        outputs.append(cache[id(view)])
    return outputs


def dense_classifier(num_classes, input_dim, name, use_bias=True):
    """A built `Dense` layer with float32 outputs (also under mixed precision)."""
    layer = keras.layers.Dense(
        num_classes, dtype="float32", use_bias=use_bias, name=name
    )
    layer.build((None, input_dim))
    return layer


def clone_layer(layer):
    """A new layer (or functional model) with the same config, unshared."""
    if isinstance(layer, keras.Model):
        return keras.models.clone_model(layer)
    return keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer)
    )


def check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise_invalid(name, value, f"an int >= {minimum}")


def check_number(name, value, expected):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise_invalid(name, value, expected)


def check_bool(name, value):
    if not isinstance(value, bool):
        raise_invalid(name, value, "True or False")


def raise_invalid(name, value, expected):
    raise ValueError(f"`{name}` must be {expected}. Received: {name}={value!r}")
