"""The DUSt3R engine: preprocess -> pairs -> pair inference -> global alignment.

The network comes from an injected ``load_model(model_cfg)`` (the app passes :func:`model.get_model`,
which keeps one cached network per checkpoint and device), loaded lazily on the first run. With
``cfg.jobs.save_pairs`` the pair predictions are written to ``job_dir / "pairs.npz"`` (reference
fixture key layout) for re-alignment.

With ``cfg.inference.workers`` > 0 or a ``cfg.inference.ray_address``, pair inference runs on a
Ray pool (:class:`core.inference.distributed.RayPairPool`: the same loader, called in each worker)
that the engine keeps for later runs with the same settings (:meth:`Dust3rEngine.close` ends it);
the network is then not loaded in this process, and the alignment runs here on ``cfg.model.device``.
The scene graph ``auto`` is resolved by the image count before anything runs (logged with the pair
count, and kept in ``scene.extra["scene_graph"]``).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from config import AppConfig, ModelConfig
from core.alignment import align
from core.checkpoint import weights_availability
from core.inference import run_inference
from core.inputs.pairs import describe_scene_graph, make_pairs, resolve_scene_graph
from core.inputs.preprocessing import load_views
from core.runtime import resolve_device, select_autocast_dtype, tune_cpu_allocator
from core.types import ProgressFn, Scene

__all__ = ["Dust3rEngine", "ModelStatus", "PAIRS_FILE"]

PAIRS_FILE = "pairs.npz"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelStatus:
    """What the page shows about the DUSt3R network."""

    checkpoint: str
    device: str
    load_seconds: float


class Dust3rEngine:
    """DUSt3R: image files -> aligned dense Scene (see the module docstring)."""

    name = "dust3r"

    def __init__(self, load_model: Callable[[ModelConfig], object], model_cfg: ModelConfig | None = None) -> None:
        self._load_model = load_model
        self._model_cfg = model_cfg if model_cfg is not None else ModelConfig()
        self._lock = threading.Lock()
        self._status: dict[tuple[str, str, str | None], ModelStatus] = {}
        self._pools: dict[tuple, object] = {}  # Ray pools by (model config, workers, address, restarts)

    def availability(self, model_cfg: ModelConfig | None = None) -> str | None:
        """None when the weights load without the network, else what is missing and how to fix it."""
        return weights_availability(model_cfg if model_cfg is not None else self._model_cfg)

    def model_status(self, model_cfg: ModelConfig | None = None) -> ModelStatus | None:
        """How the network for ``model_cfg`` was loaded, or None when it is not loaded yet."""
        cfg = model_cfg if model_cfg is not None else self._model_cfg
        with self._lock:
            for (ckpt, _device, cache), status in self._status.items():
                if ckpt == cfg.checkpoint and cache == cfg.cache_dir:
                    return status
        return None

    def _model(self, cfg: ModelConfig):
        device = str(resolve_device(cfg.device))
        key = (cfg.checkpoint, device, cfg.cache_dir)
        with self._lock:
            t0 = time.perf_counter()
            model = self._load_model(cfg)
            self._status.setdefault(key, ModelStatus(cfg.checkpoint, device, time.perf_counter() - t0))
        return model

    def _ray_pool(self, cfg: AppConfig):
        """The Ray pool for these settings (made on first use, kept; one at a time)."""
        from core.inference.distributed import RayPairPool  # optional dependency, imported when asked for

        inf = cfg.inference
        key = (cfg.model, inf.workers, inf.ray_address, inf.ray_max_restarts, inf.precision)
        with self._lock:
            if key not in self._pools:
                self._close_pools()
                t0 = time.perf_counter()
                pool = RayPairPool(
                    self._load_model,
                    cfg.model,
                    workers=inf.workers,
                    address=inf.ray_address,
                    max_restarts=inf.ray_max_restarts,
                    precision=inf.precision,
                )
                self._pools[key] = pool
                status_key = (cfg.model.checkpoint, pool.describe(), cfg.model.cache_dir)
                self._status[status_key] = ModelStatus(cfg.model.checkpoint, pool.describe(), time.perf_counter() - t0)
            return self._pools[key]

    def _close_pools(self) -> None:
        for pool in self._pools.values():
            pool.close()  # type: ignore[attr-defined]
        self._pools.clear()

    def close(self) -> None:
        """End the Ray workers this engine started (nothing to do without Ray)."""
        with self._lock:
            self._close_pools()

    def reconstruct(self, image_paths: list[Path], cfg: AppConfig, job_dir: Path, progress: ProgressFn) -> Scene:
        """Image files -> aligned dense Scene with the views' names, original sizes and maps."""
        n = len(image_paths)
        progress("load", 0, n)
        views = load_views(image_paths, cfg.preprocess)  # a single image is paired with its copy here
        progress("load", n, n)
        graph = resolve_scene_graph(len(views), cfg.inference.scene_graph)
        pairs = make_pairs(len(views), graph)  # before the (slow) model load
        logger.info("scene graph %s", describe_scene_graph(len(views), cfg.inference.scene_graph))
        device = resolve_device(cfg.model.device)
        if cfg.inference.workers or cfg.inference.ray_address:
            progress("model", 0, 1)
            pool = self._ray_pool(cfg)
            progress("model", 1, 1)
            preds = pool.run(views, cfg.inference, pairs=pairs, progress=progress, storage_dir=Path(job_dir))
            where, autocast = pool.describe(), pool.autocast_name()
        else:
            preds, autocast = self._infer_here(views, pairs, cfg, device, job_dir, progress)
            where = f"this process ({device})"
        if cfg.jobs.save_pairs:
            progress("save", 0, 1)
            preds.save_npz(Path(job_dir) / PAIRS_FILE, batch_size=max(1, cfg.inference.batch_size))
            progress("save", 1, 1)
        progress("align", 0, cfg.alignment.niter)
        scene = align(preds, cfg.alignment, device=device, progress=progress)
        extra = dict(scene.extra)
        extra.update(
            device=str(device),
            autocast=autocast,
            n_pairs=int(preds.pairs.shape[0]),
            scene_graph=graph,
            inference=where,
            checkpoint=cfg.model.checkpoint,
        )
        return dataclasses.replace(scene, extra=extra, **preds.view_info())

    def _infer_here(self, views, pairs, cfg: AppConfig, device, job_dir: Path, progress: ProgressFn):
        """Pair inference in this process -> (predictions, autocast name)."""
        progress("model", 0, 1)
        model = self._model(cfg.model)
        progress("model", 1, 1)
        if device.type == "cpu" and cfg.inference.tune_cpu_allocator:
            tune_cpu_allocator()  # idempotent; main.py applies it at start-up, this covers library use
        autocast_dtype = select_autocast_dtype(device, cfg.inference.precision)
        preds = run_inference(
            model,
            views,
            cfg.inference,
            pairs=pairs,
            device=device,
            autocast_dtype=autocast_dtype,
            progress=progress,
            storage_dir=Path(job_dir),
        )
        return preds, str(autocast_dtype).replace("torch.", "") if autocast_dtype else "fp32"
