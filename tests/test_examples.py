"""The shipped examples run (CI runs them through this test)."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_analyze_folder_example(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "analyze_folder.py"), str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "4 micrographs" in r.stdout
    parts = pd.read_parquet(tmp_path / "o" / "particles.parquet")
    assert parts.micrograph_id.nunique() == 4 and parts.ecd_nm.notna().all()


def test_sample_licence_present():
    folder = ROOT / "examples" / "emps-sample"
    assert "MIT License" in (folder / "LICENSE").read_text()
    assert len(list(folder.glob("*.png"))) == 4
