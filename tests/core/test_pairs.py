"""core.inputs.pairs: scene graphs with the reference's pair sets and order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from config import PreprocessConfig
from core.inputs.pairs import (
    count_pairs,
    duplicate_single_image,
    format_scene_graph,
    make_pairs,
    max_window_size,
    parse_scene_graph,
)
from core.inputs.preprocessing import load_views
from core.types import InputImage

# --- independent definitions of the pair sets (the reference's math, written from scratch) ---


def _swin_set(n: int, k: int, cyclic: bool) -> set[tuple[int, int]]:
    out = set()
    for i in range(n):
        for step in range(1, k + 1):
            j = i + step
            if cyclic:
                j %= n
            if j < n and j != i:
                out |= {(i, j), (j, i)}
    return out


def _logwin_set(n: int, k: int, cyclic: bool) -> set[tuple[int, int]]:
    out = set()
    for i in range(n):
        for off in (2**e for e in range(k)):
            for j in (i - off, i + off):
                if cyclic:
                    j %= n
                if 0 <= j < n and j != i:
                    out |= {(i, j), (j, i)}
    return out


def _oneref_set(n: int, ref: int) -> set[tuple[int, int]]:
    return {(ref, j) for j in range(n) if j != ref} | {(j, ref) for j in range(n) if j != ref}


def _check_symmetrized_layout(pairs: list[tuple[int, int]]) -> None:
    half = len(pairs) // 2
    assert len(pairs) == 2 * half
    assert pairs[half:] == [(j, i) for i, j in pairs[:half]]
    undirected = [frozenset(p) for p in pairs[:half]]
    assert len(set(undirected)) == half  # each edge once per direction
    assert all(i != j for i, j in pairs)


# --- order --------------------------------------------------------------------------------------


def test_complete_order_matches_the_inference_fixture(fixtures_dir):
    ref = np.load(fixtures_dir / "tiny_linear_inference.npz")["pairs"].tolist()
    assert make_pairs(3) == [tuple(p) for p in ref]
    assert make_pairs(3) == [(1, 0), (2, 0), (2, 1), (0, 1), (0, 2), (1, 2)]


def test_complete_order_and_non_symmetrized():
    assert make_pairs(4, symmetrize=False) == [(1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2)]
    assert make_pairs(2) == [(1, 0), (0, 1)]


# Orders printed by the reference make_pairs (naver/dust3r 4c24a6e, CPython 3) for these inputs.
REFERENCE_ORDERS = {
    (5, "swin-2", True): [
        (0, 1),
        (2, 4),
        (1, 2),
        (0, 4),
        (3, 4),
        (0, 3),
        (1, 4),
        (2, 3),
        (0, 2),
        (1, 3),
        (1, 0),
        (4, 2),
        (2, 1),
        (4, 0),
        (4, 3),
        (3, 0),
        (4, 1),
        (3, 2),
        (2, 0),
        (3, 1),
    ],  # fmt: skip
    (5, "swin-1-noncyclic", True): [(0, 1), (1, 2), (2, 3), (3, 4), (1, 0), (2, 1), (3, 2), (4, 3)],
    (8, "swin-2", False): [
        (0, 1),
        (0, 7),
        (2, 4),
        (1, 2),
        (3, 4),
        (4, 6),
        (5, 7),
        (0, 6),
        (2, 3),
        (6, 7),
        (0, 2),
        (4, 5),
        (1, 7),
        (5, 6),
        (1, 3),
        (3, 5),
    ],  # fmt: skip
    (6, "logwin-1", True): [
        (0, 1),
        (1, 2),
        (3, 4),
        (2, 3),
        (4, 5),
        (0, 5),
        (1, 0),
        (2, 1),
        (4, 3),
        (3, 2),
        (5, 4),
        (5, 0),
    ],  # fmt: skip
    (6, "logwin-2-noncyclic", True): [
        (0, 1),
        (2, 4),
        (1, 2),
        (3, 4),
        (2, 3),
        (0, 2),
        (4, 5),
        (1, 3),
        (3, 5),
        (1, 0),
        (4, 2),
        (2, 1),
        (4, 3),
        (3, 2),
        (2, 0),
        (5, 4),
        (3, 1),
        (5, 3),
    ],  # fmt: skip
    (9, "logwin-3", False): [
        (3, 4),
        (3, 7),
        (4, 6),
        (5, 7),
        (0, 2),
        (0, 5),
        (1, 6),
        (0, 8),
        (1, 3),
        (6, 8),
        (4, 5),
        (5, 6),
        (4, 8),
        (0, 1),
        (0, 7),
        (2, 4),
        (1, 2),
        (0, 4),
        (2, 7),
        (1, 5),
        (1, 8),
        (6, 7),
        (3, 5),
        (3, 8),
        (2, 3),
        (2, 6),
        (7, 8),
    ],  # fmt: skip
    (4, "oneref-1", True): [(1, 0), (1, 2), (1, 3), (0, 1), (2, 1), (3, 1)],
    # the reference also emits (0,0), (1,1), (2,2) here (window >= n); we drop self-pairs only
    (3, "swin-3", True): [(0, 1), (1, 2), (0, 2), (1, 0), (2, 1), (2, 0)],
}


@pytest.mark.parametrize(("n", "graph", "symmetrize"), list(REFERENCE_ORDERS))
def test_exact_reference_order(n, graph, symmetrize):
    assert make_pairs(n, graph, symmetrize=symmetrize) == REFERENCE_ORDERS[(n, graph, symmetrize)]


# --- sets ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", range(2, 13))
def test_swin_logwin_oneref_sets(n):
    for k in range(1, 6):
        for cyclic in (True, False):
            suffix = "" if cyclic else "-noncyclic"
            for kind, expected in (("swin", _swin_set(n, k, cyclic)), ("logwin", _logwin_set(n, k, cyclic))):
                pairs = make_pairs(n, f"{kind}-{k}{suffix}")
                assert set(pairs) == expected, (n, kind, k, cyclic)
                _check_symmetrized_layout(pairs)
                assert count_pairs(n, f"{kind}-{k}{suffix}") == len(pairs)
    for ref in range(n):
        pairs = make_pairs(n, f"oneref-{ref}")
        assert set(pairs) == _oneref_set(n, ref)
        _check_symmetrized_layout(pairs)
    complete = make_pairs(n)
    assert set(complete) == {(i, j) for i in range(n) for j in range(n) if i != j}
    _check_symmetrized_layout(complete)


def test_windows_that_cover_everything_give_the_complete_set():
    assert set(make_pairs(6, "swin-3")) == set(make_pairs(6))
    assert set(make_pairs(6, "swin-2")) != set(make_pairs(6))
    assert set(make_pairs(5, "logwin-2")) == set(make_pairs(5))


def test_non_symmetrized_is_the_first_half():
    for graph in ("complete", "swin-2", "logwin-2-noncyclic", "oneref-2"):
        full = make_pairs(7, graph)
        assert make_pairs(7, graph, symmetrize=False) == full[: len(full) // 2]


def test_count_pairs():
    assert count_pairs(8) == 56
    assert count_pairs(8, "swin-1") == 16
    assert count_pairs(8, "swin-1-noncyclic") == 14
    assert count_pairs(8, "oneref-0", symmetrize=False) == 7
    assert count_pairs(1) == 2  # the image and its copy


# --- single image -------------------------------------------------------------------------------


def _image(idx: int, name: str) -> InputImage:
    return InputImage(
        tensor=torch.zeros(1, 3, 16, 16),
        idx=idx,
        name=name,
        original_size=(16, 16),
        resized_size=(16, 16),
        crop_box=(0, 0, 16, 16),
    )


def test_single_image_is_duplicated_then_paired():
    one = [_image(0, "a.jpg")]
    two = duplicate_single_image(one)
    assert [im.idx for im in two] == [0, 1]
    assert two[1].name == "a.jpg (copy)" and two[1].tensor is one[0].tensor
    assert make_pairs(len(two)) == [(1, 0), (0, 1)]
    assert one[0].idx == 0 and len(one) == 1  # input untouched
    many = [_image(0, "a"), _image(1, "b")]
    assert duplicate_single_image(many) == many
    with pytest.raises(ValueError, match="duplicate it first"):
        make_pairs(1)


def test_single_image_gives_two_views_at_load(fixtures_dir):
    cfg = PreprocessConfig(image_size=64)
    one = load_views([fixtures_dir / "images" / "img0.png"], cfg)
    assert [(im.idx, im.name) for im in one] == [(0, "img0.png"), (1, "img0.png (copy)")]
    assert one[1].tensor is one[0].tensor and one[1].original_size == one[0].original_size == (96, 72)
    assert make_pairs(len(one)) == [(1, 0), (0, 1)]
    three = load_views([fixtures_dir / "images"], cfg)
    assert [im.name for im in three] == ["img0.png", "img1.png", "img2.png"]


# --- parsing and errors ---------------------------------------------------------------------------


def test_parse_and_format():
    assert parse_scene_graph("complete") == ("complete", None, False)
    assert parse_scene_graph("swin-3") == ("swin", 3, True)
    assert parse_scene_graph(" SWIN-3-noncyclic ") == ("swin", 3, False)
    assert parse_scene_graph("logwin-2") == ("logwin", 2, True)
    assert parse_scene_graph("oneref-0") == ("oneref", 0, False)
    for name in ("complete", "swin-2", "swin-2-noncyclic", "logwin-4", "logwin-1-noncyclic", "oneref-5"):
        kind, param, cyclic = parse_scene_graph(name)
        assert format_scene_graph(kind, param, cyclic=cyclic) == name
    assert max_window_size(2) == 1 and max_window_size(8) == 4 and max_window_size(9) == 4


@pytest.mark.parametrize(
    ("graph", "message"),
    [
        ("star", "unknown scene graph 'star'"),
        ("swin", "'swin' needs a number"),
        ("logwin-noncyclic", "'logwin-noncyclic' needs a number"),
        ("oneref", "'oneref' needs a number"),
        ("swin-x", "unknown scene graph 'swin-x'"),
        ("swin-0", "K must be >= 1, got 0"),
        ("logwin-0-noncyclic", "K must be >= 1, got 0"),
        ("swin--2", "K must be >= 1, got -2"),
        ("oneref--1", "must be >= 0, got -1"),
        ("oneref-3", "reference image 3 is out of range 0..2"),
        ("swin-2-cyclic", "unknown scene graph"),
        ("", "unknown scene graph ''"),
    ],
)
def test_invalid_graphs(graph, message):
    with pytest.raises(ValueError, match=message):
        make_pairs(3, graph)


def test_invalid_image_counts():
    with pytest.raises(ValueError, match="n_images must be >= 1, got 0"):
        make_pairs(0)
    with pytest.raises(ValueError, match="got -2"):
        count_pairs(-2, "swin-1")
    with pytest.raises(TypeError, match="n_images must be an int, got float"):
        make_pairs(3.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="scene graph must be a str"):
        make_pairs(3, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown scene graph kind 'ring'"):
        format_scene_graph("ring", 2)
