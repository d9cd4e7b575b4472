"""Train PCL with the paper's CIFAR recipe and export the best peer.

    python examples/train_cifar.py --dataset=cifar10 --workdir=runs/c10  # tfds
    python examples/train_cifar.py --dataset=path/to/image_folder --workdir=runs/f
    KERAS_BACKEND=jax python examples/train_cifar.py --download \
        --steps_per_execution=27 --mixed_precision=bfloat16  # a TPU VM
    python examples/train_cifar.py --method=dml --workdir=runs/dml   # a baseline
    KERAS_BACKEND=jax python examples/train_cifar.py --workdir=/shared/c10 \
        --coordinator_address=10.0.0.1:1234 --num_processes=2 --process_id=0
                                     # on each host, its own id (docs/howto.md)

Defaults reproduce spec section 7: ResNet-32, m=3, SGD with Nesterov
momentum 0.9, weight decay 5e-4, batch 128, learning rate 0.1 divided by 10
at epochs 150 and 225, 300 epochs, T=3, alpha=0.999, an 80-epoch ramp-up, pad
4 + crop + flip. A fixed, class-balanced 10% of the training set is held out
for choosing the best peer. Rerunning the same command after a crash
resumes from the last backup in --workdir (every --save_freq steps).
tfds downloads CIFAR only with --download; an image folder (one sub-folder
per class, like ../shared/data/cifar10/train) needs no network.
`--method` trains any method of `keras_pcl.methods.METHODS` (a baseline or
a PCL ablation) with the same recipe; the final model is then
`<method>.keras` instead of `pcl.keras`.
"""

from absl import app

from keras_pcl import process
from keras_pcl import training

training.define_flags(defaults=training.cifar_config())


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = training.config_from_flags()
    # This script owns its process. Before TensorFlow's first op: on a CPU
    # with fewer cores than peers, one inter-op thread per peer; on torch,
    # glibc keeps freed activations (the same numbers; keras_pcl/process.py).
    branches = process.parallel_branches(config.method, config.num_peers)
    print(process.configure(branches))
    result = training.train(config)
    best = result["best_peer"]
    print(f"Best peer: {best}" if best else "No validation accuracy recorded.")
    print(f"Final model: {result['paths']['model']}")
    if result["exported_peer"] is not None:
        print(f"Exported peer {result['exported_peer']}: {result['paths']['export']}")
        print(f"  ({result['exported_peer_reason']})")


if __name__ == "__main__":
    app.run(main)
