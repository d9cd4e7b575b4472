"""`MultiBranchModel`: what PCL and the online-distillation baselines share.

Every method in this package trains `num_peers` copies of the high-level
layers of one backbone ("peers", or "branches"), each with its own dense
classifier, on top of a trunk that is either shared (PCL, ONE, CL-ILR,
OKDDip) or absent (DML, KDCL: separate full networks). This base class owns
that structure and the training-step plumbing that does not depend on the
loss; each other job has its own module:

* cutting the backbone: `keras_pcl.splitting`;
* the peers' inputs (augmentation per peer, preprocessing):
  `keras_pcl.views.PeerViews`;
* which peer deploys, and as what network: `keras_pcl.deployment`;
* workarounds of Keras and backend internals: `keras_pcl._compat`.

What stays here: the trunk and fresh peers, the step counter and the
consistency ramp-up `w(t)` inside the compiled step, `compile` (the
method's loss is built in; Keras metrics score the deployed network), the
loss and accuracy trackers, and serialisation.

A method subclasses it and writes three things: `compute_branch_outputs` (the
forward pass of every branch), `compute_loss_terms` (a function from
`keras_pcl.losses`) and `accuracy_logits` (what to report); class
attributes describe its structure.
"""

import warnings

import keras
from keras import ops

from keras_pcl import _compat
from keras_pcl import speedups
from keras_pcl.deployment import BestPeer  # noqa: F401 (public name, kept here)
from keras_pcl.deployment import PeerDeployment
from keras_pcl.deployment import clone_layer  # noqa: F401 (public name)
from keras_pcl.losses import check_label_values
from keras_pcl.losses import consistency_rampup
from keras_pcl.losses import standardize_labels
from keras_pcl.splitting import _abbreviate as abbreviate_names
from keras_pcl.splitting import check_backbone
from keras_pcl.splitting import fresh_clone
from keras_pcl.splitting import own_preprocessing
from keras_pcl.splitting import recommended_split
from keras_pcl.splitting import split_backbone
from keras_pcl.splitting import split_candidates
from keras_pcl.splitting import suggested_split
from keras_pcl.validation import check
from keras_pcl.validation import check_bool  # noqa: F401 (used by subclasses)
from keras_pcl.validation import check_choice
from keras_pcl.validation import check_int
from keras_pcl.validation import check_number
from keras_pcl.validation import raise_invalid  # noqa: F401
from keras_pcl.views import PeerViews
from keras_pcl.views import check_images

# The paper's CIFAR recipe: 80 ramp-up epochs of ceil(50000 / 128) steps.
DEFAULT_RAMPUP_STEPS = 80 * 391
# How each peer's layers start: their own random weights, or the backbone's.
PEER_INITIALIZATIONS = ("fresh", "backbone")


class MultiBranchModel(PeerDeployment, keras.Model):
    """Base class of multi-branch online-distillation models.

    Not used directly: see `keras_pcl.PeerCollaborativeModel` and
    `keras_pcl.baselines`. Subclasses set the class attributes below and
    implement `compute_branch_outputs`, `compute_loss_terms` and `accuracy_logits`.

    Class attributes:
        shares_trunk: whether the peers share the layers up to `split_at`
            (False: each peer is a full copy of the backbone).
        views_per_peer: whether each peer sees its own augmentation of the
            batch (False: one augmented view for all). A subclass whose
            instances differ passes `views_per_peer` to this constructor.
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
            Defaults to the backbone's `default_split_at`, or, for the
            keras.applications families it knows, to
            `keras_pcl.splitting.recommended_split` (the layer chosen is
            printed). Must be None for methods without a shared trunk.
        augmentation: the training augmentation, applied to raw pixels inside
            the training step. `"default"`: pad `size // 8` pixels, random
            crop, random horizontal flip. Any layer or callable works; None
            disables it.
        preprocessing: a Keras layer from raw pixels to network inputs.
            Defaults to `keras.layers.Rescaling(1 / 255)`, or to
            `keras.layers.Identity()` for a backbone that begins with its
            own `Rescaling` or `Normalization` layer (e.g. keras.applications
            EfficientNet, ConvNeXt, MobileNetV3), which then scales the raw
            pixels itself; passing another layer for such a backbone raises
            a `ValueError` (the pixels would be scaled twice).
        peer_initialization: `"fresh"` (default, as in the paper): every
            peer's layers get their own random initialisation.
            `"backbone"`: every peer starts from the backbone's own weights
            of those layers (fine-tuning a pretrained backbone); the
            classifiers are always fresh.
        fuse_views: whether, in training, the peers' views go through a
            network they share (PCL's trunk and mean-teacher trunk) as one
            batch, with batch-norm statistics per view: the same numbers as
            one pass per view, in fewer, larger operations
            (`keras_pcl.fusion`). `"auto"` (default): on a GPU or TPU, where
            exact and expected to pay (unmeasured there so far); on CPU,
            where it measured slower, not (`keras_pcl.speedups`). A network
            with a layer that mixes the examples of a batch keeps one pass
            per view, with a warning that names the layer. True: fuse on any
            device, or raise; False: never. Deployed networks and saved
            files are plain Keras either way.
        fast_paths: whether training runs through the backend fast paths
            (`keras_pcl.fast_paths`: replacement kernels for `Conv2D`,
            `BatchNormalization`, `ReLU`, `Add` and the mean-teacher
            update on torch, the fused batch norm on TensorFlow; the same
            numbers up to float32 reduction order). `"auto"` (default): only
            for the backend and device kind where a committed figure shows
            them faster (`keras_pcl.speedups.EVIDENCE`: torch and TensorFlow
            on a CPU; plain Keras layers on a GPU until a GPU figure says
            otherwise). True: wherever they apply; False: never.
            `model.speedups` says what is used and why.
        peer_perturbation: float >= 0; with `peer_initialization="backbone"`,
            Gaussian noise of this standard deviation, relative to each
            kernel's own standard deviation, is added to every peer's kernels
            so that the peers differ. 0 (default): identical copies.
        temperature: positive float, the distillation temperature `T`.
        consistency_weight: float >= 0, the weight `lambda` that the ramp-up
            `w(t)` reaches.
        rampup_steps: int >= 0, the ramp-up length in training steps.
        deploy_peer: int, the peer that `call` and `predict` use.
        views_per_peer: None (the class attribute) or a bool; for
            subclasses only, not part of the config.
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
    # Constructor arguments for subclasses only (not options of a method).
    internal_arguments = ("views_per_peer",)

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
        peer_initialization="fresh",
        peer_perturbation=0.0,
        fuse_views="auto",
        views_per_peer=None,
        fast_paths="auto",
        **kwargs,
    ):
        check_int("num_classes", num_classes, minimum=2)
        check_int("num_peers", num_peers, minimum=self.min_peers)
        check_number("temperature", temperature, "a positive number", lambda t: t > 0)
        check_number(
            "consistency_weight",
            consistency_weight,
            "a number >= 0",
            lambda w: w >= 0,
        )
        check_int("rampup_steps", rampup_steps, minimum=0)
        check_int("deploy_peer", deploy_peer, minimum=0)
        if deploy_peer >= num_peers:
            raise_invalid(
                "deploy_peer",
                deploy_peer,
                f"a peer index in [0, num_peers - 1] = [0, {num_peers - 1}]",
            )
        check_choice("peer_initialization", peer_initialization, PEER_INITIALIZATIONS)
        check_number(
            "peer_perturbation", peer_perturbation, "a number >= 0", lambda p: p >= 0
        )
        if peer_perturbation and peer_initialization != "backbone":
            raise ValueError(
                "`peer_perturbation` perturbs peers copied from the backbone; "
                "pass `peer_initialization='backbone'` with it (fresh peers "
                "differ already). Received: peer_perturbation="
                f"{peer_perturbation!r}, peer_initialization={peer_initialization!r}"
            )
        for name, value in (("fuse_views", fuse_views), ("fast_paths", fast_paths)):
            check(value in speedups.CHOICES, name, value, "'auto', True or False")
        check_backbone(backbone)
        trunk, head, split_at = self._split(backbone, split_at)
        image_shape = tuple(backbone.inputs[0].shape[1:])
        preprocessing = _resolve_preprocessing(backbone, preprocessing)
        if views_per_peer is None:
            views_per_peer = type(self).views_per_peer
        views = PeerViews(
            num_peers,
            image_shape,
            augmentation=augmentation,
            preprocessing=preprocessing,
            views_per_peer=views_per_peer,
            owner=type(self).__name__,
            name="peer_views",
        )

        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.num_peers = num_peers
        self.split_at = split_at
        self.temperature = float(temperature)
        self.consistency_weight = float(consistency_weight)
        self.rampup_steps = rampup_steps
        self.views_per_peer = views_per_peer
        self._image_shape = image_shape
        # The backbone is kept as a config only: tracking it would add the
        # unused weights of its own head to this model.
        object.__setattr__(
            self,
            "_backbone_config",
            keras.saving.serialize_keras_object(backbone),
        )
        self._augmentation_arg = augmentation
        self.views = views

        self.feature_dim = head.outputs[0].shape[-1]
        # Kept for subclasses that build more copies of the peer head.
        object.__setattr__(self, "_head_template", head)
        self.trunk = trunk
        self.peer_initialization = peer_initialization
        self.peer_perturbation = float(peer_perturbation)
        self.peer_heads = [
            self.new_peer_head(f"peer_{j}_head") for j in range(num_peers)
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
        self._create_peer_record(deploy_peer)
        self._create_trackers()
        object.__setattr__(self, "_inference_memo", None)
        self.fuse_views = fuse_views
        self.fast_paths = fast_paths
        # What `fuse_views` and `fast_paths` resolve to here, and why.
        object.__setattr__(self, "speedups", speedups.resolve(fast_paths, fuse_views))
        speedups.log(self.speedups)
        # Training-time substitutes (`keras_pcl.fusion`), untracked: they
        # share the networks' variables and are never saved or exported.
        object.__setattr__(self, "_fused", {})
        object.__setattr__(self, "_fast_paths", self.speedups.fast_paths)
        object.__setattr__(self, "_fast_runners", {})
        self._fuse(self.trunk)
        self.built = True

    def new_peer_head(self, name):
        """A copy of the backbone's head for one peer (fresh or pretrained)."""
        head = fresh_clone(self._head_template, name)
        if self.peer_initialization == "backbone":
            head.set_weights(self._head_template.get_weights())
            if self.peer_perturbation:
                for variable in head.trainable_weights:
                    if len(variable.shape) < 2:  # Kernels only, not BN or biases.
                        continue
                    scale = ops.std(variable) * self.peer_perturbation
                    noise = keras.random.normal(variable.shape, dtype=variable.dtype)
                    variable.assign(variable + scale * noise)
        return head

    def _fuse(self, network):
        """Runs `network` on all views as one batch in training, if exact.

        See `keras_pcl.fusion`: the `num_peers` views go through `network`
        as one batch with batch-norm statistics per view, which gives the
        same values, gradients and moving statistics as one pass per view.
        A network with a layer that mixes the examples of a batch (or draws
        random numbers) keeps one pass per view, with a warning saying why;
        `fuse_views=True` makes that an error, `False` never fuses.
        """
        if network is None or not self.speedups.fuse_views:
            return  # False, or "auto" where it does not pay (`keras_pcl.speedups`).
        fusable, reason = speedups.fusable(network)
        if fusable:
            self._fused[id(network)] = speedups.view_batched_network(
                network, self.num_peers, fast=self._fast_paths
            )
            return
        message = (
            f"{type(self).__name__}: '{network.name}' runs once per peer "
            f"view, not as one batch: {reason}"
        )
        if self.fuse_views is True:
            raise ValueError(
                f"{message} Pass fuse_views='auto' or False. Received: fuse_views=True"
            )
        warnings.warn(message, stacklevel=3)

    def _split(self, backbone, split_at):
        """`(trunk, head, split_at)`: the backbone cut for this method."""
        return resolve_split(backbone, split_at, type(self).__name__, self.shares_trunk)

    def _create_trackers(self):
        """The loss and accuracy trackers, named after the method's outputs.

        The accuracy metrics are named after `accuracy_names()`
        (`peer_{j}` -> `peer_{j}_accuracy`), which depends only on the class
        and `num_peers`, so they are made here for every method.
        """
        self.loss_trackers = [
            keras.metrics.Mean(name=name) for name in self.loss_term_names
        ]
        self.weight_tracker = None
        if self.uses_rampup:
            self.weight_tracker = keras.metrics.Mean(name="consistency_weight")
        self.accuracy_metrics = [
            keras.metrics.SparseCategoricalAccuracy(name=f"{name}_accuracy")
            for name in self.accuracy_names()
        ]
        # 1 while the loss and every weight are finite (its epoch mean drops
        # below 1 from the first step that is not): what
        # `keras_pcl.callbacks.TerminateOnNonFinite` stops on.
        self.finite_tracker = keras.metrics.Mean(name="all_finite")

    # ------------------------------------------------------------------
    # What a method defines
    # ------------------------------------------------------------------

    def compute_branch_outputs(self, views, training):
        """The forward pass of every branch: a method's first hook.

        Called by `call` in training (once per step, inside the compiled
        step) and by `evaluate`'s `compute_loss` in inference. Run every
        layer through `self.apply_layer(layer, x, training)` (or the helpers
        `peer_features`, `classify`, `apply_per_view` that do), so that
        `evaluate` reuses what `call` computed and training takes the
        active speed-ups (`keras_pcl.speedups`).

        Args:
            views: a list of `num_peers` preprocessed (and, in training,
                augmented) image batches, one per peer (`peer_views`).
            training: bool.

        Returns:
            A dict of tensors with at least `"peer_logits"`, a list of the
            `num_peers` peers' logits; anything else the method's
            `compute_loss_terms` and `accuracy_logits` read.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must implement `compute_branch_outputs`."
        )

    def compute_loss_terms(self, y, outputs):
        """The method's loss and its logged components: the second hook.

        Args:
            y: the batch's labels (class ids or one-hot).
            outputs: what `compute_branch_outputs` returned, plus
                `"consistency_weight"` (the ramp-up weight `w(t)` of the
                step, see `keras_pcl.losses.consistency_rampup`).

        Returns:
            A dict with `"loss"` (a scalar, the mean over the batch) and one
            scalar per name of the class attribute `loss_term_names` (each
            logged under that name). Regularization losses are added by
            the base class.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must implement `compute_loss_terms`."
        )

    def accuracy_names(self):
        """Names of the networks whose accuracy is logged (`{name}_accuracy`).

        Defaults to `peer_0`, ..., `peer_{m-1}`. Override together with
        `accuracy_logits` to report more (an ensemble, mean teachers).
        """
        return [f"peer_{j}" for j in range(self.num_peers)]

    def accuracy_logits(self, outputs):
        """The logits to score, in the order of `accuracy_names`.

        Args:
            outputs: what `compute_branch_outputs` returned.

        Returns:
            A list of logits tensors (None for a branch the step skipped).
        """
        return list(outputs["peer_logits"])

    def deployed_logits(self, outputs):
        """The deployed network's logits among `compute_branch_outputs`'s.

        What compiled metrics (`compile(metrics=...)`) score in training.
        Defaults to the peer `deploy_peer`; PCL returns its mean teacher.
        """
        return outputs["peer_logits"][self.deploy_peer]

    def before_training_forward(self, step):
        """Runs at the start of each training step, inside the compiled step.

        Args:
            step: the model's step counter (a scalar int tensor) before this
                step. PCL updates its mean teachers here (spec section 4).
        """

    # ------------------------------------------------------------------
    # Inputs
    # ------------------------------------------------------------------

    @property
    def preprocessing(self):
        """The layer from raw pixels to network inputs (part of every peer)."""
        return self.views.preprocessing

    @property
    def augmentation(self):
        """The training augmentation of raw pixels (a layer, callable or None)."""
        return self.views.augmentation

    def peer_views(self, inputs, training=True):
        """The `num_peers` network inputs that the peers see for a batch.

        This is the first thing a training step does: each view is a draw of
        `augmentation` applied to the raw images (one per peer, or one for
        all when the method shares its view), then `preprocessing`. See
        `keras_pcl.views.PeerViews`.

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
        return self.views(inputs, training=training)

    # ------------------------------------------------------------------
    # Forward passes
    # ------------------------------------------------------------------

    def call(self, inputs, training=False):
        views = self.peer_views(inputs, training)
        if training:
            return self._training_forward(views)
        # The deployed network. What it computes is remembered, so that
        # `evaluate` (whose `compute_loss` runs every branch on the same
        # batch) does not run it twice.
        memo = []
        object.__setattr__(self, "_inference_memo", None)
        j = self.deploy_peer
        x = views[j]
        for part in self._peer_parts(j, self.has_mean_teachers):
            x = self.apply_layer(part, x, training=False, memo=memo)
        object.__setattr__(self, "_inference_memo", (views, memo, x))
        return x

    def apply_layer(self, layer, x, training, memo=None):
        """`layer(x, training=training)`; in inference, each pair runs once.

        In training on torch and TensorFlow, a functional network runs
        through the fast paths (`keras_pcl.fast_paths`) where they apply
        and `model.speedups` turns them on.
        """
        if training:
            runner = self._fast_runner(layer)
            if runner is not None:
                return runner([x], training=True)[0]
            return layer(x, training=True)
        memo = self._active_memo if memo is None else memo
        if memo is None:
            return layer(x, training=False)
        for seen_layer, seen_input, output in memo:
            if seen_layer is layer and seen_input is x:
                return output
        output = layer(x, training=False)
        memo.append((layer, x, output))
        return output

    def _fast_runner(self, layer):
        """The fast-path runner of a functional `layer`, or None."""
        if not self._fast_paths or not isinstance(layer, keras.Model):
            return None
        key = id(layer)
        if key not in self._fast_runners:
            try:  # One view: any functional model of layers.
                runner = speedups.view_batched_network(layer, 1, fast=True)
            except ValueError:  # A subclassed model, raw ops in the graph.
                runner = None
            self._fast_runners[key] = runner
        return self._fast_runners[key]

    def _training_forward(self, views):
        step = self.step_counter.value
        self.before_training_forward(step)
        outputs = self.compute_branch_outputs(views, training=True)
        outputs["consistency_weight"] = consistency_rampup(
            step, self.rampup_steps, self.consistency_weight
        )
        self.step_counter.assign_add(1)
        return outputs

    def _inference_outputs(self, inputs, deployed_logits=None):
        """All branches in inference mode, for `evaluate`.

        If `deployed_logits` is what `call` just returned for `inputs`, the
        views and every layer output that `call` computed are reused.
        """
        remembered = self._inference_memo
        object.__setattr__(self, "_inference_memo", None)
        if remembered is not None and remembered[2] is deployed_logits:
            views, memo, _ = remembered
        else:
            views, memo = self.peer_views(inputs, training=False), []
        object.__setattr__(self, "_active_memo", memo)
        try:
            outputs = self.compute_branch_outputs(views, training=False)
        finally:
            object.__setattr__(self, "_active_memo", None)
        outputs["consistency_weight"] = consistency_rampup(
            self.step_counter.value, self.rampup_steps, self.consistency_weight
        )
        return outputs

    _active_memo = None

    def apply_per_view(self, network, views, training):
        """Runs `network` on each peer's view (once per distinct view).

        In training every peer runs it (batch-norm statistics are updated
        once per peer, as in the spec); in inference a view that repeats is
        computed once.
        """
        if training and id(network) in self._fused:
            return self._fused[id(network)](views, training=True)
        return [self.apply_layer(network, view, training) for view in views]

    def peer_features(self, views, training):
        """Pooled features of every (student) peer, each on its own view."""
        if self.trunk is None:
            trunk_outputs = views
        elif self.views_per_peer:
            trunk_outputs = self.apply_per_view(self.trunk, views, training)
        else:  # One view for all: the shared trunk runs once.
            trunk_outputs = [self.apply_layer(self.trunk, views[0], training)] * len(
                views
            )
        return [
            self.apply_layer(head, trunk_outputs[j], training)
            for j, head in enumerate(self.peer_heads)
        ]

    def classify(self, features, training=False):
        """Every peer's classifier on its peer's features: the peers' logits."""
        return [
            self.apply_layer(classifier, f, training)
            for classifier, f in zip(self.peer_classifiers, features)
        ]

    # ------------------------------------------------------------------
    # Loss and metrics
    # ------------------------------------------------------------------

    # In-memory data is checked on the host first: inside the compiled step
    # an out-of-range class id is an error from deep inside the backend, or
    # silently a zero target (`losses.check_label_values`); images scaled
    # to [0, 1] are scaled twice (`views.check_images`, a warning); an
    # empty array fails inside the backend's own loop. One NumPy pass each,
    # before the first step, never per step.

    def _check_data(self, x, y=None, name="x", label_name="y"):
        # A warning points at the line that called `fit`, `predict`, ...
        check_images(x, name, type(self).__name__, stacklevel=3)
        check_label_values(y, self.num_classes, label_name)

    def fit(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.fit`, after checking in-memory images and labels.

        `views.check_images` (no empty arrays; a `PixelScaleWarning` for
        images scaled to [0, 1]) and `losses.check_label_values` run on `x`,
        `y` and arrays in `validation_data`. A run whose length `fit` makes
        known (its first call, from step 0) warns when the schedule does
        not fit it: a `rampup_steps` longer than the run, or (PCL) a mean-
        teacher `ema_decay` that averages over more than a tenth of it.
        """
        self._check_data(x, y)
        validation_data = kwargs.get("validation_data")
        if isinstance(validation_data, (tuple, list)) and len(validation_data) > 1:
            self._check_data(
                validation_data[0],
                validation_data[1],
                "validation_data[0]",
                "validation_data[1]",
            )
        self._warn_schedule(x, args, kwargs)
        return super().fit(x, y, *args, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.evaluate`, after checking in-memory images and labels."""
        self._check_data(x, y)
        return super().evaluate(x, y, *args, **kwargs)

    def predict(self, x, *args, **kwargs):
        """`keras.Model.predict`, after checking in-memory images.

        See `keras_pcl.views.check_images`: raw pixels in [0, 255] expected.
        """
        self._check_data(x)
        return super().predict(x, *args, **kwargs)

    def train_on_batch(self, x, y=None, *args, **kwargs):
        """`keras.Model.train_on_batch`, after checking images and labels."""
        self._check_data(x, y)
        return super().train_on_batch(x, y, *args, **kwargs)

    def test_on_batch(self, x, y=None, *args, **kwargs):
        """`keras.Model.test_on_batch`, after checking images and labels."""
        self._check_data(x, y)
        return super().test_on_batch(x, y, *args, **kwargs)

    def predict_on_batch(self, x):
        """`keras.Model.predict_on_batch`, after checking in-memory images."""
        self._check_data(x)
        return super().predict_on_batch(x)

    def _warn_schedule(self, x, args, kwargs):
        """Warns for a schedule longer than the run that `fit` starts."""
        total = _fit_steps(x, args, kwargs)
        if total is None:
            return
        if int(ops.convert_to_numpy(self.step_counter.value)) != 0:
            return  # Training on: this call is not the whole run.
        for message in self._schedule_warnings(total):
            warnings.warn(message, stacklevel=3)

    def _schedule_warnings(self, total_steps):
        """Messages for schedule lengths that do not fit `total_steps`."""
        if not self.uses_rampup or self.rampup_steps <= total_steps:
            return []
        return [
            f"`rampup_steps={self.rampup_steps}` is longer than the run that "
            f"this `fit` starts ({total_steps} steps): the distillation terms "
            "never reach their full weight `consistency_weight`. Build the "
            "model with a ramp-up that fits the run, e.g. the paper's 80 of "
            f"300 epochs: rampup_steps={round(80 / 300 * total_steps)} (if "
            "more `fit` calls train on, count their steps too)."
        ]

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, **kwargs):
        """Configures training; the method's loss is built in.

        Args:
            optimizer: as in `keras.Model.compile`. The paper uses
                `keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True)`.
            loss: must be None: the method's loss is set by the constructor.
            metrics: optional Keras metrics of the deployed network (the
                peer `deploy_peer`, or its mean teacher for PCL), e.g.
                `[keras.metrics.SparseTopKCategoricalAccuracy(5)]`. In
                training they score that network's training-mode logits,
                for the `deploy_peer` of when `fit` started. The accuracy
                of every peer and teacher is always reported besides.
            **kwargs: other `keras.Model.compile` arguments
                (`weighted_metrics`, `jit_compile`, `steps_per_execution`).
        """
        name = type(self).__name__
        if loss is not None:
            raise ValueError(
                f"{name} computes its own loss (see `keras_pcl.losses`); "
                "configure it with the constructor's arguments (e.g. "
                f"`temperature`, `rampup_steps`) instead. Received: loss={loss!r}"
            )
        super().compile(optimizer=optimizer, metrics=metrics, **kwargs)

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
        outputs = y_pred if training else self._inference_outputs(x, y_pred)
        terms = self.compute_loss_terms(y, outputs)
        loss = _compat.scale_loss_for_replicas(terms["loss"])
        for extra in self.losses:  # Regularizers and `add_loss` terms.
            # Keras' own aggregation: summed, and scaled for replicas on TF.
            extra = _compat.aggregate_additional_loss(self, extra)
            loss = loss + ops.cast(extra, "float32")

        self.finite_tracker.update_state(self._all_finite(loss))
        labels, sparse = standardize_labels(y, self.num_classes)
        # Each term is a mean over the batch: weighted by the batch size, as
        # Keras weights its `loss` tracker, so that an epoch's `ce` (and
        # every other term) averages the same examples as its `loss` and
        # never exceeds it (unweighted, a smaller last batch counted as
        # much as a full one).
        batch_size = ops.cast(ops.shape(labels)[0], "float32")
        for tracker in self.loss_trackers:
            if tracker.name in terms:  # A term a step may skip (PCL's `pm`).
                tracker.update_state(terms[tracker.name], sample_weight=batch_size)
        if self.weight_tracker is not None:
            self.weight_tracker.update_state(outputs["consistency_weight"])
        if not sparse:
            labels = ops.argmax(labels, axis=-1)
        for metric, logits in zip(self.accuracy_metrics, self.accuracy_logits(outputs)):
            if logits is not None:  # None: a branch the step skipped.
                metric.update_state(labels, logits)
        return loss

    def _all_finite(self, loss):
        """1.0 if `loss` and every float weight are finite, else 0.0.

        Part of the compiled step: one sum per weight (a NaN or Inf makes
        it non-finite), no gradient, no host round trip. The weights are
        those the step starts from, so a step whose update makes them
        non-finite shows in the next step (or in validation).
        """
        sums = [ops.cast(ops.reshape(loss, ()), "float32")]
        for variable in self._finite_weights():
            value = ops.stop_gradient(variable.value)
            sums.append(ops.cast(ops.sum(value), "float32"))
        return ops.cast(ops.all(ops.isfinite(ops.stack(sums))), "float32")

    def _finite_weights(self):
        """The float weights that must stay finite (not the -inf best score)."""
        return [
            v
            for v in self.weights
            if "float" in str(v.dtype) and v is not self._best_peer_score
        ]

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        # The built-in accuracies are updated in `compute_loss`, where every
        # branch's outputs are at hand; the compiled metrics score the
        # deployed network (`y_pred` is its logits outside training).
        if isinstance(y_pred, dict):
            y_pred = self.deployed_logits(y_pred)
        return super().compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def zero_grad(self, set_to_none=True):
        """Clears the gradients of every trainable variable (torch backend).

        See `keras_pcl._compat.clear_torch_gradients`.
        """
        _compat.clear_torch_gradients(self.trainable_variables)

    def make_train_function(self, force=False):
        # A new `deploy_peer` changes what compiled metrics score (`fit`
        # calls this once per `fit`, not per step).
        force = force or getattr(self, "_train_function_stale", False)
        self._train_function_stale = False
        super().make_train_function(force=force)
        function = self.train_function  # Not every backend's returns it.
        if not self._needs_ordered_reads() or getattr(function, "_ordered", False):
            return function

        def ordered(*args, **kwargs):
            with _compat.tensorflow_reads_before_writes():
                return function(*args, **kwargs)

        ordered._ordered = True
        self.train_function = ordered
        return ordered

    def _needs_ordered_reads(self):
        """Whether the training step reads weights that the optimizer writes."""
        return False

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
                "peer_initialization": self.peer_initialization,
                "peer_perturbation": self.peer_perturbation,
                "fuse_views": self.fuse_views,
                "fast_paths": self.fast_paths,
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

    def _random_states(self):
        """The `SeedGenerator` states of every layer, in tracking order."""
        return [v for v in self.variables if v.name == "seed_generator_state"]


def resolve_split(backbone, split_at, owner, shares_trunk=True, verbose=True):
    """`(trunk, head, split_at)`: `backbone` cut where a model of `owner` cuts it.

    `split_at=None` takes the backbone's `default_split_at`, else
    `keras_pcl.splitting.recommended_split` (printed, unless not
    `verbose`); a backbone of no known family then needs `split_at`, and
    the error suggests one (`keras_pcl.splitting.suggested_split`). A
    method without a shared trunk (`shares_trunk=False`) takes no
    `split_at` and returns `(None, backbone, None)`. `keras_pcl.training`
    calls this before it reads any data.

    Raises:
        ValueError: a `split_at` the backbone cannot be cut at (see
            `keras_pcl.splitting.split_backbone`), a missing one, or one
            given for a method without a shared trunk.
    """
    if not shares_trunk:
        if split_at is not None:
            raise ValueError(
                f"{owner} trains separate full networks and has no shared "
                "trunk; leave `split_at` as None. "
                f"Received: split_at={split_at!r}"
            )
        return None, backbone, None
    if split_at is None:
        split_at = getattr(backbone, "default_split_at", None)
    if split_at is None:
        split_at = recommended_split(backbone)
        if split_at is None:
            suggestion = suggested_split(backbone)
            hint = (
                f"e.g. split_at={suggestion!r} (the last layer before the "
                "final downsampling, where a last stage would begin)"
                if suggestion
                else "one of the layers that cut it in one tensor"
            )
            candidates = split_candidates(backbone)
            raise ValueError(
                "`split_at` is required: backbone "
                f"'{backbone.name}' has no `default_split_at` and is not "
                "a family that `keras_pcl.splitting.recommended_split` "
                "knows. Pass the name of the layer that ends the shared "
                f"trunk, {hint}. The {len(candidates)} layers it can be "
                f"split at: {abbreviate_names(candidates)} "
                "(`keras_pcl.splitting.split_candidates(backbone)`). "
                "Received: split_at=None"
            )
        if verbose:
            print(
                f"{owner}: split_at=None, so the trunk ends at "
                f"'{split_at}', the start of the last stage of "
                f"'{backbone.name}' (keras_pcl.splitting.recommended_split). "
                "Pass `split_at` to choose another layer."
            )
    trunk, head = split_backbone(backbone, split_at)
    return trunk, head, split_at


def _resolve_preprocessing(backbone, preprocessing):
    """`preprocessing`, or the default that does not scale pixels twice."""
    own = own_preprocessing(backbone)
    if own is None:
        return preprocessing  # PeerViews' default: Rescaling(1 / 255).
    if preprocessing is None or isinstance(preprocessing, keras.layers.Identity):
        return preprocessing or keras.layers.Identity(name="identity")
    raise ValueError(
        f"Backbone '{backbone.name}' begins with its own preprocessing "
        f"({type(own).__name__} layer '{own.name}'), and `preprocessing` "
        f"was passed as well ({type(preprocessing).__name__} layer "
        f"'{preprocessing.name}'): every peer would scale the pixels twice. "
        "Leave `preprocessing` as None (the backbone's own layer then reads "
        "the raw pixels), or build the backbone without its preprocessing "
        "(keras.applications: `include_preprocessing=False`). "
        f"Received: preprocessing={preprocessing!r}"
    )


def scale_for_replicas(loss):
    """Divides a per-replica loss by the replicas of a `tf.distribute` strategy.

    See `keras_pcl._compat.scale_loss_for_replicas`.
    """
    return _compat.scale_loss_for_replicas(loss)


def dense_classifier(num_classes, input_dim, name, use_bias=True):
    """A built `Dense` layer with float32 outputs (also under mixed precision)."""
    layer = keras.layers.Dense(
        num_classes, dtype="float32", use_bias=use_bias, name=name
    )
    layer.build((None, input_dim))
    return layer


def _fit_steps(x, args, kwargs):
    """The steps of a `fit(x, ...)` call, where they are known; else None."""
    import math

    import numpy as np

    epochs = kwargs.get("epochs", args[1] if len(args) > 1 else 1)
    initial_epoch = kwargs.get("initial_epoch", 0)
    steps = kwargs.get("steps_per_epoch")
    if steps is None:
        if isinstance(x, (tuple, list)) and x and hasattr(x[0], "shape"):
            x = x[0]  # Views of the batch.
        if hasattr(x, "shape") and len(getattr(x, "shape", ())) > 0:
            examples = int(x.shape[0])
            split = kwargs.get("validation_split") or 0.0
            examples = examples - int(examples * split)
            batch_size = kwargs.get("batch_size", args[0] if args else None) or 32
            steps = math.ceil(examples / batch_size)
        elif hasattr(x, "cardinality"):  # tf.data.Dataset
            cardinality = int(np.asarray(x.cardinality()))
            steps = cardinality if cardinality > 0 else None
        elif hasattr(x, "__len__") and not isinstance(x, (tuple, list, dict)):
            steps = len(x)  # PyDataset, Sequence
    if not isinstance(epochs, int) or not isinstance(steps, int):
        return None
    return max(epochs - initial_epoch, 0) * steps
