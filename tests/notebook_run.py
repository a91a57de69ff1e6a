"""Running the repository's notebooks in tests: one kernel spec for this interpreter, one executor."""

from __future__ import annotations

import json
import pathlib
import sys

import nbformat
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1]
KERNEL = "jaxrl-test-interpreter"


def assert_stored_without_outputs(path: pathlib.Path) -> None:
    """Notebooks are committed clean: no outputs, no execution counts."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: a cell holds outputs"


def execute_notebook(path: pathlib.Path, tmp_path: pathlib.Path, monkeypatch, *, timeout: int = 120):
    """Executes `path` from the repository root with a kernel running this interpreter (Agg plots).

    Returns `(nb, text, has_png)`: the executed notebook, its printed text and whether a cell shows an image.
    """
    spec_dir = tmp_path / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "test interpreter", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, kernel_name=KERNEL, timeout=timeout, resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    text = "".join(out.get("text", "") for out in outputs)
    return nb, text, any("image/png" in out.get("data", {}) for out in outputs)
