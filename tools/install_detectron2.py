#!/usr/bin/env python
"""Install detectron2 into the running Python, by the first route that works.

1. A detectron2 that already imports is kept.
2. The official source (facebookresearch/detectron2) when it can be reached, or a local
   checkout named by ``DETECTRON2_SOURCE``.
3. Otherwise PyPI's ``pb1-detectron2==0.6`` sdist, whose ``detectron2/`` package equals the
   official v0.6 release but lacks ``layers/csrc``. We add an empty extension source (DI-MaskDINO
   needs none of detectron2's compiled ops), replace the Pillow/numpy names removed since v0.6,
   and build it.

Prints which detectron2 it installed and from where. ``--check`` only reports.
"""
import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

OFFICIAL_GIT = "https://github.com/facebookresearch/detectron2.git"
PYPI_SDIST = "pb1-detectron2==0.6"
MARKER = "dimaskdino_install_route.json"

# Names removed from Pillow (10) and numpy (1.24) that detectron2 v0.6 still uses.
SOURCE_FIXES = [
    (re.compile(r"\bImage\.LINEAR\b"), "Image.BILINEAR"),
    (re.compile(r"\bnp\.bool\b(?!_)"), "bool"),
    (re.compile(r"\bnp\.int\b(?!\d|_|c|e)"), "int"),
    (re.compile(r"\bnp\.float\b(?!\d|_|i)"), "float"),
]
EMPTY_EXTENSION = (
    "// Added by dimaskdino's installer: DI-MaskDINO uses none of detectron2's compiled ops.\n"
    "#include <torch/extension.h>\n"
    "PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {}\n"
)


def log(msg):
    print(f"[install_detectron2] {msg}", flush=True)


def installed_detectron2():
    """(version, location, route) of an importable detectron2, or None."""
    code = (
        "import json, detectron2, os;"
        "print(json.dumps([detectron2.__version__, os.path.dirname(detectron2.__file__)]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        return None
    version, location = json.loads(out.stdout.strip().splitlines()[-1])
    route = "unknown (installed before this script ran)"
    marker = Path(location) / MARKER
    if marker.exists():
        route = json.loads(marker.read_text())["route"]
    return version, location, route


def pip(*args):
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True)


def reachable(host, port=443, timeout=5.0):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def write_marker(route):
    found = installed_detectron2()
    if found is None:
        raise SystemExit("detectron2 was installed but does not import; see the output above")
    (Path(found[1]) / MARKER).write_text(json.dumps({"route": route}))


def install_official(source):
    pip("install", "--no-build-isolation", source if os.path.isdir(source) else f"git+{source}")
    write_marker(f"official source: {source}")


def patch_sdist(tree: Path):
    csrc = tree / "detectron2" / "layers" / "csrc"
    csrc.mkdir(parents=True, exist_ok=True)
    (csrc / "vision.cpp").write_text(EMPTY_EXTENSION)
    changed = 0
    for path in tree.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        new = text
        for pattern, repl in SOURCE_FIXES:
            new = pattern.sub(repl, new)
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed += 1
    # Its setup.py switches to a CUDA build when a GPU is visible; the empty _C needs no nvcc.
    setup_py = tree / "setup.py"
    text = setup_py.read_text()
    setup_py.write_text(text.replace("torch.cuda.is_available()", "False"))
    log(f"patched {changed} source files of the sdist (Pillow/numpy names), added an empty _C")


def install_pypi_sdist():
    with tempfile.TemporaryDirectory(prefix="d2-sdist-") as tmp:
        tmp = Path(tmp)
        pip("download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation", "-d", str(tmp), PYPI_SDIST)
        archives = list(tmp.glob("*.tar.gz")) + list(tmp.glob("*.zip"))
        if not archives:
            raise SystemExit(f"pip download of {PYPI_SDIST} gave no source archive in {tmp}")
        if archives[0].suffix == ".zip":
            shutil.unpack_archive(str(archives[0]), str(tmp / "src"))
        else:
            with tarfile.open(archives[0]) as tar:
                tar.extractall(tmp / "src", filter="data")
        tree = next(p.parent for p in (tmp / "src").rglob("setup.py"))
        patch_sdist(tree)
        env = dict(os.environ, FORCE_CUDA="0", MAX_JOBS=os.environ.get("MAX_JOBS", "2"))
        cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "install",
               "--no-build-isolation", "--no-deps", str(tree)]
        log("$ " + " ".join(cmd))
        subprocess.run(cmd, check=True, env=env)
    write_marker(f"PyPI sdist {PYPI_SDIST}, patched (empty _C, Pillow/numpy fixes)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report what is installed")
    args = parser.parse_args()

    found = installed_detectron2()
    if found is None and not args.check:
        source = os.environ.get("DETECTRON2_SOURCE")
        if source:
            install_official(source)
        elif os.environ.get("DIMASKDINO_TRY_OFFICIAL_D2", "1") == "1" and reachable("github.com"):
            try:
                install_official(OFFICIAL_GIT)
            except subprocess.CalledProcessError:
                log("the official source could not be built; using the PyPI sdist instead")
                install_pypi_sdist()
        else:
            log("the official detectron2 source cannot be reached; using the PyPI sdist")
            install_pypi_sdist()
        found = installed_detectron2()
    if found is None:
        raise SystemExit("detectron2 is not installed; run tools/setup.sh")
    version, location, route = found
    log(f"detectron2 {version} at {location} (from: {route})")


if __name__ == "__main__":
    main()
