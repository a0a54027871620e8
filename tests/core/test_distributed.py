"""Pair inference on a Ray cluster: same numbers as one process, each image encoded once and each
pair decoded once, a worker killed mid-run, progress and cancel, the engine's Ray path.

The cluster is started by this module on the CPU: a head node (2 CPUs) and a simulated second
node (1 CPU) (``ray.cluster_utils.Cluster``); the pool's two workers are two processes on the two
nodes (Ray's SPREAD placement), and the engine's own one-worker pool takes the third CPU.
Skipped only when Ray is not installed (``requirements-ray.txt``).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")

import model as M  # noqa: E402
from config import InferenceConfig, ModelConfig  # noqa: E402
from core.errors import Cancelled, CheckpointError  # noqa: E402
from core.inference import run_inference  # noqa: E402
from core.inference.distributed import RayPairPool, connect  # noqa: E402
from core.inputs.pairs import make_pairs  # noqa: E402
from core.types import InputImage  # noqa: E402
from tests.core.counting_model import load_counting, read_counts  # noqa: E402

MODEL = "tiny_dpt"
FIELDS = ("pts3d_1", "conf_1", "pts3d_2", "conf_2")


@pytest.fixture(scope="module")
def cluster():
    """A two-node local Ray cluster (2 + 1 CPUs), shut down at the end of the module."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    c.add_node(num_cpus=1)
    connect(c.address)  # ships the code as the job's working_dir, as for a real cluster
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ray-counts")


@pytest.fixture(scope="module")
def pool(cluster, fixtures_dir, log_dir):
    cfg = ModelConfig(checkpoint=str(fixtures_dir / MODEL), device="cpu")
    with RayPairPool(functools.partial(load_counting, str(log_dir)), cfg, workers=2, precision="fp32") as p:
        yield p


def _image(tensor: torch.Tensor, idx: int) -> InputImage:
    h, w = tensor.shape[-2:]
    return InputImage(tensor=tensor, idx=idx, name=f"img{idx}.png", original_size=(w, h), resized_size=(w, h),
                      crop_box=(0, 0, w, h))  # fmt: skip


@pytest.fixture(scope="module")
def views(fixtures_dir) -> list[InputImage]:
    """The fixture's three inputs (landscape, portrait, landscape) and a second landscape image."""
    ref = np.load(fixtures_dir / f"{MODEL}_inference.npz")
    imgs = [_image(torch.from_numpy(ref[f"img_{k}"]), k) for k in range(3)]
    g = torch.Generator().manual_seed(3)
    return [*imgs, _image(torch.rand(1, 3, 48, 64, generator=g) * 2 - 1, 3)]


@pytest.fixture(scope="module")
def single(fixtures_dir, views):
    """The single-process predictions (float32, one thread, as the workers run)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        net = M.load_model(fixtures_dir / MODEL)
        cfg = InferenceConfig(precision="fp32")
        return run_inference(net, views, cfg, pairs=make_pairs(len(views)), device=torch.device("cpu"),
                             autocast_dtype=None)  # fmt: skip
    finally:
        torch.set_num_threads(before)


def _assert_same(got, ref) -> None:
    assert got.pairs.tolist() == ref.pairs.tolist()
    for name in FIELDS:
        for p, (a, b) in enumerate(zip(getattr(got, name), getattr(ref, name), strict=True)):
            assert a.dtype == b.dtype and torch.equal(a, b), f"{name} pair {p}"  # bitwise on the CPU
    assert got.names == ref.names and got.true_shapes == ref.true_shapes


def _new_ids(before: list[dict], after: list[dict], key: str) -> list[int]:
    """Ids an actor logged between two ``pool.counts()`` (all of them when it restarted in between)."""
    out = []
    for b, a in zip(before, after, strict=True):
        out += a[key][len(b[key]) :] if a["pid"] == b["pid"] else a[key]
    return out


def test_sharded_predictions_equal_single_process_and_run_each_step_once(pool, views, single, log_dir) -> None:
    assert pool.n_workers == 2
    assert len({info["node"] for info in pool.infos}) == 2  # one worker per node
    before, ids_before = read_counts(log_dir), pool.counts()
    progress: list[tuple[str, int, int]] = []
    preds = pool.run(views, InferenceConfig(precision="fp32"), progress=lambda *a: progress.append(a))
    _assert_same(preds, single)
    after, ids_after = read_counts(log_dir), pool.counts()
    n_pairs = len(make_pairs(len(views)))
    assert after["encode"] - before["encode"] == len(views)  # every image through the encoder once
    assert after["decode"] - before["decode"] == n_pairs  # every pair through the decoder once
    assert sorted(_new_ids(ids_before, ids_after, "encoded")) == list(range(len(views)))
    assert sorted(_new_ids(ids_before, ids_after, "decoded")) == list(range(n_pairs))
    assert all(
        len(a["decoded"]) > len(b["decoded"]) for a, b in zip(ids_after, ids_before, strict=True)
    )  # both took part
    # progress: encode then pairs, each from 0 up to its total
    encode = [(d, t) for s, d, t in progress if s == "encode"]
    pairs = [(d, t) for s, d, t in progress if s == "pairs"]
    assert encode[0] == (0, len(views)) and encode[-1] == (len(views), len(views))
    assert pairs[0] == (0, n_pairs) and pairs[-1] == (n_pairs, n_pairs)
    assert [d for d, _ in pairs] == sorted(d for d, _ in pairs)


def test_a_copy_is_encoded_once(pool, views, log_dir) -> None:
    """A single image arrives with its copy (same tensor): one encoder pass for both."""
    pair = [views[0], dataclasses.replace(views[0], idx=1, name="img0.png (copy)")]
    before = read_counts(log_dir)
    preds = pool.run(pair, InferenceConfig(precision="fp32"))
    assert read_counts(log_dir)["encode"] - before["encode"] == 1
    torch.testing.assert_close(preds.pts3d_1[0], preds.pts3d_1[1], rtol=0, atol=1e-6)


def test_killing_a_worker_mid_run_gives_the_same_result(pool, views, single) -> None:
    pids_before = {c["pid"] for c in pool.counts()}
    killed: list[int] = []

    def kill_once(stage: str, done: int, total: int) -> None:
        if stage == "pairs" and done >= 1 and not killed:
            ray.kill(pool.actors[0], no_restart=False)  # Ray restarts it; its batches are retried
            killed.append(done)

    preds = pool.run(views, InferenceConfig(precision="fp32"), progress=kill_once)
    assert killed and killed[0] < preds.pairs.shape[0]
    _assert_same(preds, single)
    pids_after = {c["pid"] for c in pool.counts()}
    assert pids_after != pids_before  # the killed worker is a new process


def test_cancel_stops_the_run_and_the_pool_stays_usable(pool, views, single) -> None:
    seen: list[int] = []

    def progress(stage: str, done: int, total: int) -> None:
        if stage == "pairs":
            seen.append(done)

    with pytest.raises(Cancelled, match="cancelled"):
        pool.run(views, InferenceConfig(precision="fp32"), progress=progress, cancel=lambda: bool(seen and seen[-1]))
    assert seen[-1] < len(make_pairs(len(views)))
    _assert_same(pool.run(views, InferenceConfig(precision="fp32")), single)


def test_storage_layouts_through_ray(pool, views, single, tmp_path) -> None:
    disk = pool.run(views, InferenceConfig(precision="fp32", pair_storage="disk"), storage_dir=tmp_path)
    _assert_same(disk, single)
    assert not list(tmp_path.iterdir())  # the mapped files are unlinked at once
    half = pool.run(views, InferenceConfig(precision="fp32", pair_storage="fp16"))
    assert half.pts3d_1[0].dtype == torch.float16 and half.nbytes() * 2 == single.nbytes()
    torch.testing.assert_close(half.conf_1[0].float(), single.conf_1[0], rtol=1e-3, atol=0)


def test_dust3r_engine_uses_the_ray_workers_with_mast3r_weights_in_metres(cluster, fixtures_dir, tmp_path) -> None:
    """The engine's Ray path with MASt3R weights: the workers' model is metric, so is the scene."""
    from core.engines.dust3r import Dust3rEngine
    from tests.conftest import tiny_config

    mast3r = fixtures_dir / "tiny_mast3r" / "tiny_mast3r"
    cfg = tiny_config(tmp_path / "jobs", niter=5, checkpoint=str(mast3r))
    cfg = dataclasses.replace(cfg, inference=dataclasses.replace(cfg.inference, workers=1))
    engine = Dust3rEngine(M.get_model, cfg.model)
    stages: list[str] = []
    images = sorted((fixtures_dir / "images").glob("img*.png"))
    try:
        scene = engine.reconstruct(images, cfg, tmp_path, lambda s, d, t: stages.append(s))
    finally:
        engine.close()
    assert scene.n_views == 3 and scene.extra["inference"] == "ray: 1 worker(s) on cpu"
    assert scene.extra["n_pairs"] == 6 and "pairs" in stages and "align" in stages
    assert scene.units == "m"  # MASt3R's points are metric, through Ray as in one process


def test_a_bad_checkpoint_is_reported_as_itself(cluster, tmp_path) -> None:
    cfg = ModelConfig(checkpoint=str(tmp_path / "missing.safetensors"), device="cpu")
    with pytest.raises(CheckpointError, match="missing.safetensors"):
        RayPairPool(M.get_model, cfg, workers=1)
