"""Shared helpers of the fault-injection tests (tests/test_faults*.py, tests/test_cli.py)."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pycolmap
import trimesh
from PIL import Image

LEFTOVERS = (".partial-", ".running", ".previous", ".tmp")


def png_header(width: int, height: int) -> bytes:
    """A tiny PNG file whose header claims ``width`` x ``height`` (no pixel data to speak of)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def read_back(folder: Path) -> dict:
    """The folder's manifest, after reading back every file it lists with the library users would use."""
    manifest = json.loads((folder / "manifest.json").read_text())
    for key, rel in manifest["files"].items():
        path = folder / rel
        assert path.exists(), (key, rel)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            if f.suffix == ".npz":
                with np.load(f) as z:
                    assert all(z[k] is not None for k in z.files)
            elif f.suffix in (".glb", ".ply", ".obj"):
                assert trimesh.load(f) is not None
            elif f.suffix == ".zip":
                with zipfile.ZipFile(f) as zf:
                    assert zf.testzip() is None
            elif f.suffix == ".json":
                json.loads(f.read_text())
            elif f.suffix == ".npy":
                np.load(f)
            elif f.suffix == ".png":
                with Image.open(f) as im:
                    im.load()
        if key == "colmap":
            assert pycolmap.Reconstruction(str(path)).num_reg_images() == manifest["n_views"]
    return manifest


def leftovers(folder: Path, *, keep_previous: bool = False) -> list[str]:
    """Temporary files, staging folders, running markers (and the set-aside earlier result)."""
    marks = [m for m in LEFTOVERS if not (keep_previous and m == ".previous")]
    found = [p.relative_to(folder) for p in folder.rglob("*") if any(m in p.name for m in marks)]
    return [str(p) for p in found if not (keep_previous and p.parts[0] == ".previous")]


def can_unshare() -> bool:
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=30)
    return probe.returncode == 0


def native_dump(stderr: str) -> bool:
    """glog's failure handler output (``*** SIGTERM received``, ``@ 0x...`` frames) or a Python traceback."""
    return "*** " in stderr or "@     0x" in stderr or "@ 0x" in stderr or "Traceback" in stderr


def last_line(text: str) -> str:
    lines = [ln for ln in text.replace("\r", "\n").splitlines() if ln.strip()]
    return lines[-1] if lines else ""
