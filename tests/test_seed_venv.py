"""mk/seed_venv.py: judge venvs share .venv's pinned packages as hard links (CI ran out of disk with copies)."""
import importlib.util
import os
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("seed_venv", Path(__file__).parents[1] / "mk" / "seed_venv.py")
seed_venv = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(seed_venv)


def _venv(root: Path, py: str = "python3.11") -> Path:
    sp = root / "lib" / py / "site-packages"
    sp.mkdir(parents=True)
    (root / "pyvenv.cfg").write_text("home = /usr/bin\n")
    return sp


def _dist(sp: Path, name: str, version: str, files: dict[str, str]) -> None:
    info = sp / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\n")
    for rel, text in files.items():
        path = sp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    rows = [*files, f"{info.name}/METADATA", f"{info.name}/RECORD", "../../../bin/script"]
    (info / "RECORD").write_text("".join(f"{r},,\n" for r in rows))


def test_pins_reads_exact_pins_only(tmp_path):
    c = tmp_path / "c.txt"
    c.write_text("# comment\nJinja2==3.1.6\ntyping_extensions == 4.16.0  # why\nnumpy<=1.26.4\nfoo>=1\n")
    assert seed_venv.pins(c) == {"jinja2": "3.1.6", "typing-extensions": "4.16.0"}


def test_seed_links_pinned_versions_and_nothing_else(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src_sp, dst_sp = _venv(src), _venv(dst)
    _dist(src_sp, "torch", "2.14.1", {"torch/__init__.py": "x = 1\n", "torch/lib/libc.so": "bin"})
    _dist(src_sp, "numpy", "2.4.6", {"numpy/__init__.py": "y = 2\n"})
    _dist(src_sp, "Jinja2", "3.1.6", {"jinja2/__init__.py": "z = 3\n"})
    c = tmp_path / "c.txt"
    c.write_text("torch==2.14.1\nnumpy==1.26.4\njinja2==3.1.6\n")
    msg = seed_venv.seed(src, dst, c)
    assert msg == f"seeded {dst} with 2 distributions from {src} (7 files, 0.0 GiB hard-linked)"
    for rel in ("torch/__init__.py", "torch/lib/libc.so", "torch-2.14.1.dist-info/RECORD", "jinja2/__init__.py"):
        assert os.path.samefile(src_sp / rel, dst_sp / rel)
    assert not (dst_sp / "numpy").exists()  # pinned at another version: pip installs it
    assert not (dst / "bin").exists()  # scripts outside site-packages are pip's
    # pip removes a seeded file by unlinking it: the source keeps its copy
    (dst_sp / "torch/__init__.py").unlink()
    assert (src_sp / "torch/__init__.py").read_text() == "x = 1\n"
    assert seed_venv.seed(src, dst, c).startswith(f"seeded {dst} with 0 distributions")  # already there


@pytest.mark.parametrize("case", ["no_source", "other_python"])
def test_seed_declines_with_the_reason(tmp_path, case):
    src, dst = tmp_path / "src", tmp_path / "dst"
    _venv(dst)
    if case == "other_python":
        _venv(src, "python3.12")
    c = tmp_path / "c.txt"
    c.write_text("torch==2.14.1\n")
    msg = seed_venv.seed(src, dst, c)
    if case == "no_source":
        assert msg == f"not seeding {dst}: no single site-packages in {src} and {dst}"
    else:
        assert msg == f"not seeding {dst}: {src} is python3.12, {dst} is python3.11"
    assert list((dst / "lib/python3.11/site-packages").iterdir()) == []
