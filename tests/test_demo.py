"""`landcover demo --quick` and the example notebook: the whole workflow on the sample scene, end to end."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from landcover.cli import main
from landcover.demo.run import run_demo
from landcover.errors import LandcoverError

pytestmark = pytest.mark.slow
NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "land_cover_classification.ipynb"


def test_demo_quick_runs_the_workflow_and_writes_a_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'report.html'}" in printed
    result = json.loads((out / "demo.json").read_text())
    # Ten epochs of a ResNet-18 reach about 0.9 here; the full run passes 0.95.
    assert result["overall_accuracy"] >= 0.8 and result["quick"] is True
    # the finder searched the quick mode's range and fit trained at the rate it picked
    low, high = result["lr_find_range"]
    assert (low, high) == (1e-5, 1.0) and low < result["lr"] < high
    page = (out / "report.html").read_text()
    links = re.findall(r'(?:href|src)="([^"#:]+)"', page)
    assert links and all((out / link).exists() for link in links), "every link in the report resolves"
    for expected in ("chips/esri_accumulated_stats.json", "classified_test_area.tif", "map.html", "areas.csv",
                     "figures/show_results.png", "figures/lr_find.png"):
        assert expected in links
    # A second run into the same folder is refused with one line, not overwritten.
    assert main(["demo", "--quick", "--out", str(out)]) == 2
    assert "earlier demo run" in capsys.readouterr().err


def test_notebook_executes_in_quick_mode(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("LANDCOVER_QUICK", "1")
    monkeypatch.setenv("LANDCOVER_NOTEBOOK_OUT", str(tmp_path / "nb"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=dict(os.environ))
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert (tmp_path / "nb" / "classified.tif").exists() and (tmp_path / "nb" / "map.html").exists()
    text = "".join(o.get("text", "") for o in outputs)
    assert "overall accuracy" in text


def test_demo_out_that_is_a_file_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "small.tif"
    blocker.write_text("x")
    assert main(["demo", "--quick", "--out", str(blocker)]) == 2
    err = capsys.readouterr().err
    assert "is a file; give --out a folder" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(LandcoverError, match="is a file; give out a folder"):  # the Python API names its argument
        run_demo(blocker, quick=True)
