"""Render the page's example scene into assets/examples/box/ (run once; the files are committed).

A textured box on a textured ground, seen from 8 cameras on an arc, rendered by the project's own
ray caster (tests/core/synthetic_render.py), so the photos are ours to redistribute. COLMAP, the
offline engine, reconstructs them; so does DUSt3R.

    python scripts/make_example.py
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.core.synthetic_render import render_orbit  # noqa: E402 (after the path set-up)

OUT = ROOT / "assets" / "examples" / "box"
N_VIEWS, WIDTH, HEIGHT, FOCAL = 8, 480, 360, 390.0


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    views = render_orbit(N_VIEWS, width=WIDTH, height=HEIGHT, focal=FOCAL, seed=7, azimuth_range_deg=(-80.0, 80.0))
    for k, view in enumerate(views):
        Image.fromarray(view.image).save(OUT / f"box_{k:02d}.jpg", quality=90, optimize=True)
    print(f"wrote {N_VIEWS} views to {OUT}")


if __name__ == "__main__":
    main()
