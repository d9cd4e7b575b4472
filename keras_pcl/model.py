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

What PCL shares with the baselines of `keras_pcl.baselines` (trunk and peers,
inputs and augmentation, deployment, compile, trackers, serialisation) lives
in `keras_pcl.multi_branch.MultiBranchModel`.
"""

import keras
from keras import ops

from keras_pcl import _compat
from keras_pcl.losses import pcl_loss
from keras_pcl.mean_teacher import ema_decay_warning
from keras_pcl.mean_teacher import freeze_variable
from keras_pcl.mean_teacher import update_mean_teacher
from keras_pcl.multi_branch import DEFAULT_RAMPUP_STEPS
from keras_pcl.multi_branch import MultiBranchModel
from keras_pcl.multi_branch import dense_classifier
from keras_pcl.splitting import fresh_clone
from keras_pcl.validation import check_bool
from keras_pcl.validation import check_choice
from keras_pcl.validation import check_number

# How a mean teacher's batch-norm moving statistics are kept (spec section 4).
MEAN_TEACHER_STATISTICS = ("forward", "ema")


@keras.saving.register_keras_serializable(package="keras_pcl")
class PeerCollaborativeModel(MultiBranchModel):
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
            trunk. Defaults to the backbone's `default_split_at`, or to
            `keras_pcl.splitting.recommended_split` for the keras.applications
            families it knows (the chosen layer is printed).
        augmentation: the per-peer training augmentation, applied to raw
            pixels inside the training step and drawn independently for each
            peer. `"default"`: pad `size // 8` pixels (4 for 32x32), random
            crop, random horizontal flip. Any layer or callable works; `None`
            disables it. When `x` is a tuple of `num_peers` views (augmented by
            the input pipeline), no in-model augmentation is applied.
        preprocessing: a Keras layer that maps raw pixels to network inputs,
            e.g. `keras.layers.Normalization(mean=..., variance=...)`.
            Defaults to `keras.layers.Rescaling(1 / 255)`, or to none
            (`Identity`) for a backbone that begins with its own
            `Rescaling`/`Normalization`; another layer is refused for such a
            backbone (the pixels would be scaled twice).
        temperature: positive float, the distillation temperature `T`.
        ema_decay: float in [0, 1), the mean teachers' decay `alpha`,
            which averages over about `1 / (1 - alpha)` steps. The default
            is the paper's 0.999, for its runs of 10,000 steps or more; for
            a shorter run pass `keras_pcl.mean_teacher.ema_decay_for_run(
            total_steps)` (a tenth of the run). `fit` warns when it starts a
            run for which the decay averages over more than a tenth.
        consistency_weight: float >= 0, the weight `lambda` that `w(t)`
            ramps up to.
        rampup_steps: int >= 0, ramp-up length `t_r` in training steps. The
            paper ramps up over 80 of its 300 epochs: pass
            `round(80 / 300 * total_steps)` for a run of `total_steps`. The
            default is the paper's full run, 80 epochs of CIFAR at batch 128
            (391 steps each); `fit` warns when it starts a run shorter than
            the ramp-up (`keras_pcl.training` scales both with the run).
        deploy_peer: int, the peer whose mean teacher `call`/`predict` use.
        distill_from_ensemble: ablation switch (spec section 8). If False,
            the peers are not distilled from the ensemble teacher (`L_pe`
            is logged but not added to the loss) and the ensemble
            classifier becomes a probe on detached peer features: trained
            and reported, but with no influence on the peers.
        distill_from_mean_teachers: ablation switch. If False, `L_pm` is
            logged but not added to the loss. The mean teachers are still
            kept (and deployed), so the ablation isolates what distilling
            from them brings.
        mean_teacher_statistics: how each mean teacher's batch-norm moving
            statistics (used at inference and export) are kept (spec
            section 4 allows both). `"forward"` (the default): gathered by
            the mean teacher's own training-mode forward passes. `"ema"`:
            the exponential moving average of its student's moving
            statistics, updated with the weights. `"ema"` needs
            `distill_from_mean_teachers=False`: then nothing in training
            needs the mean teachers' forward passes, and they are skipped
            (about a fifth of a PCL step), with the same loss, students and
            averaged weights; `L_pm`, the mean teachers' accuracies and the
            compiled `metrics` (which score the deployed mean teacher) are
            then reported for validation only. `keras_pcl/methods.py` names
            this configuration `pcl_lean`.
        views_per_peer: whether each peer gets its own random augmentation
            of the batch (True, the paper's method). False is the ablation
            of spec section 8: one augmentation per step, shared by all
            peers (method `pcl_shared_augmentation`). Configs saved
            before this name hold the inverse, `shared_augmentation`,
            which `from_config` still reads.
        **kwargs: `peer_initialization` (`"fresh"` as in the paper, or
            `"backbone"` to start every peer and mean teacher from the
            backbone's weights when fine-tuning), `peer_perturbation` (see
            `keras_pcl.multi_branch.MultiBranchModel`), the speed-up
            switches `fuse_views` and `fast_paths` (`"auto"`, True or False;
            see `keras_pcl.speedups`), or `keras.Model` arguments (e.g.
            `name`).

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

    has_mean_teachers = True
    loss_term_names = ("ce", "pe", "pm")
    # `views_per_peer` is one of PCL's ablation switches, not internal.
    internal_arguments = ()

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
        distill_from_ensemble=True,
        distill_from_mean_teachers=True,
        views_per_peer=True,
        mean_teacher_statistics="forward",
        **kwargs,
    ):
        check_number("ema_decay", ema_decay, "a number in [0, 1)", lambda a: 0 <= a < 1)
        check_bool("distill_from_ensemble", distill_from_ensemble)
        check_bool("distill_from_mean_teachers", distill_from_mean_teachers)
        check_bool("views_per_peer", views_per_peer)
        check_choice(
            "mean_teacher_statistics", mean_teacher_statistics, MEAN_TEACHER_STATISTICS
        )
        if mean_teacher_statistics == "ema" and distill_from_mean_teachers:
            raise ValueError(
                "`mean_teacher_statistics='ema'` needs "
                "`distill_from_mean_teachers=False`: distilling from the mean "
                "teachers runs them forward in training, and their statistics "
                "are then their own. Pass distill_from_mean_teachers=False "
                "(method 'pcl_lean'), or keep mean_teacher_statistics='forward'. "
                "Received: mean_teacher_statistics='ema', "
                "distill_from_mean_teachers=True"
            )
        super().__init__(
            backbone,
            num_classes,
            num_peers=num_peers,
            split_at=split_at,
            augmentation=augmentation,
            preprocessing=preprocessing,
            temperature=temperature,
            consistency_weight=consistency_weight,
            rampup_steps=rampup_steps,
            deploy_peer=deploy_peer,
            views_per_peer=views_per_peer,
            **kwargs,
        )
        self.ema_decay = float(ema_decay)
        self.distill_from_ensemble = distill_from_ensemble
        self.distill_from_mean_teachers = distill_from_mean_teachers
        self.mean_teacher_statistics = mean_teacher_statistics

        head = self._head_template
        self.ensemble_classifier = dense_classifier(
            num_classes, self.feature_dim * num_peers, "ensemble_classifier"
        )
        self.mean_teacher_trunk = fresh_clone(self.trunk, "mean_teacher_trunk")
        self.mean_teacher_heads = [
            fresh_clone(head, f"mean_teacher_{j}_head") for j in range(num_peers)
        ]
        self.mean_teacher_classifiers = [
            dense_classifier(
                num_classes, self.feature_dim, f"mean_teacher_{j}_classifier"
            )
            for j in range(num_peers)
        ]
        for student, teacher in zip(self._students(), self._mean_teachers()):
            teacher.set_weights(student.get_weights())
        self._fuse(self.mean_teacher_trunk)
        # The EMA runs over the student's parameters as built (trainable
        # variables now): a layer frozen later for fine-tuning still enters
        # the average, so its mean teacher converges to it (spec section 4).
        object.__setattr__(self, "_ema_pairs", self._ema_variable_pairs())
        self._freeze_mean_teachers()

    @property
    def trainable(self):
        return keras.Model.trainable.fget(self)

    @trainable.setter
    def trainable(self, value):
        keras.Model.trainable.fset(self, value)
        if getattr(self, "mean_teacher_trunk", None) is not None:
            self._freeze_mean_teachers()

    def make_train_function(self, force=False):
        # Before the step is traced: a student layer frozen for fine-tuning
        # (`model.trunk.trainable = False`, then `compile`) runs in inference
        # mode (batch norm with its moving statistics); its mean teacher
        # must too.
        self._mirror_student_trainability()
        return super().make_train_function(force=force)

    # ------------------------------------------------------------------
    # Forward passes
    # ------------------------------------------------------------------

    def _schedule_warnings(self, total_steps):
        messages = super()._schedule_warnings(total_steps)
        message = ema_decay_warning(self.ema_decay, total_steps, "ema_decay")
        return messages + ([message] if message else [])

    def before_training_forward(self, step):
        student_vars, teacher_vars = self._ema_pairs
        update_mean_teacher(
            student_vars, teacher_vars, step, self.ema_decay, fast=self._fast_paths
        )

    @property
    def skips_mean_teacher_passes(self):
        """Whether training skips the mean teachers' forward passes.

        True when no loss term needs their logits
        (`distill_from_mean_teachers=False`) and their batch-norm statistics
        are averaged from the students (`mean_teacher_statistics="ema"`).
        """
        return not self.distill_from_mean_teachers and (
            self.mean_teacher_statistics == "ema"
        )

    def compute_branch_outputs(self, views, training):
        """Logits of every peer, of the ensemble and of every mean teacher."""
        features = self.peer_features(views, training)
        ensemble_input = ops.concatenate(features, axis=-1)
        if not self.distill_from_ensemble:
            ensemble_input = ops.stop_gradient(ensemble_input)
        outputs = {
            "peer_logits": self.classify(features, training),
            "ensemble_logits": self.ensemble_classifier(ensemble_input),
        }
        if training and self.skips_mean_teacher_passes:
            # Nothing in the step reads them: not the loss, not the
            # statistics (averaged in `before_training_forward`).
            outputs["mean_teacher_logits"] = None
            return outputs
        teacher_trunk = self.apply_per_view(self.mean_teacher_trunk, views, training)
        teacher_heads = zip(self.mean_teacher_heads, self.mean_teacher_classifiers)
        return {
            **outputs,
            "mean_teacher_logits": [
                ops.stop_gradient(
                    self.apply_layer(
                        classifier,
                        self.apply_layer(head, teacher_trunk[j], training),
                        training,
                    )
                )
                for j, (head, classifier) in enumerate(teacher_heads)
            ],
        }

    def deployed_logits(self, outputs):
        if outputs["mean_teacher_logits"] is None:
            return None  # Skipped in training (`skips_mean_teacher_passes`).
        return outputs["mean_teacher_logits"][self.deploy_peer]

    def _peer_parts(self, index, mean_teacher):
        if mean_teacher:
            return (
                self.mean_teacher_trunk,
                self.mean_teacher_heads[index],
                self.mean_teacher_classifiers[index],
            )
        return super()._peer_parts(index, mean_teacher)

    # ------------------------------------------------------------------
    # Loss and metrics
    # ------------------------------------------------------------------

    def _needs_ordered_reads(self):
        # The mean-teacher update reads student weights that the optimizer
        # writes later in the step; TensorFlow graphs without XLA may swap
        # the two (see `keras_pcl._compat.tensorflow_reads_before_writes`).
        return keras.backend.backend() == "tensorflow" and not self.jit_compile

    def compute_loss_terms(self, y, outputs):
        return pcl_loss(
            y,
            outputs["peer_logits"],
            outputs["ensemble_logits"],
            outputs["mean_teacher_logits"],
            temperature=self.temperature,
            consistency_weight=outputs["consistency_weight"],
            distill_from_ensemble=self.distill_from_ensemble,
            distill_from_mean_teachers=self.distill_from_mean_teachers,
        )

    def accuracy_names(self):
        return (
            [f"peer_{j}" for j in range(self.num_peers)]
            + ["ensemble"]
            + [f"mean_teacher_{j}" for j in range(self.num_peers)]
        )

    def accuracy_logits(self, outputs):
        teachers = outputs["mean_teacher_logits"]
        return (
            list(outputs["peer_logits"])
            + [outputs["ensemble_logits"]]
            + list(teachers if teachers is not None else [None] * self.num_peers)
        )

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        if isinstance(y_pred, dict) and y_pred["mean_teacher_logits"] is None:
            # A training step that skipped the mean teachers: report what it
            # computed (the compiled metrics of the deployed mean teacher,
            # `L_pm` and the teachers' accuracies are reported for
            # validation only).
            skipped = {"pm"} | {
                f"mean_teacher_{j}_accuracy" for j in range(self.num_peers)
            }
            kept = [t.name for t in self.loss_trackers if t.name not in skipped]
            kept += [m.name for m in self.accuracy_metrics if m.name not in skipped]
            kept += ["loss", "consistency_weight"]
            compiled = _compat.compiled_metrics(self)
            if compiled is not None and not compiled.built:
                # Built (shapes only: a peer's logits stand in for the
                # deployed teacher's), as Keras would in this first trace:
                # `fit` reads every metric at the end of an epoch.
                compiled.build(y, y_pred["peer_logits"][self.deploy_peer])
            # Not `get_metrics_result`: the compiled metrics, never updated
            # in training here, may not be built.
            return {m.name: m.result() for m in self.metrics if m.name in kept}
        return super().compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    # ------------------------------------------------------------------
    # Serialisation
    # ------------------------------------------------------------------

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if "shared_augmentation" in config:  # The name before `views_per_peer`.
            config["views_per_peer"] = not config.pop("shared_augmentation")
        return super().from_config(config)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "ema_decay": self.ema_decay,
                "distill_from_ensemble": self.distill_from_ensemble,
                "distill_from_mean_teachers": self.distill_from_mean_teachers,
                "views_per_peer": self.views_per_peer,
                "mean_teacher_statistics": self.mean_teacher_statistics,
            }
        )
        return config

    # ------------------------------------------------------------------
    # Helpers
    # ------------------------------------------------------------------

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

        Batch-norm moving statistics are averaged too with
        `mean_teacher_statistics="ema"`; by default each mean teacher keeps
        the statistics of its own forward passes (spec section 4, project
        choice).
        """
        averaged_statistics = self.mean_teacher_statistics == "ema"
        students, teachers = [], []
        for student, teacher in zip(self._students(), self._mean_teachers()):
            for s, t in zip(student.weights, teacher.weights):
                floating = "float" in str(s.dtype)
                if s.trainable or (averaged_statistics and floating):
                    students.append(s)
                    teachers.append(t)
        return students, teachers

    def _mirror_student_trainability(self):
        """Each mean-teacher layer is `trainable` iff its student layer is.

        Its variables stay frozen (the optimizer never trains a mean
        teacher); the flag only decides how batch norm runs in training.
        """
        for student, teacher in zip(self._students(), self._mean_teachers()):
            for s_layer, t_layer in zip(_leaf_layers(student), _leaf_layers(teacher)):
                if t_layer.trainable != s_layer.trainable:
                    t_layer.trainable = s_layer.trainable
        self._freeze_mean_teachers()

    def _freeze_mean_teachers(self):
        for teacher in self._mean_teachers():
            for variable in teacher.weights:
                freeze_variable(variable)


def _leaf_layers(layer):
    """The layers of `layer` that are not models, depth first."""
    if not isinstance(layer, keras.Model):
        return [layer]
    return [leaf for sub in layer.layers for leaf in _leaf_layers(sub)]
