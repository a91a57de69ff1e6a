"""Execute notebooks/01_compose_objectives.ipynb with a kernel running this interpreter."""

import json
import pathlib
import sys

import nbformat
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "01_compose_objectives.ipynb"


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def test_compose_objectives_notebook_executes(tmp_path, monkeypatch):
    spec_dir = tmp_path / "kernels" / "jaxrl-obj-test"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "test interpreter", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, kernel_name="jaxrl-obj-test", timeout=120,
                            resources={"metadata": {"path": str(ROOT)}})
    client.execute()
    text = "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs)
    assert "GRPO advantages" in text and "gated steps" in text
    assert any("image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", []))
