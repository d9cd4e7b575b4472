"""Train PCL on ImageNet with ResNet-18, the paper's ImageNet recipe.

    python examples/train_imagenet.py --data_dir=/path/to/tensorflow_datasets \
        --workdir=runs/imagenet --strategy=mirrored

Defaults follow spec section 7: ResNet-18 (224x224, split before stage 4),
m=3, SGD Nesterov 0.9, weight decay 1e-4, batch 256, learning rate 0.1
divided by 10 at epochs 30 and 60, 90 epochs, T=3, alpha=0.999, random
resized crop 224 + flip. ImageNet needs tfds' manual download (see
docs/data.md); the validation split is the official one. Backups every
--save_freq steps; rerun the same command to resume.
"""

from absl import app

from keras_pcl import training

training.define_flags(defaults=training.imagenet_config())


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    result = training.train(training.config_from_flags())
    print(f"Best peer: {result['best_peer']}")
    if result["exported_peer"] is not None:
        print(f"Exported peer {result['exported_peer']}: {result['paths']['export']}")
        print(f"  ({result['exported_peer_reason']})")


if __name__ == "__main__":
    app.run(main)
