"""Pair inference spread over several GPUs, CPU workers or hosts with Ray (optional: ``requirements-ray.txt``).

:class:`RayPairPool` starts a pool of Ray actors that each load the network once (one actor per
GPU, or CPU workers), then :meth:`RayPairPool.run` gives the same :class:`core.types.PairPredictions`
as :func:`core.inference.run_inference`, computed on the pool:

1. **Encode.** The distinct images are cut into the same batches as in one process
   (:func:`core.inference.worker.encode_chunks`), and each batch is one Ray task on one actor
   (actor tasks: the actor already holds the network; a stateless task would load it again).
   Each image is encoded exactly once; its tokens come back as one object per image, owned by
   this process, so they outlive a worker that dies.
2. **Decode.** The pairs are cut into the same batches as in one process
   (:func:`core.inference.worker.decode_chunks`) and handed to the actors by Ray's
   :class:`ray.util.ActorPool` (an idle actor takes the next batch). An actor fetches the tokens
   of the views it has not seen yet from the object store and keeps them for the rest of the run.
   Results stream back batch by batch into a :class:`core.inference.storage.PairStore` (fp32, fp16
   or memory-mapped on disk), with progress, and cancel is polled between batches.
3. **Failures.** Actors are created with ``max_restarts`` and ``max_task_retries``: an actor that
   dies mid-run is restarted by Ray (the network loads again) and its unfinished batches are
   retried; the batches, and so the numbers, are the same. An error raised by the network (out of
   memory, a bad checkpoint) is not retried: it reaches the caller as itself.

The global alignment then runs on one device, in the caller's process.

How the actors get the network: ``load_model(model_cfg)`` is a picklable callable (the app passes
``model.get_model``; ``core`` never imports ``model.py``), pickled by reference and called in each
actor with ``model_cfg.device`` set to the actor's device (``cuda``: Ray gives each GPU actor its own
GPU; ``cpu``). A checkpoint that is a local path is made absolute; on a cluster of several hosts it
must exist on every host (or be a hub id, which each host downloads into its own cache).

Connecting (:func:`connect`): when Ray is already initialised in this process (by the caller, a test,
or an earlier pool), it is used as it is. Else with an address (``InferenceConfig.ray_address``:
``auto``, ``ray://head:10001``, ...) this process joins that cluster and ships the project's code to
it as the job's ``working_dir`` (the nodes need the dependencies, not the code); without one it
starts a local Ray with as many CPUs as the machine (at least one per worker) and the GPUs it has.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from config import InferenceConfig, ModelConfig
from core.errors import Cancelled, InsufficientMemoryError, ReconstructionError, SettingsError, UserError
from core.inference.memory import (
    ModelDims,
    available_memory,
    check_memory,
    check_pairs,
    estimate_memory,
    resolve_batch_size,
    view_cache_bytes,
)
from core.inference.run import assemble_predictions, choose_storage
from core.inference.storage import PairStore, output_bytes
from core.inference.worker import (
    PairModel,
    PairWorker,
    ViewFeatureCache,
    decode_chunks,
    distinct_sources,
    encode_chunks,
)
from core.inputs.pairs import make_pairs
from core.types import InputImage, PairPredictions, ProgressFn

try:  # optional dependency: requirements-ray.txt
    import ray
    from ray.exceptions import RayActorError, RayTaskError
    from ray.util import ActorPool

    HAS_RAY = True
except ImportError:  # pragma: no cover - depends on the environment
    ray = None  # type: ignore[assignment]
    HAS_RAY = False

__all__ = ["HAS_RAY", "INSTALL_HINT", "RayPairPool", "connect", "require_ray", "run_inference_ray"]

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install -r requirements-ray.txt"
_ROOT = Path(__file__).resolve().parents[2]
#: Not shipped to a cluster with the code: history, outputs, data and weights.
_EXCLUDES = [".git", "outputs", "bench/out", "tests/fixtures", "docs", "assets", "*.pth", "*.safetensors", "*.npz"]
_POLL_S = 0.2
_GB = 1024**3

LoadModel = Callable[[ModelConfig], PairModel]


def require_ray(what: str = "workers / ray_address") -> None:
    """Raise SettingsError saying how to install Ray when it is missing."""
    if not HAS_RAY:
        raise SettingsError(f"{what} needs Ray, which is not installed: {INSTALL_HINT} (or pip install 'ray>=2.9')")


def connect(address: str = "", *, num_cpus: int | None = None) -> None:
    """Initialise Ray in this process unless it already is (see the module docstring).

    address: an existing cluster (its nodes get this project's code as the job's working_dir);
    empty: start a local Ray with ``num_cpus`` CPUs (default: the machine's) and this project on
    the workers' PYTHONPATH.
    """
    require_ray()
    if ray.is_initialized():
        return
    common: dict[str, Any] = {"log_to_driver": False, "include_dashboard": False}
    if address:
        logger.info("joining the Ray cluster at %s (shipping the code from %s)", address, _ROOT)
        ray.init(address=address, runtime_env={"working_dir": str(_ROOT), "excludes": _EXCLUDES}, **common)
        return
    path = os.pathsep.join(p for p in (str(_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    logger.info("starting a local Ray with %s CPUs", num_cpus or "all")
    ray.init(num_cpus=num_cpus, runtime_env={"env_vars": {"PYTHONPATH": path}}, **common)


# --------------------------------------------------------------------------------------------
# The actor (runs in a Ray worker process)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _RunSpec:
    """What every call of one run needs to know (small, sent with each call)."""

    run_id: str
    precision: str
    descriptors: bool
    cache_bytes: int


class _PairActor:
    """One Ray worker: the network (loaded on first use, again after a restart), and the current
    run's tokens and per-view head features on its device."""

    def __init__(self, load_model: LoadModel, model_cfg: ModelConfig, device: str, threads: int) -> None:
        self._load, self._cfg, self._device_name, self._threads = load_model, model_cfg, device, threads
        self._model: PairModel | None = None
        self._run_id = ""
        self._tokens: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._enc: dict[int, torch.Tensor] = {}
        self._features: ViewFeatureCache | None = None
        self._worker: PairWorker | None = None
        self.encoded: list[int] = []
        self.decoded: list[int] = []

    def _ensure_model(self) -> PairModel:
        if self._model is None:
            from core.runtime import enable_tf32, resolve_device  # this process's entry point

            device = resolve_device(self._device_name)
            if device.type == "cpu":
                torch.set_num_threads(self._threads)
            else:
                enable_tf32()
            self._model = self._load(dataclasses.replace(self._cfg, device=str(device)))
            self._device = device
        return self._model

    def _for_run(self, spec: _RunSpec) -> tuple[PairWorker, ViewFeatureCache]:
        """The worker and view-feature cache of run ``spec`` (a new run starts with empty caches)."""
        model = self._ensure_model()
        if spec.run_id != self._run_id or self._worker is None or self._features is None:
            from core.runtime import select_autocast_dtype

            self._run_id, self._tokens, self._enc = spec.run_id, {}, {}
            self._features = ViewFeatureCache(model, self._enc, spec.cache_bytes)
            dtype = select_autocast_dtype(self._device, spec.precision)
            self._worker = PairWorker(model, self._device, dtype, spec.descriptors)
        return self._worker, self._features

    def info(self, precision: str) -> dict[str, Any]:
        """Load the network; -> pid, node, device, autocast dtype, ModelDims, free memory, desc_dim,
        metric (MASt3R: points in metres)."""
        from core.runtime import select_autocast_dtype

        model = self._ensure_model()
        return {
            "pid": os.getpid(),
            "node": ray.get_runtime_context().get_node_id(),
            "device": str(self._device),
            "autocast": select_autocast_dtype(self._device, precision),
            "dims": ModelDims.from_model(model),
            "free": available_memory(self._device),
            "desc_dim": int(getattr(model, "desc_dim", 0) or 0),
            "metric": bool(getattr(model, "metric", False)),
        }

    def counts(self) -> dict[str, Any]:
        """Views encoded and pairs decoded by this incarnation of the actor (ids), its pid and peak
        resident memory (MB, Linux)."""
        try:
            import resource

            peak_mb: float | None = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        except ImportError:  # not on this platform
            peak_mb = None
        return {"pid": os.getpid(), "encoded": list(self.encoded), "decoded": list(self.decoded), "peak_mb": peak_mb}

    def encode(self, spec: _RunSpec, views: list[int], images: list[torch.Tensor]) -> Any:
        """One encoder batch -> per view (tokens (N, E), positions (N, 2)) as CPU tensors (one
        Ray object per view: a tuple of them, or the pair itself for a batch of one)."""
        worker, _ = self._for_run(spec)
        with torch.inference_mode():
            out = worker.encode(images)
        host = []
        for k, (tok, pos) in zip(views, out, strict=True):
            self._tokens[k], self._enc[k] = (tok, pos), tok
            host.append((tok.cpu().clone(), pos.cpu().clone()))
        self.encoded.extend(views)
        return host[0] if len(host) == 1 else tuple(host)

    def decode(
        self,
        spec: _RunSpec,
        chunk: list[int],
        views1: list[int],
        views2: list[int],
        shapes: tuple[tuple[int, int], tuple[int, int]],
        token_refs: dict[int, Any],
    ) -> tuple[list[int], dict[str, list[torch.Tensor]]]:
        """One decoder batch (pairs ``chunk``) -> (chunk, per-pair CPU float32 outputs)."""
        worker, features = self._for_run(spec)
        missing = [k for k in token_refs if k not in self._tokens]
        if missing:
            for k, (tok, pos) in zip(missing, ray.get([token_refs[k] for k in missing]), strict=True):
                tok, pos = tok.to(self._device), pos.to(self._device)
                self._tokens[k], self._enc[k] = (tok, pos), tok
        with torch.inference_mode():
            out = worker.decode(views1, views2, shapes, self._tokens, features)
        self.decoded.extend(chunk)
        return chunk, out


# --------------------------------------------------------------------------------------------
# The pool (this process)
# --------------------------------------------------------------------------------------------


def _unwrap(e: BaseException, max_restarts: int) -> BaseException:
    """A Ray error -> what the caller should see: the network's own UserError, an out-of-memory
    error with advice, or a ReconstructionError for a worker that could not be kept alive."""
    cause = getattr(e, "cause", None) if HAS_RAY and isinstance(e, RayTaskError) else None
    if isinstance(cause, (UserError, ValueError, TypeError)):  # the caller's own mistake, as itself
        return cause
    if isinstance(cause, torch.OutOfMemoryError):
        return InsufficientMemoryError(f"a Ray worker ran out of GPU memory: {cause}")
    if HAS_RAY and isinstance(e, RayActorError):
        return ReconstructionError(f"a Ray worker died and was not restarted (max {max_restarts} restarts): {e}")
    return e


class RayPairPool:
    """Ray actors that each hold the network once; :meth:`run` computes pair predictions on them.

    load_model: picklable ``(ModelConfig) -> network`` (e.g. ``model.get_model``), called in each
    actor; model_cfg: which network (its ``device``: ``cpu`` = CPU workers, ``cuda``/``auto`` = one
    actor per GPU when the cluster has GPUs); workers: how many actors (0 = one per GPU of the
    cluster, or one per node without GPUs); address: an existing cluster (:func:`connect`);
    max_restarts: restarts per actor (and retries per call); start_timeout_s: how long the actors
    may wait for free resources on the cluster before the pool gives up (SettingsError).

    Creating the pool loads the network on every actor (errors such as a bad checkpoint are raised
    here). Thread-safe: runs on one pool are serialised. :meth:`close` (or ``with``) ends the actors.
    """

    def __init__(
        self,
        load_model: LoadModel,
        model_cfg: ModelConfig,
        *,
        workers: int = 0,
        address: str = "",
        max_restarts: int = 3,
        precision: str = "auto",
        start_timeout_s: float = 120.0,
    ) -> None:
        require_ray()
        if workers < 0 or max_restarts < 0:
            raise SettingsError(f"workers and max_restarts must be >= 0, got {workers} and {max_restarts}")
        connect(address, num_cpus=max(os.cpu_count() or 1, workers))
        self.max_restarts = max_restarts
        self._lock = threading.Lock()
        ckpt = Path(model_cfg.checkpoint).expanduser()
        if ckpt.exists():
            model_cfg = dataclasses.replace(model_cfg, checkpoint=str(ckpt.resolve()))
        n, device, options, threads = _placement(model_cfg.device, workers)
        actor_cls = ray.remote(_PairActor).options(
            max_restarts=max_restarts, max_task_retries=max_restarts, scheduling_strategy="SPREAD", **options
        )
        self.actors = [actor_cls.remote(load_model, model_cfg, device, threads) for _ in range(n)]
        self._wait_placed(options, start_timeout_s)
        try:
            self.infos = self.get([a.info.remote(precision) for a in self.actors])  # loads the network
        except BaseException:
            self.close()
            raise
        logger.info("Ray pool: %d worker(s) on %s (%d node(s))", n, device, len({info["node"] for info in self.infos}))

    def _wait_placed(self, options: dict[str, Any], timeout: float) -> None:
        """Wait until every actor has a place on the cluster; else end them and raise SettingsError."""
        refs = [a.__ray_ready__.remote() for a in self.actors]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        if len(ready) < len(refs):
            free = ray.available_resources()
            self.close()
            raise SettingsError(
                f"only {len(ready)} of {len(refs)} Ray workers found room on the cluster within {timeout:.0f} s "
                f"(each needs {options}; free now: CPU {free.get('CPU', 0):g}, GPU {free.get('GPU', 0):g}); "
                "use fewer workers or free the cluster"
            )
        self.get(ready)

    @property
    def n_workers(self) -> int:
        return len(self.actors)

    def describe(self) -> str:
        """``"ray: 2 worker(s) on cuda"``."""
        devices = sorted({info["device"] for info in self.infos})
        return f"ray: {self.n_workers} worker(s) on {', '.join(devices)}"

    def autocast_name(self) -> str:
        """The workers' autocast dtype for the pool's precision (``bfloat16``, ``float16`` or ``fp32``)."""
        names = {str(info["autocast"]).replace("torch.", "") if info["autocast"] else "fp32" for info in self.infos}
        return ",".join(sorted(names))

    def get(self, refs: Any) -> Any:
        """``ray.get`` with Ray's errors translated (:func:`_unwrap`)."""
        try:
            return ray.get(refs)
        except Exception as e:  # noqa: BLE001 - translated, never swallowed
            raise _unwrap(e, self.max_restarts) from e

    def counts(self) -> list[dict[str, Any]]:
        """Per actor: its pid and the view / pair ids it encoded / decoded since it (re)started."""
        return self.get([a.counts.remote() for a in self.actors])

    def close(self) -> None:
        """End the actors (the Ray instance stays for the process)."""
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []

    def __enter__(self) -> RayPairPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(
        self,
        images: Sequence[InputImage],
        cfg: InferenceConfig,
        *,
        pairs: Sequence[tuple[int, int]] | None = None,
        progress: ProgressFn | None = None,
        cancel: Callable[[], bool] | None = None,
        storage_dir: Path | None = None,
    ) -> PairPredictions:
        """Pair predictions for ``pairs`` (default ``make_pairs(len(images), cfg.scene_graph)``),
        as :func:`core.inference.run_inference` gives them (same batches, same numbers).

        progress: ``progress("encode", views_ready, n_views)`` then ``progress("pairs", done, P)``;
        cancel: polled while waiting (every 0.2 s) and between batches: True raises
        :class:`core.errors.Cancelled` (the workers finish the batch they are on and stay up).
        Raises InsufficientMemoryError when the job cannot fit on a worker or in this host's RAM.
        """
        if not self.actors:
            raise RuntimeError("this RayPairPool is closed")
        views = list(images)
        pairs = make_pairs(len(views), cfg.scene_graph) if pairs is None else check_pairs(pairs, len(views))
        with self._lock:
            return _Run(self, views, pairs, cfg, progress, cancel, storage_dir).execute()


def _placement(device: str, workers: int) -> tuple[int, str, dict[str, Any], int]:
    """(number of actors, their device, Ray resource options, CPU threads each) for this cluster."""
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    device = device.strip().lower()
    if device.startswith("cuda") and gpus == 0:
        raise SettingsError(f"device {device!r} asked for, but the Ray cluster has no GPU; use device auto or cpu")
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise SettingsError(f"Ray workers run on cpu or cuda, got device {device!r}")
    if device != "cpu" and gpus > 0:
        n = workers or gpus
        if n > gpus:
            raise SettingsError(f"{n} GPU workers asked for, but the Ray cluster has {gpus} GPU(s)")
        return n, "cuda", {"num_gpus": 1, "num_cpus": 1}, 1
    node_cpus = [int(node["Resources"].get("CPU", 0)) for node in ray.nodes() if node.get("Alive")]
    node_cpus = [c for c in node_cpus if c > 0] or [1]
    n = workers or len(node_cpus)
    if n > cpus:
        raise SettingsError(f"{n} CPU workers asked for, but the Ray cluster has {cpus} CPU(s)")
    threads = max(1, min(cpus // n, min(node_cpus)))  # an equal share that fits on every node
    return n, "cpu", {"num_cpus": threads}, threads


class _Run:
    """One run on a pool: plan, encode, decode, assemble (see the module docstring)."""

    def __init__(
        self,
        pool: RayPairPool,
        views: list[InputImage],
        pairs: list[tuple[int, int]],
        cfg: InferenceConfig,
        progress: ProgressFn | None,
        cancel: Callable[[], bool] | None,
        storage_dir: Path | None,
    ) -> None:
        self.pool, self.views, self.pairs, self.cfg = pool, views, pairs, cfg
        self.report = progress or (lambda stage, done, total: None)
        self.cancel = cancel or (lambda: False)
        self.hw = [im.true_shape for im in views]
        self.storage = choose_storage(cfg, self.hw, pairs, storage_dir)
        self.storage_dir = storage_dir
        self.batch_size = self._plan()
        self.spec = _RunSpec(uuid.uuid4().hex, cfg.precision, cfg.descriptors, view_cache_bytes(cfg))

    def _plan(self) -> int:
        """Check the host RAM for the outputs and each worker's device; -> the batch size."""
        if self.cfg.descriptors and not all(info["desc_dim"] for info in self.pool.infos):
            raise ValueError("descriptors asked for (InferenceConfig.descriptors) but the model has none (MASt3R only)")
        if self.storage != "disk":
            needed, free = output_bytes(self.hw, self.pairs, self.storage), available_memory("cpu")
            if free is not None and needed > self.cfg.memory_fraction * free:
                raise InsufficientMemoryError(
                    f"not enough RAM for the pair predictions: {needed / _GB:.1f} GB ({self.storage}) of "
                    f"{free / _GB:.1f} GB free; use pair_storage disk or fp16, or a sparser scene graph"
                )
        sizes = []
        for info in self.pool.infos:
            sizes.append(self._worker_batch(info))
        return min(sizes)

    def _worker_batch(self, info: dict[str, Any]) -> int:
        """The largest batch (halving from the configured one) whose estimate fits on this worker."""
        device = torch.device(info["device"])
        batch = resolve_batch_size(self.cfg.batch_size, device)
        while True:
            est = estimate_memory(
                self.hw,
                self.pairs,
                info["dims"],
                device=device,
                autocast_dtype=info["autocast"],
                batch_size=batch,
                view_cache_bytes=view_cache_bytes(self.cfg),
                storage="disk",  # the outputs leave the worker batch by batch
            )
            try:
                check_memory(
                    est, self.cfg.scene_graph, memory_fraction=self.cfg.memory_fraction, available=info["free"]
                )
                return batch
            except InsufficientMemoryError as e:
                if batch == 1:
                    raise InsufficientMemoryError(f"on Ray worker pid {info['pid']}: {e}") from e
                batch //= 2

    def execute(self) -> PairPredictions:
        t0 = time.perf_counter()
        source = distinct_sources([im.tensor for im in self.views])
        token_refs = self._encode(source)
        t1 = time.perf_counter()
        store = PairStore(self.hw, self.pairs, self.storage, folder=self.storage_dir)
        self._decode(source, token_refs, store)
        logger.info(
            "ray: %d distinct images encoded in %.2f s, %d pairs decoded in %.2f s on %d worker(s), stored as %s",
            len(set(source)),
            t1 - t0,
            len(self.pairs),
            time.perf_counter() - t1,
            self.pool.n_workers,
            self.storage,
        )
        metric = all(info["metric"] for info in self.pool.infos)
        return assemble_predictions(self.views, self.pairs, store, metric=metric)

    def _check_cancel(self, what: str) -> None:
        if self.cancel():
            raise Cancelled(f"pair inference cancelled ({what})")

    def _encode(self, source: list[int]) -> dict[int, Any]:
        """Submit the encoder batches round-robin over the actors; wait with progress.
        Returns view -> object ref of its (tokens, positions) (a copy refers to its source's)."""
        n = len(self.views)
        self.report("encode", 0, n)
        actors, refs, pending = self.pool.actors, {}, {}
        for c, chunk in enumerate(encode_chunks(self.hw, source, self.batch_size)):
            method = actors[c % len(actors)].encode.options(num_returns=len(chunk))
            out = method.remote(self.spec, chunk, [self.views[k].tensor for k in chunk])
            out = [out] if len(chunk) == 1 else list(out)
            refs.update(zip(chunk, out, strict=True))
            pending[out[0]] = sum(1 for s in source if s in chunk)  # views this batch makes ready
        ready = 0
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=_POLL_S)
            for ref in done:
                self.pool.get(ref)  # surfaces a worker's error here
                ready += pending.pop(ref)
                self.report("encode", ready, n)
            self._check_cancel(f"{ready}/{n} images encoded")
        return {k: refs[source[k]] for k in range(n)}

    def _decode(self, source: list[int], token_refs: dict[int, Any], store: PairStore) -> None:
        """Hand the decoder batches to the actors (Ray's ActorPool) and store results as they come."""
        n_pairs = len(self.pairs)
        self.report("pairs", 0, n_pairs)
        pool = ActorPool(self.pool.actors)
        for chunk in decode_chunks(self.hw, self.pairs, self.batch_size):
            views1 = [source[self.pairs[p][0]] for p in chunk]
            views2 = [source[self.pairs[p][1]] for p in chunk]
            i0, j0 = self.pairs[chunk[0]]
            shapes = (self.hw[i0], self.hw[j0])
            needed = {k: token_refs[k] for k in dict.fromkeys(views1 + views2)}
            args = (self.spec, chunk, views1, views2, shapes, needed)
            pool.submit(lambda actor, a: actor.decode.remote(*a), args)
        done = 0
        while pool.has_next():
            try:
                chunk, out = pool.get_next_unordered(timeout=_POLL_S)
            except TimeoutError:
                self._check_cancel(f"{done}/{n_pairs} pairs decoded")
                continue
            except Exception as e:  # noqa: BLE001 - translated, never swallowed
                raise _unwrap(e, self.pool.max_restarts) from e
            for key, values in out.items():
                for p, value in zip(chunk, values, strict=True):
                    store.put(key, p, value)
            done += len(chunk)
            self.report("pairs", done, n_pairs)
            self._check_cancel(f"{done}/{n_pairs} pairs decoded")


def run_inference_ray(
    load_model: LoadModel,
    model_cfg: ModelConfig,
    images: Sequence[InputImage],
    cfg: InferenceConfig,
    *,
    pairs: Sequence[tuple[int, int]] | None = None,
    progress: ProgressFn | None = None,
    cancel: Callable[[], bool] | None = None,
    storage_dir: Path | None = None,
) -> PairPredictions:
    """One run on a pool made for it (``cfg.workers``, ``cfg.ray_address``) and closed after;
    keep a :class:`RayPairPool` to run several jobs without reloading the network."""
    with RayPairPool(
        load_model,
        model_cfg,
        workers=cfg.workers,
        address=cfg.ray_address,
        max_restarts=cfg.ray_max_restarts,
        precision=cfg.precision,
    ) as pool:
        return pool.run(images, cfg, pairs=pairs, progress=progress, cancel=cancel, storage_dir=storage_dir)
