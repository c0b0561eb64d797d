"""A non-editable wheel install finds its configs and trains, from an unrelated directory."""

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import FAST, REPO, read_results

pytestmark = pytest.mark.e2e  # every test here runs the snnrun command in a subprocess


def test_wheel_install_runs_from_elsewhere(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", wheels, REPO],
                   check=True, capture_output=True)
    (wheel,) = wheels.glob("snnrun-*.whl")
    shipped = {n.removeprefix("snnrun/conf/") for n in zipfile.ZipFile(wheel).namelist() if n.startswith("snnrun/conf/")}
    assert {str(p.relative_to(REPO / "conf")) for p in (REPO / "conf").rglob("*.yaml")} <= shipped
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    bindir = venv / "bin"
    py = bindir / "python"
    site = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # Dependencies come from this environment (appended to sys.path, after the wheel's own files),
    # so the test needs no network; snnrun itself is only the wheel's copy.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "-q", wheel],
                   check=True, capture_output=True)
    where = subprocess.run([py, "-c", "import snnrun; print(snnrun.__file__)"], cwd=tmp_path,
                           check=True, capture_output=True, text=True).stdout
    assert str(venv) in where
    job = subprocess.run([bindir / "snnrun", "--cfg", "job", "--resolve"], cwd=tmp_path, check=True, capture_output=True,
                         text=True)
    assert "FC1000-FC10" in job.stdout
    subprocess.run([bindir / "snnrun", *FAST, "trainer.max_steps=2", "hydra.run.dir=run"], cwd=tmp_path, check=True,
                   capture_output=True)
    assert read_results(tmp_path / "run")["steps"] == 2
