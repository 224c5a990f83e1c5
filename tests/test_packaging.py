"""`pip install -e .` makes the API importable from any folder, without shadowing standard modules."""
from __future__ import annotations

import os
import site
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_editable_install_imports_the_api_from_anywhere(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    # The new venv sees the base interpreter's packages; when the suite itself runs in a venv, its
    # packages (torch, ...) must be visible too: a .pth file adds this interpreter's site folders.
    own = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    Path(own, "parent_env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only what the install provides
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "-e", str(REPO)],
                             capture_output=True, text=True, timeout=300, env=env)
    assert install.returncode == 0, install.stderr[-2000:]
    code = ("from dydet import DyDet; import test, models, utils; m = DyDet(); "
            "print(m.img_size, len(m.predict(%r)), test.__file__)" % str(REPO / "data" / "images"))
    run = subprocess.run([str(python), "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    size, n, test_module = run.stdout.split()
    assert size == "128" and int(n) == len(list((REPO / "data" / "images").iterdir()))
    assert not Path(test_module).is_relative_to(REPO)  # the stdlib's test package, not test.py
