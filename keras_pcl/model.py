"""`PeerCollaborativeModel`: a backbone trained with Peer Collaborative Learning.

How the training step is organised (the same code on every backend):

* `call(x, training=True)` is one training forward pass. It updates the mean
  teachers (EMA, spec section 4) *before* their forward pass, runs the `m`
  peers and their mean teachers on `m` independently augmented views, the
  ensemble classifier on the concatenated peer features, computes the
  consistency weight `w(t)` and advances the step counter.
* `compute_loss` turns those outputs into `keras_pcl.losses.pcl_loss` and
  updates the loss and accuracy trackers.

Keras' own `train_step` of each backend does the rest (gradients, optimizer,
`steps_per_execution`, `jit_compile`, distribution). Nothing is done per step
in Python, so every step compiles; a per-batch callback would be skipped when
`steps_per_execution > 1` and would force a host sync on JAX, so the mean
teachers are not updated by a callback.
"""

import collections

import keras
from keras import ops

from keras_pcl.augmentation import default_augmentation
from keras_pcl.losses import consistency_rampup
from keras_pcl.losses import pcl_loss
from keras_pcl.losses import standardize_labels
from keras_pcl.mean_teacher import freeze_variable
from keras_pcl.mean_teacher import update_mean_teacher
from keras_pcl.splitting import check_backbone
from keras_pcl.splitting import fresh_clone
from keras_pcl.splitting import split_backbone
from keras_pcl.splitting import split_candidates

class BestPeer(collections.namedtuple("BestPeer", ["peer", "epoch", "score"])):
    """The best peer so far: index, 0-based epoch, monitored score."""


# The paper's CIFAR recipe: 80 ramp-up epochs of ceil(50000 / 128) steps.
DEFAULT_RAMPUP_STEPS = 80 * 391


@keras.saving.register_keras_serializable(package="keras_pcl")
class PeerCollaborativeModel(keras.Model):
    """Peer Collaborative Learning (Wu & Gong, AAAI 2021) around a backbone.

    The backbone is cut after layer `split_at`: the layers up to it become a
    shared trunk, the layers after it are rebuilt `num_peers` times with their
    own weights, and each copy ("peer") gets a dense classifier. An ensemble
    classifier reads the concatenated peer features. Every peer (trunk
    included) has a mean teacher: an exponential moving average of its
    weights, which is what gets deployed.

    During `fit`, each peer sees its own random augmentation of the batch and
    the loss is `keras_pcl.losses.pcl_loss`: cross-entropy of every peer and
    of the ensemble, plus `w(t)` times distillation from the ensemble and from
    the other peers' mean teachers. Inputs are raw pixels (uint8, or floats
    in [0, 255]); `preprocessing` normalises them inside the model.

    `model(x)` and `predict` return the logits of the mean teacher of peer
    `deploy_peer`. `get_peer(j)` returns that network as an ordinary
    standalone `keras.Model`.

    Args:
        backbone: a built functional `keras.Model` from images to a pooled
            feature vector `(batch, features)`, e.g.
            `keras_pcl.backbones.CIFARResNet(depth=32)`. The PCL model shares
            the trunk layers with it and builds fresh layers for the peers.
        num_classes: int >= 2.
        num_peers: int >= 2, the number of peers `m`. Defaults to 3.
        split_at: name of the backbone layer whose output ends the shared
            trunk. Defaults to the backbone's `default_split_at`.
        augmentation: the per-peer training augmentation, applied to raw
            pixels inside the training step and drawn independently for each
            peer. `"default"`: pad `size // 8` pixels (4 for 32x32), random
            crop, random horizontal flip. Any layer or callable works; `None`
            disables it. When `x` is a tuple of `num_peers` views (augmented by
            the input pipeline), no in-model augmentation is applied.
        preprocessing: a Keras layer that maps raw pixels to network inputs,
            e.g. `keras.layers.Normalization(mean=..., variance=...)`.
            Defaults to `keras.layers.Rescaling(1 / 255)`.
        temperature: positive float, the distillation temperature `T`.
        ema_decay: float in [0, 1), the mean teachers' decay `alpha`.
        consistency_weight: float >= 0, the weight `lambda` that `w(t)`
            ramps up to.
        rampup_steps: int >= 0, ramp-up length `t_r` in training steps. The
            paper uses 80 epochs: pass `80 * steps_per_epoch`. The default is
            80 epochs of CIFAR at batch 128 (391 steps each).
        deploy_peer: int, the peer whose mean teacher `call`/`predict` use.
        **kwargs: passed to `keras.Model` (e.g. `name`).

    Example:

    ```python
    backbone = keras_pcl.backbones.CIFARResNet(depth=32)
    model = keras_pcl.PeerCollaborativeModel(
        backbone, num_classes=10, rampup_steps=80 * 391
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True)
    )
    model.fit(images_uint8, labels, batch_size=128, epochs=300)
    deployed = model.get_peer(model.deploy_peer)  # images -> logits
    ```
    """

    def __init__(
        self,
        backbone,
        num_classes,
        num_peers=3,
        split_at=None,
        augmentation="default",
        preprocessing=None,
        temperature=3.0,
        ema_decay=0.999,
        consistency_weight=1.0,
        rampup_steps=DEFAULT_RAMPUP_STEPS,
        deploy_peer=0,
        **kwargs,
    ):
        _check_int("num_classes", num_classes, minimum=2)
        _check_int("num_peers", num_peers, minimum=2)
        _check_number("temperature", temperature, "a positive number")
        if temperature <= 0:
            _raise("temperature", temperature, "a positive number")
        _check_number("ema_decay", ema_decay, "a number in [0, 1)")
        if not 0 <= ema_decay < 1:
            _raise("ema_decay", ema_decay, "a number in [0, 1)")
        _check_number("consistency_weight", consistency_weight, "a number >= 0")
        if consistency_weight < 0:
            _raise("consistency_weight", consistency_weight, "a number >= 0")
        _check_int("rampup_steps", rampup_steps, minimum=0)
        _check_int("deploy_peer", deploy_peer, minimum=0)
        if deploy_peer >= num_peers:
            _raise(
                "deploy_peer",
                deploy_peer,
                f"a peer index in [0, num_peers - 1] = [0, {num_peers - 1}]",
            )
        check_backbone(backbone)
        if split_at is None:
            split_at = getattr(backbone, "default_split_at", None)
            if split_at is None:
                raise ValueError(
                    "`split_at` is required: backbone "
                    f"'{backbone.name}' has no `default_split_at`. Pass the "
                    "name of the layer that ends the shared trunk, one of "
                    f"{split_candidates(backbone)}. Received: split_at=None"
                )
        trunk, head = split_backbone(backbone, split_at)
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
            augmentation is None
            or augmentation == "default"
            or callable(augmentation)
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
        self.ema_decay = float(ema_decay)
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

        feature_dim = head.outputs[0].shape[-1]
        self.trunk = trunk
        self.peer_heads = [
            fresh_clone(head, f"peer_{j}_head") for j in range(num_peers)
        ]
        self.peer_classifiers = [
            _classifier(num_classes, feature_dim, f"peer_{j}_classifier")
            for j in range(num_peers)
        ]
        self.ensemble_classifier = _classifier(
            num_classes, feature_dim * num_peers, "ensemble_classifier"
        )
        self.mean_teacher_trunk = fresh_clone(trunk, "mean_teacher_trunk")
        self.mean_teacher_heads = [
            fresh_clone(head, f"mean_teacher_{j}_head")
            for j in range(num_peers)
        ]
        self.mean_teacher_classifiers = [
            _classifier(num_classes, feature_dim, f"mean_teacher_{j}_classifier")
            for j in range(num_peers)
        ]
        for student, teacher in zip(self._students(), self._mean_teachers()):
            teacher.set_weights(student.get_weights())
        self._freeze_mean_teachers()
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

        self.ce_tracker = keras.metrics.Mean(name="ce")
        self.pe_tracker = keras.metrics.Mean(name="pe")
        self.pm_tracker = keras.metrics.Mean(name="pm")
        self.weight_tracker = keras.metrics.Mean(name="consistency_weight")
        self.peer_accuracy = [
            keras.metrics.SparseCategoricalAccuracy(name=f"peer_{j}_accuracy")
            for j in range(num_peers)
        ]
        self.ensemble_accuracy = keras.metrics.SparseCategoricalAccuracy(
            name="ensemble_accuracy"
        )
        self.mean_teacher_accuracy = [
            keras.metrics.SparseCategoricalAccuracy(
                name=f"mean_teacher_{j}_accuracy"
            )
            for j in range(num_peers)
        ]
        self.built = True

    # ------------------------------------------------------------------
    # Public API
    # ------------------------------------------------------------------

    @property
    def deploy_peer(self):
        """Index of the peer whose mean teacher `call` and `predict` use."""
        return self._deploy_peer

    @deploy_peer.setter
    def deploy_peer(self, value):
        self._check_peer_index(value, "deploy_peer")
        if value != self._deploy_peer:
            self._deploy_peer = value
            # `predict` was traced for the previous peer.
            self.predict_function = None

    @property
    def trainable(self):
        return keras.Model.trainable.fget(self)

    @trainable.setter
    def trainable(self, value):
        keras.Model.trainable.fset(self, value)
        if getattr(self, "mean_teacher_trunk", None) is not None:
            self._freeze_mean_teachers()

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
        mean_teacher=True,
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
            mean_teacher: the peer's mean teacher (default) or its student.
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

    def get_peer(self, index, mean_teacher=True):
        """Returns peer `index` as a standalone `keras.Model`.

        The network is exactly the target architecture: `preprocessing`,
        trunk, the peer's own layers and its classifier, from raw images to
        logits. Its weights are copies (of the mean teacher by default, else
        of the student), so it can be saved, exported or fine-tuned without
        touching this model.

        Args:
            index: int in `[0, num_peers)`.
            mean_teacher: if True (default), the peer's mean teacher, which is
                what PCL deploys; if False, the student peer.

        Returns:
            A functional `keras.Model`.
        """
        self._check_peer_index(index, "index")
        if mean_teacher:
            parts = (
                self.mean_teacher_trunk,
                self.mean_teacher_heads[index],
                self.mean_teacher_classifiers[index],
            )
        else:
            parts = (
                self.trunk,
                self.peer_heads[index],
                self.peer_classifiers[index],
            )
        inputs = keras.Input(shape=self._image_shape, name="images")
        x = inputs
        for part in (self.preprocessing,) + parts:
            clone = _clone_layer(part)
            x = clone(x)
            clone.set_weights(part.get_weights())
        kind = "mean_teacher" if mean_teacher else "student"
        return keras.Model(inputs, x, name=f"peer_{index}_{kind}")

    # ------------------------------------------------------------------
    # Forward passes
    # ------------------------------------------------------------------

    def call(self, inputs, training=False):
        views = self.peer_views(inputs, training)
        if training:
            return self._training_forward(views)
        j = self._deploy_peer
        return self.mean_teacher_classifiers[j](
            self.mean_teacher_heads[j](
                self.mean_teacher_trunk(views[j], training=False),
                training=False,
            )
        )

    def _training_forward(self, views):
        step = self.step_counter.value
        student_vars, teacher_vars = self._ema_variable_pairs()
        update_mean_teacher(student_vars, teacher_vars, step, self.ema_decay)
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

    def _branch_outputs(self, views, training):
        """Logits of every peer, of the ensemble and of every mean teacher."""
        student_trunk = _per_view(self.trunk, views, training)
        teacher_trunk = _per_view(self.mean_teacher_trunk, views, training)
        features = [
            head(student_trunk[j], training=training)
            for j, head in enumerate(self.peer_heads)
        ]
        teacher_heads = zip(self.mean_teacher_heads, self.mean_teacher_classifiers)
        return {
            "peer_logits": [
                classifier(f)
                for classifier, f in zip(self.peer_classifiers, features)
            ],
            "ensemble_logits": self.ensemble_classifier(
                ops.concatenate(features, axis=-1)
            ),
            "mean_teacher_logits": [
                ops.stop_gradient(
                    classifier(head(teacher_trunk[j], training=training))
                )
                for j, (head, classifier) in enumerate(teacher_heads)
            ],
        }

    def peer_views(self, inputs, training=True):
        """The `num_peers` network inputs that the peers see for a batch.

        This is the first thing a training step does: each view is an
        independent draw of `augmentation` applied to the raw images, then
        `preprocessing`. Useful to look at what the peers are trained on.

        Args:
            inputs: a batch of raw images `(batch, height, width, channels)`,
                or a tuple of `num_peers` such batches (views augmented by the
                input pipeline, which are only preprocessed).
            training: whether to augment; outside training every peer gets
                the same preprocessed images.

        Returns:
            A list of `num_peers` tensors.
        """
        if isinstance(inputs, dict):
            raise ValueError(
                "`x` must be a batch of images or a tuple of `num_peers` "
                f"batches (one view per peer). Received: a dict with keys "
                f"{sorted(inputs)}"
            )
        if isinstance(inputs, (list, tuple)):
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
            views = [self._augment(images) for _ in range(self.num_peers)]
            return [self.preprocessing(v) for v in views]
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

    # ------------------------------------------------------------------
    # Loss and metrics
    # ------------------------------------------------------------------

    def compile(
        self, optimizer="rmsprop", loss=None, metrics=None, **kwargs
    ):
        """Configures training; the loss and metrics are built in.

        Args:
            optimizer: as in `keras.Model.compile`. The paper uses
                `keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True)`.
            loss: must be None: the PCL loss is set by the constructor's
                `temperature`, `consistency_weight` and `rampup_steps`.
            metrics: must be None: accuracies of every peer, of the ensemble
                and of every mean teacher are always reported.
            **kwargs: other `keras.Model.compile` arguments
                (`jit_compile`, `steps_per_execution`, ...).
        """
        if loss is not None:
            raise ValueError(
                "PeerCollaborativeModel computes its own loss "
                "(`keras_pcl.losses.pcl_loss`); configure it with the "
                "constructor's `temperature`, `consistency_weight` and "
                f"`rampup_steps` instead. Received: loss={loss!r}"
            )
        for name in ("metrics", "weighted_metrics"):
            value = metrics if name == "metrics" else kwargs.get(name)
            if value:
                raise ValueError(
                    f"PeerCollaborativeModel does not take `{name}`: it "
                    "reports the accuracy of every peer, of the ensemble and "
                    "of every mean teacher itself. "
                    f"Received: {name}={value!r}"
                )
        kwargs.pop("weighted_metrics", None)
        super().compile(optimizer=optimizer, **kwargs)
        if keras.backend.backend() == "tensorflow" and not self.jit_compile:
            _keep_tensorflow_read_before_write_order()

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
        if sample_weight is not None:
            raise ValueError(
                "PeerCollaborativeModel does not support `sample_weight` or "
                "`class_weight`: the PCL objective averages every term over "
                "the batch. Resample the dataset instead."
            )
        if y is None:
            raise ValueError(
                "PeerCollaborativeModel needs labels: pass `y` to `fit` or "
                "`evaluate`, or a dataset of (images, labels) pairs."
            )
        outputs = y_pred if training else self._inference_outputs(x)
        terms = pcl_loss(
            y,
            outputs["peer_logits"],
            outputs["ensemble_logits"],
            outputs["mean_teacher_logits"],
            temperature=self.temperature,
            consistency_weight=outputs["consistency_weight"],
        )
        loss = _scale_for_replicas(terms["loss"])
        for extra in self.losses:  # Regularizers and `add_loss` terms.
            # Keras' own aggregation: summed, and scaled for replicas on TF.
            loss = loss + ops.cast(self._aggregate_additional_loss(extra), "float32")

        self.ce_tracker.update_state(terms["ce"])
        self.pe_tracker.update_state(terms["pe"])
        self.pm_tracker.update_state(terms["pm"])
        self.weight_tracker.update_state(outputs["consistency_weight"])
        labels, sparse = standardize_labels(y, self.num_classes)
        if not sparse:
            labels = ops.argmax(labels, axis=-1)
        for metric, logits in zip(self.peer_accuracy, outputs["peer_logits"]):
            metric.update_state(labels, logits)
        self.ensemble_accuracy.update_state(labels, outputs["ensemble_logits"])
        for metric, logits in zip(
            self.mean_teacher_accuracy, outputs["mean_teacher_logits"]
        ):
            metric.update_state(labels, logits)
        return loss

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

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        # Metrics are updated in `compute_loss`, where all branches' outputs
        # are at hand in training and in evaluation.
        return self.get_metrics_result()

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
                "ema_decay": self.ema_decay,
                "consistency_weight": self.consistency_weight,
                "rampup_steps": self.rampup_steps,
                "deploy_peer": self._deploy_peer,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(
            config["backbone"]
        )
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

    def _students(self):
        return [self.trunk, *self.peer_heads, *self.peer_classifiers]

    def _mean_teachers(self):
        return [
            self.mean_teacher_trunk,
            *self.mean_teacher_heads,
            *self.mean_teacher_classifiers,
        ]

    def _ema_variable_pairs(self):
        """Trainable student variables and their mean-teacher counterparts.

        Batch-norm moving statistics are not averaged: each mean teacher
        keeps the statistics of its own forward passes (spec section 4,
        project choice).
        """
        students, teachers = [], []
        for student, teacher in zip(self._students(), self._mean_teachers()):
            for s, t in zip(student.weights, teacher.weights):
                if s.trainable:
                    students.append(s)
                    teachers.append(t)
        return students, teachers

    def _freeze_mean_teachers(self):
        for teacher in self._mean_teachers():
            for variable in teacher.weights:
                freeze_variable(variable)

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
            _raise(name, value, "an int peer index")
        if not 0 <= value < self.num_peers:
            _raise(
                name,
                value,
                f"a peer index in [0, num_peers - 1] = [0, {self.num_peers - 1}]",
            )


def _keep_tensorflow_read_before_write_order():
    """Turns off Grappler's dependency optimizer (TensorFlow without XLA).

    The mean-teacher update reads each student weight at the start of the
    step; the optimizer writes it at the end. `tf.function` orders the two
    with a control edge, but Grappler's dependency optimizer removes such
    edges from variable reads, and the optimizer's write then sometimes runs
    first: the mean teacher averages the *updated* weight (about 1 run in 12
    of an 8-step test; 0 in 60 with this pass off). XLA (`jit_compile=True`),
    JAX and PyTorch are not affected. The setting is process-wide and only
    disables that optimisation pass.
    """
    import tensorflow as tf

    tf.config.optimizer.set_experimental_options(
        {"dependency_optimization": False}
    )


def _scale_for_replicas(loss):
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


def _per_view(network, views, training):
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


def _classifier(num_classes, input_dim, name):
    # float32 logits, also under a mixed-precision policy.
    layer = keras.layers.Dense(num_classes, dtype="float32", name=name)
    layer.build((None, input_dim))
    return layer


def _clone_layer(layer):
    """A new layer (or functional model) with the same config, unshared."""
    if isinstance(layer, keras.Model):
        return keras.models.clone_model(layer)
    return keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer)
    )


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _raise(name, value, f"an int >= {minimum}")


def _check_number(name, value, expected):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _raise(name, value, expected)


def _raise(name, value, expected):
    raise ValueError(f"`{name}` must be {expected}. Received: {name}={value!r}")
