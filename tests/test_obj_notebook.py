"""Execute notebooks/01_compose_objectives.ipynb with a kernel running this interpreter."""

import pathlib

from notebook_run import assert_stored_without_outputs, execute_notebook

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "01_compose_objectives.ipynb"


def test_notebook_is_stored_without_outputs():
    assert_stored_without_outputs(NOTEBOOK)


def test_compose_objectives_notebook_executes(tmp_path, monkeypatch):
    nb, text, has_png = execute_notebook(NOTEBOOK, tmp_path, monkeypatch, timeout=120)
    assert "GRPO advantages" in text and "gated steps" in text
    assert has_png
