"""Runs a notebook's code cells as a plain Python script (no Jupyter needed).

The notebook stays the source: `notebook_script` reads the `.ipynb` JSON,
keeps its code cells in order and returns them as one script, with

* the cell tagged `parameters` (papermill's convention) followed by
  assignments that override its values (what a test runs instead of the
  defaults, e.g. a tiny image folder instead of a CIFAR-10 download);
* every IPython shell or magic line (`!pip install ...`, `%cd`) replaced by
  `pass`, a comment that quotes it, and its record in `shell_lines`, so that
  a test can check what those lines would have done; a cell magic
  (`%%bash`) is refused, as no single line can stand in for it.

    python -m tests.notebooks examples/colab_tpu.ipynb MODE='"smoke"' > s.py

Each cell becomes a block `# --- cell N ---`; a traceback's line number
then leads to the cell.
"""

import json
import sys


def code_cells(path):
    """The notebook's code cells: a list of `(source, tags)`."""
    with open(path) as f:
        notebook = json.load(f)
    cells = []
    for cell in notebook["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = cell["source"]
        source = "".join(source) if isinstance(source, list) else source
        cells.append((source, tuple(cell.get("metadata", {}).get("tags", ()))))
    return cells


def shell_lines(source):
    """The IPython shell/magic lines of a cell's source, joined over `\\`."""
    lines, current = [], None
    for line in source.splitlines():
        if current is not None:
            current += "\n" + line
        elif line.lstrip().startswith(("!", "%")):
            current = line
        else:
            continue
        if not current.endswith("\\"):
            lines.append(current)
            current = None
    if current is not None:
        lines.append(current)
    return lines


def _without_shell_lines(source, index):
    if source.lstrip().startswith("%%"):
        raise ValueError(
            f"Code cell {index} is a cell magic ({source.splitlines()[0]!r}): "
            "it cannot run as Python. Write the cell as `!command` lines or "
            "as Python (subprocess)."
        )
    out, continued = [], False
    for line in source.splitlines():
        stripped = line.lstrip()
        if continued or stripped.startswith(("!", "%")):
            indent = line[: len(line) - len(stripped)]
            if not continued:
                out.append(f"{indent}pass  # skipped shell line: {stripped}")
            else:
                out.append(f"{indent}# {stripped}")
            continued = line.endswith("\\")
        else:
            out.append(line)
    return "\n".join(out)


def notebook_script(path, parameters=None):
    """The notebook's code cells as one Python script.

    Args:
        path: the `.ipynb` file.
        parameters: a dict `{name: value}` assigned (as `repr(value)`) right
            after the cell tagged `parameters`; every name must be assigned
            in that cell.

    Returns:
        `(script, skipped)`: the script's text and the shell lines it
        skipped (see `shell_lines`), in order.

    Raises:
        ValueError: parameters but no `parameters` cell, a parameter the
            cell does not assign, or a cell magic.
    """
    parameters = dict(parameters or {})
    cells = code_cells(path)
    tagged = [i for i, (_, tags) in enumerate(cells) if "parameters" in tags]
    if parameters and len(tagged) != 1:
        raise ValueError(
            f"{path} needs exactly one code cell tagged 'parameters' to take "
            f"parameters; it has {len(tagged)}. Received: "
            f"parameters={sorted(parameters)}"
        )
    blocks, skipped = [], []
    for i, (source, tags) in enumerate(cells):
        skipped += shell_lines(source)
        blocks.append(f"# --- cell {i} ---\n{_without_shell_lines(source, i)}")
        if "parameters" in tags and parameters:
            names = {
                line.split("=")[0].strip()
                for line in source.splitlines()
                if "=" in line and not line.startswith((" ", "#"))
            }
            unknown = sorted(set(parameters) - names)
            if unknown:
                raise ValueError(
                    f"The parameters cell of {path} assigns no {unknown}: "
                    f"it assigns {sorted(names)}. Received: parameters="
                    f"{sorted(parameters)}"
                )
            assignments = "\n".join(f"{k} = {v!r}" for k, v in parameters.items())
            blocks.append(f"# --- injected parameters ---\n{assignments}")
    return "\n\n".join(blocks) + "\n", skipped


def main(argv):
    if len(argv) < 2:
        print(__doc__)
        return 2
    import ast

    parameters = {}
    for item in argv[2:]:
        name, _, value = item.partition("=")
        parameters[name] = ast.literal_eval(value)
    script, _ = notebook_script(argv[1], parameters)
    sys.stdout.write(script)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
