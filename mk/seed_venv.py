"""Seed a new judge venv with hard links to the packages .venv already holds at the pinned versions.

Each judge venv (.venv-vela, .venv-rknn) needs torch 2.14.1, whose x86_64 wheel brings ~5.3 GB of CUDA
libraries (nvidia-*, triton). Installed three times that is ~16 GB of identical bytes, and CI once ran out of disk
building the second copy. pip never writes an installed file in place (it unlinks and writes anew; Python replaces
.pyc files by rename), so the judge venvs can share .venv's files as hard links: a distribution from .venv whose
``name==version`` the judge's constraints file pins is linked file by file (its RECORD, site-packages only), and pip
then finds it installed and leaves it. Removing either venv leaves the other intact (hard links, not symlinks).

Nothing is seeded, with one line saying why, where .venv is missing, its Python differs, or the two venvs are on
different file systems: pip then installs everything as before.

Usage: python mk/seed_venv.py SOURCE_VENV DEST_VENV CONSTRAINTS_FILE
"""
from __future__ import annotations

import csv
import email.parser
import os
import re
import sys
from pathlib import Path


def normalize(name: str) -> str:
    """PEP 503 name: ``Jinja2`` and ``typing_extensions`` compare as pip compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(constraints: Path) -> dict[str, str]:
    """``name==version`` lines of a constraints file (comments and other specifiers ignored)."""
    out = {}
    for line in constraints.read_text().splitlines():
        m = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)\s*(#.*)?", line)
        if m:
            out[normalize(m.group(1))] = m.group(2)
    return out


def site_packages(venv: Path) -> Path | None:
    found = sorted(venv.glob("lib/python3.*/site-packages"))
    return found[0] if len(found) == 1 else None


def installed(sp: Path):
    """(name, version, dist-info dir) of every distribution in a site-packages folder."""
    for info in sorted(sp.glob("*.dist-info")):
        meta = info / "METADATA"
        if not meta.is_file() or not (info / "RECORD").is_file():
            continue
        headers = email.parser.Parser().parsestr(meta.read_text(errors="replace"), headersonly=True)
        if headers["Name"] and headers["Version"]:
            yield normalize(headers["Name"]), headers["Version"], info


def record_files(sp: Path, info: Path) -> list[Path]:
    """The files a distribution's RECORD lists inside site-packages (bin/ scripts are left to pip)."""
    files = []
    with open(info / "RECORD", newline="") as f:
        for row in csv.reader(f):
            if not row:
                continue
            path = (sp / row[0]).resolve()
            if path.is_relative_to(sp.resolve()) and path.is_file():
                files.append(path.relative_to(sp.resolve()))
    return files


def seed(source: Path, dest: Path, constraints: Path) -> str:
    src_sp, dst_sp = site_packages(source), site_packages(dest)
    if src_sp is None or dst_sp is None:
        return f"not seeding {dest}: no single site-packages in {source} and {dest}"
    if src_sp.parent.name != dst_sp.parent.name:
        return f"not seeding {dest}: {source} is {src_sp.parent.name}, {dest} is {dst_sp.parent.name}"
    probe = dst_sp / ".seed-probe"
    try:
        os.link(src_sp.parent.parent.parent / "pyvenv.cfg", probe)
    except OSError as exc:
        return f"not seeding {dest}: cannot hard-link from {source} ({exc.strerror})"
    probe.unlink()
    wanted = pins(constraints)
    dists = files = size = 0
    for name, version, info in installed(src_sp):
        if wanted.get(name) != version or (dst_sp / info.name).exists():
            continue
        for rel in record_files(src_sp, info):
            target = dst_sp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                os.link(src_sp / rel, target)
                files += 1
                size += target.stat().st_size
        dists += 1
    return f"seeded {dest} with {dists} distributions from {source} ({files} files, {size / 2**30:.1f} GiB hard-linked)"


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    print(seed(*(Path(a) for a in argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
