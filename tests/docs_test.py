"""The docs stay true: `docs/howto.md` runs, `docs/api/` matches the code.

Every ```python block of the how-to page is executed in order, in one
namespace, in a temporary working directory. The code is backend-independent
and costs several model compilations, so it runs once, on the torch backend
(the fastest to start here); the library itself is tested on every backend.
"""

import os
import re

from tests.ci_budget import torch_only_in_ci

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python_blocks(path):
    with open(path) as f:
        text = f.read()
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_the_page_has_a_recipe_for_each_question():
    blocks = python_blocks(os.path.join(ROOT, "docs", "howto.md"))
    assert len(blocks) == 8  # set-up + 7 recipes


# Backend-independent: checked once, on torch (tests/ci_budget.py).
ONCE = torch_only_in_ci


@ONCE
def test_howto_recipes_run_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "howto"}
    for i, block in enumerate(python_blocks(os.path.join(ROOT, "docs", "howto.md"))):
        try:
            exec(compile(block, f"docs/howto.md block {i}", "exec"), namespace)
        except Exception as error:  # Name the failing block.
            raise AssertionError(f"docs/howto.md block {i} failed: {error!r}") from error
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
