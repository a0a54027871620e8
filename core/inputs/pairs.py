"""Scene graphs: which (view 1, view 2) image pairs the network sees, in the reference's order.

Names, as in the reference (FORMAT.md section 4):

- ``complete``: every unordered pair once: for i in 0..n-1, for j in 0..i-1 -> (i, j).
- ``swin-K``: each image with the K next ones, wrapping around at the end (loop closure);
  ``swin-K-noncyclic`` does not wrap.
- ``logwin-K``: each image with the ones at offsets +-1, +-2, +-4, ..., +-2^(K-1), wrapping;
  ``logwin-K-noncyclic`` does not wrap.
- ``oneref-I``: image I with every other image.
- ``auto``: chosen by the image count (:func:`default_scene_graph`): ``complete`` up to
  :data:`AUTO_COMPLETE_MAX` images, above that ``logwin-K`` (each image with its neighbours at
  offsets 1, 2, 4, ..., 2^(K-1) on both sides, wrapping: a short sliding window plus a few
  long-range pairs) with K growing with log2 of the count, so the pair count grows as
  N log N instead of N^2 (100 images: 1000 pairs instead of 9900).
  For video frames the pipeline resolves ``auto`` first to a sequence graph over time
  (``core.inputs.plan.resolve_scene_graph``, ``core.inputs.video.sequence_scene_graph``).

With ``symmetrize`` (the default, and what the reference app does) the list is followed by the
same pairs reversed, so each edge is seen from both sides; for 3 images ``complete`` gives
(1,0), (2,0), (2,1), (0,1), (0,2), (1,2).

Order. The order matters downstream (global alignment breaks ties in edge order), so it is the
reference's exactly. For ``swin`` and ``logwin`` the reference collects the pairs (as
(smaller, larger) index tuples) in a Python ``set`` and emits them in the set's iteration order.
We rebuild the same set with the same insertions in the same order, so the order matches the
reference running on the same CPython (integer-tuple hashes do not depend on PYTHONHASHSEED).
One deliberate difference: ``swin-K`` with K >= n_images in cyclic mode makes the reference pair
an image with itself; those self-pairs are dropped (the rest keeps the reference order).

Single image. A pair needs two views: like the reference app, the load stage
(``core.inputs.preprocessing.load_views``) duplicates the image (:func:`duplicate_single_image`,
the copy gets idx 1), then ``make_pairs(2, ...)`` pairs them. ``make_pairs(1, ...)`` raises a
ValueError saying so.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Sequence
from typing import Literal

from core.errors import SettingsError
from core.types import InputImage

__all__ = [
    "AUTO_COMPLETE_MAX",
    "SCENE_GRAPH_KINDS",
    "count_pairs",
    "default_scene_graph",
    "describe_scene_graph",
    "duplicate_single_image",
    "format_scene_graph",
    "make_pairs",
    "max_window_size",
    "parse_scene_graph",
    "resolve_scene_graph",
]

logger = logging.getLogger(__name__)

SceneGraphKind = Literal["complete", "swin", "logwin", "oneref", "auto"]

#: The graph kinds, in the order the UI lists them.
SCENE_GRAPH_KINDS: tuple[SceneGraphKind, ...] = ("complete", "swin", "logwin", "oneref", "auto")

#: ``auto`` uses the complete graph up to this many images (380 pairs), a log window above.
AUTO_COMPLETE_MAX = 20

_EXPECTED = "'complete', 'swin-K', 'swin-K-noncyclic', 'logwin-K', 'logwin-K-noncyclic', 'oneref-I' or 'auto'"
_WINDOWED = re.compile(r"(swin|logwin)-(-?\d+)(-noncyclic)?")
_ONEREF = re.compile(r"oneref-(-?\d+)")


def parse_scene_graph(name: str) -> tuple[SceneGraphKind, int | None, bool]:
    """Scene-graph name -> (kind, parameter, cyclic).

    ``"complete"`` -> ("complete", None, False); ``"auto"`` -> ("auto", None, False);
    ``"swin-3"`` -> ("swin", 3, True);
    ``"logwin-2-noncyclic"`` -> ("logwin", 2, False); ``"oneref-0"`` -> ("oneref", 0, False).
    Surrounding blanks and letter case are ignored. Raises ValueError (with the name) for an
    unknown kind, a missing or non-integer number, or K < 1 / I < 0. Whether I is a valid
    image index is checked by :func:`make_pairs`, which knows the image count.
    """
    if not isinstance(name, str):
        raise TypeError(f"scene graph must be a str, got {type(name).__name__}")
    text = name.strip().lower()
    if text == "complete":
        return "complete", None, False
    if text == "auto":
        return "auto", None, False
    if m := _WINDOWED.fullmatch(text):
        kind: SceneGraphKind = "swin" if m.group(1) == "swin" else "logwin"
        k = int(m.group(2))
        if k < 1:
            raise SettingsError(f"scene graph {name!r}: window size K must be >= 1, got {k}")
        return kind, k, m.group(3) is None
    if m := _ONEREF.fullmatch(text):
        ref = int(m.group(1))
        if ref < 0:
            raise SettingsError(f"scene graph {name!r}: reference image index must be >= 0, got {ref}")
        return "oneref", ref, False
    if re.fullmatch(r"(swin|logwin|oneref)(-noncyclic)?", text):
        raise SettingsError(f"scene graph {name!r} needs a number, e.g. 'swin-3' or 'oneref-0'; expected {_EXPECTED}")
    raise SettingsError(f"unknown scene graph {name!r}; expected {_EXPECTED}")


def format_scene_graph(kind: str, param: int | None = None, *, cyclic: bool = True) -> str:
    """(kind, parameter, cyclic) -> name accepted by :func:`make_pairs` (inverse of the parser).

    >>> format_scene_graph("swin", 2, cyclic=False)
    'swin-2-noncyclic'
    """
    if kind in ("complete", "auto"):
        name = kind
    elif kind in ("swin", "logwin"):
        name = f"{kind}-{param}" + ("" if cyclic else "-noncyclic")
    elif kind == "oneref":
        name = f"oneref-{param}"
    else:
        raise SettingsError(f"unknown scene graph kind {kind!r}; expected one of {SCENE_GRAPH_KINDS}")
    parse_scene_graph(name)  # validates the parameter
    return name


def max_window_size(n_images: int) -> int:
    """Largest useful ``swin``/``logwin`` K for the reference app's slider: max(1, ceil((n-1)/2))."""
    return max(1, math.ceil((n_images - 1) / 2))


def _ordered_unique(candidates: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Undirected pairs in the reference's order: (min, max) tuples put in a set, set order out.

    The iteration order of a CPython set depends on what was inserted and in which order, so
    the caller passes every candidate the reference inserts (self-pairs included), in order;
    self-pairs are removed only afterwards.
    """
    seen: set[tuple[int, int]] = set()
    for a, b in candidates:
        seen.add((a, b) if a < b else (b, a))
    return [(a, b) for a, b in seen if a != b]


def _swin_candidates(n: int, window: int, cyclic: bool) -> list[tuple[int, int]]:
    out = []
    for i in range(n):
        for step in range(1, window + 1):
            j = (i + step) % n if cyclic else i + step
            if j < n:
                out.append((i, j))
    return out


def _logwin_candidates(n: int, window: int, cyclic: bool) -> list[tuple[int, int]]:
    offsets = [2**e for e in range(window)]
    out = []
    for i in range(n):
        for j in [i - o for o in offsets] + [i + o for o in offsets]:
            if cyclic:
                j %= n
            if 0 <= j < n and j != i:
                out.append((i, j))
    return out


def make_pairs(n_images: int, scene_graph: str = "complete", *, symmetrize: bool = True) -> list[tuple[int, int]]:
    """Image pairs (view-1 index, view-2 index) of a scene graph, in the reference's order.

    n_images: number of views (>= 2; duplicate a single image first, see the module docs).
    Returns a list of P (i, j) int tuples with i != j; with ``symmetrize`` the second half is the
    first half reversed pair by pair. ``auto`` gives the complete graph (see the module docs).
    Raises ValueError for n_images < 2, a bad name or
    parameter, or a ``oneref`` index outside 0..n_images-1.
    """
    if isinstance(n_images, bool) or not isinstance(n_images, int):
        raise TypeError(f"n_images must be an int, got {type(n_images).__name__}")
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    kind, param, cyclic = parse_scene_graph(scene_graph)
    if kind == "auto" and n_images > 1:
        return make_pairs(n_images, default_scene_graph(n_images), symmetrize=symmetrize)
    if n_images == 1:
        raise ValueError(
            "a single image is paired with a copy of itself: duplicate it first "
            "(core.inputs.preprocessing.load_views or core.inputs.pairs.duplicate_single_image) "
            "so that n_images is 2"
        )
    n = n_images
    k = param if param is not None else 0  # None only for "complete" (and "auto", resolved above)
    if kind == "complete":
        pairs = [(i, j) for i in range(n) for j in range(i)]
    elif kind == "swin":
        pairs = _ordered_unique(_swin_candidates(n, k, cyclic))
    elif kind == "logwin":
        pairs = _ordered_unique(_logwin_candidates(n, k, cyclic))
    else:
        if k >= n:
            raise SettingsError(f"scene graph {scene_graph!r}: reference image {k} is out of range 0..{n - 1}")
        pairs = [(k, j) for j in range(n) if j != k]
    if symmetrize:
        pairs = pairs + [(j, i) for i, j in pairs]
    logger.debug("scene graph %s on %d images: %d pairs", scene_graph, n, len(pairs))
    return pairs


def default_scene_graph(n_images: int, *, complete_max: int = AUTO_COMPLETE_MAX) -> str:
    """The scene graph ``auto`` stands for on ``n_images`` views (a pure function of the count).

    ``complete`` while n_images <= complete_max; above, ``logwin-K`` (cyclic) with
    K = max(3, ceil(log2(n_images)) - 2): neighbours at 1, 2, 4, ... 2^(K-1) on both sides, about
    2 K n_images pairs (21 images: 126 pairs, 100: 1000, 300: 4200) and a graph that stays connected
    with short paths between any two views.

    >>> default_scene_graph(12), default_scene_graph(100)
    ('complete', 'logwin-5')
    """
    if isinstance(n_images, bool) or not isinstance(n_images, int) or n_images < 1:
        raise ValueError(f"n_images must be an int >= 1, got {n_images!r}")
    if complete_max < 2:
        raise ValueError(f"complete_max must be >= 2, got {complete_max}")
    if n_images <= complete_max:
        return "complete"
    return f"logwin-{max(3, math.ceil(math.log2(n_images)) - 2)}"


def resolve_scene_graph(n_images: int, scene_graph: str) -> str:
    """``auto`` -> the concrete graph for this many images (:func:`default_scene_graph`); any other
    name unchanged (validated). A single image counts as its duplicated pair (2 views)."""
    kind, _, _ = parse_scene_graph(scene_graph)
    return default_scene_graph(max(n_images, 2)) if kind == "auto" else scene_graph


def describe_scene_graph(n_images: int, scene_graph: str) -> str:
    """What will run, for showing before the run: ``"auto -> logwin-5: 1000 pairs for 100 images"``."""
    resolved = resolve_scene_graph(n_images, scene_graph)
    name = resolved if resolved == scene_graph.strip().lower() else f"{scene_graph} -> {resolved}"
    return f"{name}: {count_pairs(n_images, resolved)} pairs for {n_images} image(s)"


def count_pairs(n_images: int, scene_graph: str = "complete", *, symmetrize: bool = True) -> int:
    """Number of pairs :func:`make_pairs` returns (network passes of a run, for memory estimates).

    A single image counts as the duplicated pair (2 pairs symmetrized, 1 otherwise), which is
    what a run on one image costs.
    """
    if n_images == 1:
        n_images = 2  # the image and its copy
    return len(make_pairs(n_images, scene_graph, symmetrize=symmetrize))


def duplicate_single_image(images: Sequence[InputImage]) -> list[InputImage]:
    """One image -> [image, copy with idx 1], as the reference app does; longer lists unchanged.

    Called once, by the load stage (``core.inputs.preprocessing.load_views``).

    The copy shares the tensor (inputs are never modified) and is named ``"<name> (copy)"``.
    """
    images = list(images)
    if len(images) != 1:
        return images
    first = images[0]
    if first.idx != 0:
        first = dataclasses.replace(first, idx=0)
    return [first, dataclasses.replace(first, idx=1, name=f"{first.name} (copy)")]
