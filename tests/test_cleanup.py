"""The test suite leaves no gigabytes behind: its own model cache, and temporary folders removed when tests pass."""

from __future__ import annotations

import os
from pathlib import Path

from landcover.classify.engine import cache_dir


def test_tests_use_their_own_cache_inside_pytests_temporary_folder(tmp_path_factory):
    base = tmp_path_factory.getbasetemp().resolve()
    assert base in cache_dir().resolve().parents, "exported/quantized models would land in ~/.cache/landcover"
    home = Path(os.path.expanduser("~/.cache/landcover")).resolve()
    assert home not in cache_dir().resolve().parents


def test_temporary_folders_of_passing_tests_are_removed(pytestconfig):
    # trained models, checkpoints and classified rasters under tmp_path: removed as each test passes, and the
    # session's whole folder when the session passes (pytest's "failed" retention keeps only failures')
    assert pytestconfig.getini("tmp_path_retention_policy") == "failed"
    assert int(pytestconfig.getini("tmp_path_retention_count")) <= 1
