"""Print the environment a bug report needs: ``python -m dimaskdino.collect_env``."""
import importlib
import os
import platform
import shutil
import subprocess
import sys


def _version_of(module_name):
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # an import error is itself the answer
        return f"not importable ({type(exc).__name__}: {exc})"
    return f"{getattr(module, '__version__', 'unknown')} @ {os.path.dirname(module.__file__)}"


def _detectron2_info():
    try:
        import detectron2
    except ImportError as exc:
        return [("detectron2", f"not importable ({exc})")]
    location = os.path.dirname(detectron2.__file__)
    route_file = os.path.join(location, "dimaskdino_install_route.json")
    route = "installed outside tools/install_detectron2.py"
    if os.path.exists(route_file):
        import json

        with open(route_file) as f:
            route = json.load(f)["route"]
    try:
        from detectron2 import _C

        compiled = "yes" if len([n for n in dir(_C) if not n.startswith("__")]) else "empty (no compiled ops)"
    except ImportError:
        compiled = "missing"
    return [
        ("detectron2", f"{detectron2.__version__} @ {location}"),
        ("detectron2 source", route),
        ("detectron2._C", compiled),
    ]


def _compiler():
    cxx = os.environ.get("CXX", "c++")
    if not shutil.which(cxx):
        return "not found"
    out = subprocess.run([cxx, "--version"], capture_output=True, text=True)
    return out.stdout.splitlines()[0] if out.returncode == 0 else "unknown"


def _nvcc():
    nvcc = shutil.which("nvcc")
    if not nvcc:
        return "not found"
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if "release" in line]
    return f"{lines[-1].strip() if lines else 'unknown'} @ {nvcc}"


def collect_env_info():
    """Rows of (name, value) describing Python, torch, detectron2, CUDA and our op."""
    import torch

    rows = [
        ("sys.platform", sys.platform),
        ("platform", platform.platform()),
        ("Python", sys.version.replace("\n", " ")),
        ("numpy", _version_of("numpy")),
        ("torch", f"{torch.__version__} @ {os.path.dirname(torch.__file__)}"),
        ("torch CUDA build", str(torch.version.cuda)),
        ("CUDA available", str(torch.cuda.is_available())),
    ]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            rows.append((f"GPU {i}", torch.cuda.get_device_name(i)))
    rows += [
        ("torch threads", str(torch.get_num_threads())),
        ("torchvision", _version_of("torchvision")),
        *_detectron2_info(),
        ("fvcore", _version_of("fvcore")),
        ("pycocotools", _version_of("pycocotools")),
        ("timm", _version_of("timm")),
        ("C++ compiler", _compiler()),
        ("nvcc", _nvcc()),
        ("CUDA_HOME", os.environ.get("CUDA_HOME", "<unset>")),
        ("dimaskdino", _version_of("dimaskdino")),
    ]
    try:
        from dimaskdino.layers import ms_deform_attn_backends

        backends = ms_deform_attn_backends()
        rows.append(("ms_deform_attn backends", ", ".join(f"{k}={v}" for k, v in backends.items())))
    except Exception as exc:
        rows.append(("ms_deform_attn backends", f"unavailable ({type(exc).__name__}: {exc})"))
    return rows


def main():
    rows = collect_env_info()
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
