"""The foundation: the package registers itself in detectron2, the op is compiled, the set-up is
idempotent and the environment report names every component."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_registers_meta_architecture():
    from detectron2.modeling import META_ARCH_REGISTRY

    import dimaskdino  # noqa: F401  (import fills the registries)

    assert "DIMaskDINO" in META_ARCH_REGISTRY, sorted(META_ARCH_REGISTRY._obj_map)


def test_compiled_extension_imports_with_cpu_backend():
    import dimaskdino._C  # noqa: F401
    from dimaskdino.layers import ms_deform_attn_backends

    assert ms_deform_attn_backends()["cpu"] is True


def test_collect_env_reports_components():
    out = subprocess.run([sys.executable, "-m", "dimaskdino.collect_env"], capture_output=True,
                         text=True, check=True, cwd=ROOT).stdout
    for name in ("Python", "torch", "torchvision", "detectron2 source", "nvcc", "C++ compiler",
                 "ms_deform_attn backends"):
        assert any(line.startswith(name) for line in out.splitlines()), (name, out)
    assert "cpu=True" in out


def test_detectron2_installer_reports_route():
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "install_detectron2.py"), "--check"],
                         capture_output=True, text=True, check=True).stdout
    assert "detectron2 0.6" in out or "detectron2 " in out
    assert "(from:" in out


@pytest.mark.skipif(not (ROOT / ".venv" / ".dimaskdino-setup").exists(),
                    reason="needs a venv made by tools/setup.sh")
def test_setup_second_run_is_fast_and_changes_nothing():
    venv_site = next((ROOT / ".venv" / "lib").glob("python3*/site-packages"))
    before = sorted(p.name for p in venv_site.iterdir())
    t0 = time.time()
    out = subprocess.run(["bash", str(ROOT / "tools" / "setup.sh")], capture_output=True, text=True,
                         env=dict(os.environ), check=True).stdout
    elapsed = time.time() - t0
    after = sorted(p.name for p in venv_site.iterdir())
    assert "already installed" in out and "up to date" in out, out
    assert before == after
    assert elapsed < 60, f"second set-up run took {elapsed:.0f} s"
