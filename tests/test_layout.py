"""The repository's shape: a spiking core without Hydra, a CLI that starts light, a product
that stands alone."""

import subprocess
import sys

from conftest import REPO

CORE = ["snnrun.core.neurons", "snnrun.core.recurrent", "snnrun.core.surrogates", "snnrun.core.encoders", "snnrun.core.architectures",
        "snnrun.core.losses", "snnrun.core.synops", "snnrun.interop.nir_export", "snnrun.interop.nir_import"]


def _python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True, text=True).stdout


def test_core_modules_import_without_hydra():
    blocker = ("import sys\n"
               "class Block:\n"
               "    def find_spec(self, name, path=None, target=None):\n"
               "        if name.split('.')[0] in ('hydra', 'omegaconf'):\n"
               "            raise ImportError('blocked: ' + name)\n"
               "sys.meta_path.insert(0, Block())\n")
    out = _python(blocker + f"import {', '.join(CORE)}\n"
                  "print(sorted(m for m in sys.modules if m.split('.')[0] in ('hydra', 'omegaconf')))")
    assert out.strip() == "[]"


def test_the_cli_imports_no_plotting_library_until_it_draws():
    assert _python("import sys, snnrun.run.cli; print('matplotlib' in sys.modules)").strip() == "False"


def test_the_product_never_points_outside_the_repository():
    """README, docs, code and configs never send a user to ../shared; only tests and CI look there for data."""
    offenders = []
    for path in REPO.rglob("*"):
        if not path.is_file() or path.suffix not in {".py", ".md", ".yaml", ".toml", ".txt", ""}:
            continue
        rel = path.relative_to(REPO)
        if rel.parts[0] in {".venv", ".git", "tests", ".ci", "outputs", "data", "build", "dist"} or ".egg-info" in str(rel):
            continue
        if rel.parts[:2] == ("bench", "results"):  # git-ignored local output: it names whatever data path was given
            continue
        if "../shared" in path.read_text(errors="ignore"):
            offenders.append(str(rel))
    assert offenders == []
