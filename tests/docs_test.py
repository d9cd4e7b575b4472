"""The docs stay true: `docs/howto.md` runs, `docs/api/` matches the code.

Every ```python block of the how-to page is executed in order, in one
namespace, in a temporary working directory. The code is backend-independent
and costs several model compilations, so it runs once, on the torch backend
(the fastest to start here); the library itself is tested on every backend.
"""

import os
import re

import keras
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python_blocks(path):
    with open(path) as f:
        text = f.read()
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_the_page_has_a_recipe_for_each_question():
    blocks = python_blocks(os.path.join(ROOT, "docs", "howto.md"))
    assert len(blocks) == 10  # set-up + 9 recipes


# Backend-independent: checked once, on torch (tests/ci_budget.py).
ONCE = pytest.mark.backend_independent


@ONCE
def test_howto_recipes_run_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "howto"}
    for i, block in enumerate(python_blocks(os.path.join(ROOT, "docs", "howto.md"))):
        try:
            exec(compile(block, f"docs/howto.md block {i}", "exec"), namespace)
        except Exception as error:  # Name the failing block.
            raise AssertionError(
                f"docs/howto.md block {i} failed: {error!r}"
            ) from error
    out = capsys.readouterr().out
    assert "block_12_add" in out
    assert "('cats', 'dogs') 12 4" in out
    assert os.path.exists("best_peer.keras")


@ONCE
def test_api_pages_are_up_to_date():
    import importlib.util

    path = os.path.join(ROOT, "docs", "generate_api.py")
    spec = importlib.util.spec_from_file_location("generate_api", path)
    generate_api = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate_api)
    assert generate_api.main(["--check"]) == 0, (
        "docs/api is out of date: run `python docs/generate_api.py`"
    )


# ---------------------------------------------------------------------------
# The snippets of the README and of the other docs pages. They show real
# usage (300-epoch `fit` calls, ResNet-32, tfds datasets, placeholder arrays
# such as `x_val`), so they run against a small world: placeholder arrays
# are tiny random images, `fit` runs one epoch of at most two steps, CIFAR
# ResNets of depth 20-56 are built at depth 8, tfds is mocked and the image
# folders they name are tiny generated ones. Every call of the snippet is
# made, with the arguments it shows.
# ---------------------------------------------------------------------------

# Pages -> the backend they run on: TensorFlow where a block writes or loads
# a SavedModel (the default export format), torch (the cheapest) otherwise.
PAGES = {
    "README.md": "tensorflow",
    "docs/baselines.md": "torch",
    "docs/backbones.md": "torch",
    "docs/data.md": "torch",
}


def small_world(tmp_path, monkeypatch):
    import numpy as np
    import tensorflow_datasets as tfds

    import keras_pcl
    from tests.examples.quickstart_test import write_image_folder

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    # "../shared/data/cifar10/train" and "my_images", as the snippets say.
    write_image_folder(
        str(tmp_path / "shared/data/cifar10/train"), classes=3, per_class=10, size=32
    )
    write_image_folder(str(work / "my_images"), classes=2, per_class=10, size=40)

    original_fit = keras.Model.fit

    def short_fit(self, *args, epochs=1, **kwargs):
        kwargs["steps_per_epoch"] = min(kwargs.get("steps_per_epoch") or 2, 2)
        kwargs.setdefault("verbose", 0)
        return original_fit(self, *args, epochs=min(epochs, 1), **kwargs)

    monkeypatch.setattr(keras.Model, "fit", short_fit)
    real_resnet = keras_pcl.backbones.CIFARResNet
    real_get = keras_pcl.backbones.get
    small = lambda depth=32, **kwargs: real_resnet(depth=8, **kwargs)  # noqa: E731
    monkeypatch.setattr(keras_pcl.backbones, "CIFARResNet", small)
    monkeypatch.setattr(
        keras_pcl.backbones,
        "get",
        lambda name, **kwargs: (
            small(**kwargs)
            if name in ("resnet20", "resnet32", "resnet56")
            else real_get(name, **kwargs)
        ),
    )
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(24, 32, 32, 3), dtype="uint8")
    labels = rng.integers(0, 3, size=(24,))  # < every class count used
    import tensorflow as tf

    namespace = {
        "__name__": "docs",
        "tf": tf,
        "keras": keras,
        "keras_pcl": keras_pcl,
        "x_train_uint8": images[:16],
        "y_train": labels[:16],
        "x_uint8": images[:16],
        "x": images[:16],
        "y": labels[:16],
        "x_val": images[16:],
        "y_val": labels[16:],
        "raw_images": images[:4],
        "images_uint8": images,
        "labels": labels,
    }
    return namespace, tfds.testing.mock_data(num_examples=8)


@pytest.mark.parametrize(
    "page",
    [
        pytest.param(page, marks=pytest.mark.backend_independent(on=PAGES[page]))
        for page in sorted(PAGES)
    ],
)
def test_docs_snippets_run(page, tmp_path, monkeypatch):
    namespace, mock_tfds = small_world(tmp_path, monkeypatch)
    blocks = python_blocks(os.path.join(ROOT, page))
    assert blocks
    with mock_tfds:
        for i, block in enumerate(blocks):
            try:
                exec(compile(block, f"{page} block {i}", "exec"), namespace)
            except Exception as error:
                raise AssertionError(f"{page} block {i} failed: {error!r}") from error
