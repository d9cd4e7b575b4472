"""The training recipe behind the example scripts and `keras-pcl train`.

`train(TrainConfig(...))` is the whole job: data, distribution, model (any
method of `keras_pcl.methods`: `TrainConfig(method="dml")`), the paper's
optimiser and schedule, resumable `fit`, the best peer exported.
`cifar_config()` and `imagenet_config()` return the paper's recipes (spec
section 7), `finetune_config()` the fine-tuning of a pretrained
keras.applications backbone; scripts override single fields.

One job per module:

* `config`: `TrainConfig` (each field's default, help and choices in one
  place), the recipes, the absl flags of the scripts, `build_backbone_fn`;
* `applications`: keras.applications backbones, their weights files and
  their `preprocess_input` as a layer;
* `distribution`: `make_distribution`, `Distribution`, mixed precision,
  and restoring the process-wide state that training changes;
* `cluster`: several processes or hosts (JAX): the cluster description
  (`coordinator_address`, `num_processes`, `process_id`), joining it, the
  one writer; why TensorFlow and torch refuse;
* `data`: `load_data`, the resumable `training_stream` (this process's
  part of it), the evenly batched validation set, normalisation
  statistics and in-model augmentation;
* `resume`: the restore-once `BackupAndRestore`, the plan of `fit` calls
  from a restored step, the workdir's configuration check;
* `job`: `train`, built from the small functions of the others;
* `equal_cost`: the plain network against PCL (or another method) at equal
  training cost on the user's data (`keras-pcl compare`);
* `evaluation`: scoring a trained network (`.keras`, SavedModel, ONNX) on
  a dataset split: top-1, top-5, the confusion matrix (`keras-pcl
  evaluate`).

Resuming after a crash: `keras.callbacks.BackupAndRestore` writes the
model's weights (students, mean teachers, step counter, best-peer record,
augmentation random states) and the optimizer's state every `save_freq`
steps and at the end of every epoch; a damaged backup is moved aside and
the previous one restored (`resume`), and a NaN stops the run before it is
backed up (`keras_pcl.callbacks.TerminateOnNonFinite`). Keras then restarts
an interrupted epoch from its first batch, which would repeat the batches
done before the crash; `train` instead reads the restored step counter and
feeds `fit` the training stream from the next batch on
(`Dataset.repeat().skip(step)`), finishing the interrupted epoch with a
first `fit` call of the remaining steps. With `keras.utils.set_random_seed`
and op determinism, a killed and resumed run ends with the weights of an
uninterrupted one (tested).
"""

from keras_pcl.training.config import FIELD_HELP
from keras_pcl.training.config import JIT_COMPILE
from keras_pcl.training.config import MIXED_PRECISION
from keras_pcl.training.config import STRATEGIES
from keras_pcl.training.config import TrainConfig
from keras_pcl.training.config import build_backbone_fn
from keras_pcl.training.config import cifar_config
from keras_pcl.training.config import config_from_flags
from keras_pcl.training.config import define_flags
from keras_pcl.training.config import finetune_config
from keras_pcl.training.config import imagenet_config
from keras_pcl.training.data import in_model_augmentation
from keras_pcl.training.data import load_data
from keras_pcl.training.data import preprocessing_statistics
from keras_pcl.training.data import training_stream
from keras_pcl.training.data import validation_batches
from keras_pcl.training.distribution import Distribution
from keras_pcl.training.distribution import dtype_policy_name
from keras_pcl.training.distribution import global_state_restored
from keras_pcl.training.distribution import make_distribution
from keras_pcl.training.distribution import set_mixed_precision
from keras_pcl.training.equal_cost import compare
from keras_pcl.training.job import build_backbone
from keras_pcl.training.job import build_model
from keras_pcl.training.job import compile_model
from keras_pcl.training.job import model_preprocessing
from keras_pcl.training.job import train

__all__ = [
    "FIELD_HELP",
    "JIT_COMPILE",
    "MIXED_PRECISION",
    "STRATEGIES",
    "Distribution",
    "TrainConfig",
    "build_backbone",
    "build_backbone_fn",
    "build_model",
    "cifar_config",
    "compare",
    "compile_model",
    "config_from_flags",
    "define_flags",
    "dtype_policy_name",
    "finetune_config",
    "global_state_restored",
    "imagenet_config",
    "in_model_augmentation",
    "load_data",
    "make_distribution",
    "model_preprocessing",
    "preprocessing_statistics",
    "set_mixed_precision",
    "train",
    "training_stream",
    "validation_batches",
]
