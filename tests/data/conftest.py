"""Fixtures shared by the data tests."""

import os

import pytest

from tests.data.images import make_folder


@pytest.fixture()
def image_dir(tmp_path):
    root = os.path.join(tmp_path, "images")
    return root, make_folder(root)
