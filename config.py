"""All settings of the app, in one place.

One frozen dataclass per concern, nested in :class:`AppConfig`. Override values with
``dataclasses.replace(cfg.alignment, niter=500)``; every field is range-checked in
``__post_init__`` so a bad value fails where it is set, with the value in the message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = [
    "OFFICIAL_CHECKPOINTS",
    "DEFAULT_CHECKPOINT",
    "ModelConfig",
    "InferenceConfig",
    "AlignmentConfig",
    "PreprocessConfig",
    "PostprocessConfig",
    "VizConfig",
    "ColmapConfig",
    "JobConfig",
    "UIConfig",
    "AppConfig",
]

#: Short names of Naver's official checkpoints -> Hugging Face hub repo ids.
OFFICIAL_CHECKPOINTS: dict[str, str] = {
    "DUSt3R_ViTLarge_BaseDecoder_512_dpt": "naver/DUSt3R_ViTLarge_BaseDecoder_512_dpt",
    "DUSt3R_ViTLarge_BaseDecoder_512_linear": "naver/DUSt3R_ViTLarge_BaseDecoder_512_linear",
    "DUSt3R_ViTLarge_BaseDecoder_224_linear": "naver/DUSt3R_ViTLarge_BaseDecoder_224_linear",
}
DEFAULT_CHECKPOINT = OFFICIAL_CHECKPOINTS["DUSt3R_ViTLarge_BaseDecoder_512_dpt"]


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


@dataclass(frozen=True)
class ModelConfig:
    """Which network to load and where."""

    checkpoint: str = DEFAULT_CHECKPOINT
    """Hub repo id, official short name, local folder, ``.safetensors`` or ``.pth`` file."""
    device: str = "auto"
    """``auto`` (CUDA if present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    cache_dir: str | None = None
    """Hugging Face cache folder; None = huggingface_hub's default (HF_HOME)."""


@dataclass(frozen=True)
class PreprocessConfig:
    """How uploads become network inputs (reference rules, FORMAT.md section 3)."""

    image_size: int = 512
    """Long side in pixels (multiple of 16), or 224 for the square-crop mode."""
    square_ok: bool = False
    """Keep square images square (otherwise cropped to 4:3, as the reference does)."""
    enhance: bool = False
    """Contrast/sharpness enhancement before the network (trained without it: off by default)."""
    contrast: float = 1.2
    """Contrast factor used when ``enhance`` is on."""
    sharpness: float = 1.5
    """Sharpness factor used when ``enhance`` is on."""
    max_pixels: int = 100_000_000
    """Decompression-bomb guard: images with more pixels are rejected."""
    min_side: int = 16
    """Smallest accepted width/height of an upload (pixels, after EXIF): one 16-pixel patch."""

    def __post_init__(self) -> None:
        _check(
            self.image_size >= 16 and self.image_size % 16 == 0,
            f"image_size must be a positive multiple of 16, got {self.image_size}",
        )
        _check(
            self.contrast > 0 and self.sharpness > 0,
            f"contrast and sharpness must be > 0, got {self.contrast}, {self.sharpness}",
        )
        _check(self.max_pixels > 0, f"max_pixels must be > 0, got {self.max_pixels}")
        _check(self.min_side >= 1, f"min_side must be >= 1, got {self.min_side}")


@dataclass(frozen=True)
class InferenceConfig:
    """Pair inference."""

    scene_graph: str = "complete"
    """``complete``, ``swin-K[-noncyclic]``, ``logwin-K[-noncyclic]`` or ``oneref-I``."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """``auto``: bf16/fp16 autocast on CUDA, bf16 on CPUs with native bf16, else fp32."""
    batch_size: int = 0
    """Pairs decoded together (same shapes only); 0 = auto: 8 on CUDA, 1 on CPU (measured faster there)."""
    memory_fraction: float = 0.9
    """Fraction of free device memory the run may plan to use before it refuses to start."""
    view_cache_gb: float = 1.0
    """Memory for the per-view part of the DPT heads (computed once per view, reused by every
    pair the view is in; least recently used out first); 0 = recompute it for every pair."""
    tune_cpu_allocator: bool = True
    """On CPU (glibc), keep freed memory for reuse instead of returning it to the OS, so large
    tensors do not pay page faults on every allocation (``core.allocator``); the process then
    keeps its peak memory after a run."""

    def __post_init__(self) -> None:
        _check(self.batch_size >= 0, f"batch_size must be >= 0 (0 = auto), got {self.batch_size}")
        _check(self.view_cache_gb >= 0, f"view_cache_gb must be >= 0, got {self.view_cache_gb}")
        _check(0 < self.memory_fraction <= 1, f"memory_fraction must be in (0, 1], got {self.memory_fraction}")


@dataclass(frozen=True)
class AlignmentConfig:
    """Global alignment (FORMAT.md section 6)."""

    niter: int = 300
    """Adam iterations (3+ images)."""
    schedule: Literal["linear", "cosine"] = "linear"
    """Learning-rate schedule (the demo's default is linear)."""
    lr: float = 0.01
    """Initial learning rate."""
    lr_min: float = 1e-6
    """Final learning rate."""
    min_conf_thr: float = 3.0
    """Raw-confidence threshold used by the init (PnP mask) and the masks."""
    init: Literal["mst"] = "mst"
    """Initialisation method."""
    mst_stale_focal: bool = True
    """Keep the reference 'mst' quirk (a focal estimated from the previous tree edge's points); False = own pair."""
    shared_focal: bool = False
    """Optimise one focal length shared by all images."""
    known_focal: tuple[float, ...] | None = None
    """Fixed focal length(s) in pixels of the processed image: one value, or one per image."""
    early_stop: bool = False
    """Stop early on a loss plateau (off by default: reference parity; see README for the figures)."""
    early_stop_patience: int = 30
    """Window (iterations): the mean loss of the last window is compared with the window before."""
    early_stop_tol: float = 1e-3
    """Plateau when the mean loss improves by less than this relative amount per iteration."""
    early_stop_anneal: int = 60
    """After a plateau, iterations over which lr decays to lr_min before stopping (early stop only)."""

    def __post_init__(self) -> None:
        _check(self.niter >= 0, f"niter must be >= 0, got {self.niter}")
        _check(self.lr > 0 and self.lr_min >= 0, f"lr must be > 0 and lr_min >= 0, got {self.lr}, {self.lr_min}")
        _check(self.min_conf_thr >= 0, f"min_conf_thr must be >= 0, got {self.min_conf_thr}")
        _check(
            self.known_focal is None or all(f > 0 for f in self.known_focal),
            f"known focal lengths must be > 0, got {self.known_focal}",
        )
        _check(self.early_stop_patience >= 1, f"early_stop_patience must be >= 1, got {self.early_stop_patience}")
        _check(self.early_stop_anneal >= 1, f"early_stop_anneal must be >= 1, got {self.early_stop_anneal}")
        _check(isinstance(self.mst_stale_focal, bool), f"mst_stale_focal must be a bool, got {self.mst_stale_focal!r}")


@dataclass(frozen=True)
class PostprocessConfig:
    """Which points of the aligned scene are shown and exported."""

    min_conf_thr: float = 3.0
    """A point is kept when its raw confidence (1 + exp(x), always > 1) is strictly above this."""
    clean_depth: bool = True
    """Drop points lying in front of another view's surface with lower confidence."""
    outlier_removal: bool = True
    """Statistical outlier removal (mean distance to k nearest neighbours)."""
    outlier_neighbors: int = 16
    """k for statistical outlier removal."""
    outlier_std: float = 2.0
    """Points whose mean neighbour distance exceeds mean + std_ratio * std are dropped."""
    largest_component: bool = False
    """Keep only the largest connected object."""
    mask_sky: bool = False
    """Drop bright, low-texture, far pixels at the top of the images (heuristic sky mask)."""
    component_radius: float = 8.0
    """Neighbour radius of the connected-object graph, in median nearest-neighbour distances."""
    filter_max_points: int = 60_000
    """Outlier/object filters run on at most this many evenly sampled points; the rest follow their nearest sample."""
    colmap_max_points: int = 100_000
    """Most 3D points written to the COLMAP model (evenly sampled from the kept points)."""

    def __post_init__(self) -> None:
        _check(self.min_conf_thr >= 0, f"min_conf_thr must be >= 0, got {self.min_conf_thr}")
        _check(self.outlier_neighbors >= 1, f"outlier_neighbors must be >= 1, got {self.outlier_neighbors}")
        _check(self.outlier_std > 0, f"outlier_std must be > 0, got {self.outlier_std}")
        _check(self.component_radius > 0, f"component_radius must be > 0, got {self.component_radius}")
        _check(self.filter_max_points >= 1000, f"filter_max_points must be >= 1000, got {self.filter_max_points}")
        _check(self.colmap_max_points >= 1, f"colmap_max_points must be >= 1, got {self.colmap_max_points}")


@dataclass(frozen=True)
class VizConfig:
    """How the scene is drawn in the GLB and the gallery."""

    as_pointcloud: bool = False
    """Coloured point cloud instead of a mesh."""
    show_cameras: bool = True
    """Draw a frustum per view."""
    cam_size: float = 0.05
    """Frustum size, as a fraction of the scene extent."""
    cam_image: bool = True
    """Show each image on its frustum."""
    cam_transparent: bool = False
    """Draw frustums semi-transparent."""
    max_points: int = 1_000_000
    """Points/vertices above this are subsampled."""
    depth_cmap: str = "turbo"
    """Matplotlib colormap for depth maps."""
    conf_cmap: str = "magma"
    """Matplotlib colormap for confidence maps."""
    mesh_depth_jump: float = 0.05
    """Mesh triangles whose vertex depths differ by more than this fraction (max/min - 1) are not drawn."""

    def __post_init__(self) -> None:
        _check(self.cam_size > 0, f"cam_size must be > 0, got {self.cam_size}")
        _check(self.max_points >= 1000, f"max_points must be >= 1000, got {self.max_points}")
        _check(self.mesh_depth_jump > 0, f"mesh_depth_jump must be > 0, got {self.mesh_depth_jump}")


@dataclass(frozen=True)
class ColmapConfig:
    """Classical structure-from-motion engine (pycolmap)."""

    matcher: Literal["auto", "exhaustive", "sequential"] = "auto"
    """``auto``: exhaustive for small sets, sequential for long ordered captures."""
    exhaustive_max_images: int = 40
    """``auto`` switches to sequential matching above this many images."""
    mapper: Literal["global", "incremental"] = "global"
    """Mapping method."""
    max_image_size: int = 2000
    """SIFT runs on images downscaled to this long side (0 = original size)."""
    camera_model: Literal["SIMPLE_RADIAL", "RADIAL", "OPENCV", "SIMPLE_PINHOLE", "PINHOLE"] = "SIMPLE_RADIAL"
    """COLMAP camera model; the scene keeps its pinhole part (distortion is reported, not applied)."""
    sequential_overlap: int = 10
    """Sequential matching: each image is matched with this many following ones (plus 2^k jumps)."""
    max_num_features: int = 8192
    """Most SIFT features kept per image."""
    num_threads: int = 0
    """CPU threads for extraction, matching and mapping (0 = every core this process may use)."""
    display_max_size: int = 1024
    """Long side of the images stored in a sparse scene (intrinsics refer to these images)."""
    dense: bool = True
    """After mapping, compute per-view depth, confidence and points by multi-view stereo
    (``core.engines.mvs``); False keeps the sparse scene (``--sparse``)."""
    mvs_size: int = 640
    """Dense step's working resolution: long side in pixels of the undistorted images the depth maps
    are computed on and the dense scene stores (never larger than the images COLMAP ran on)."""

    def __post_init__(self) -> None:
        _check(isinstance(self.dense, bool), f"dense must be a bool, got {self.dense!r}")
        _check(64 <= self.mvs_size <= 4096, f"mvs_size must be in 64..4096, got {self.mvs_size}")
        _check(self.exhaustive_max_images >= 2, f"exhaustive_max_images must be >= 2, got {self.exhaustive_max_images}")
        _check(self.max_image_size >= 0, f"max_image_size must be >= 0, got {self.max_image_size}")
        _check(self.sequential_overlap >= 1, f"sequential_overlap must be >= 1, got {self.sequential_overlap}")
        _check(self.max_num_features >= 100, f"max_num_features must be >= 100, got {self.max_num_features}")
        _check(self.num_threads >= 0, f"num_threads must be >= 0, got {self.num_threads}")
        _check(self.display_max_size >= 64, f"display_max_size must be >= 64, got {self.display_max_size}")


@dataclass(frozen=True)
class JobConfig:
    """Where runs write their files and how long they are kept."""

    output_root: Path = Path("outputs")
    """Every run gets its own folder below this."""
    max_age_hours: float = 24.0
    """Jobs older than this are deleted (never the current session's)."""
    max_total_mb: float = 5000.0
    """Oldest jobs are deleted while the root is larger than this."""
    save_pairs: bool = True
    """Keep DUSt3R pair predictions (pairs.npz, ~6 MB per pair at 512x384) for re-alignment."""
    keep_session_jobs: bool = True
    """Keep a browser session's jobs after its tab closes (then cleaned by age/size); False deletes them."""

    def __post_init__(self) -> None:
        _check(self.max_age_hours > 0, f"max_age_hours must be > 0, got {self.max_age_hours}")
        _check(self.max_total_mb > 0, f"max_total_mb must be > 0, got {self.max_total_mb}")
        _check(
            isinstance(self.save_pairs, bool) and isinstance(self.keep_session_jobs, bool),
            f"save_pairs and keep_session_jobs must be bools, got {self.save_pairs!r}, {self.keep_session_jobs!r}",
        )


@dataclass(frozen=True)
class UIConfig:
    """The web app."""

    host: str = "127.0.0.1"
    """Address to bind (loopback by default)."""
    port: int = 7860
    """Port to bind."""
    share: bool = False
    """Create a public Gradio share link."""
    max_images: int = 32
    """Largest upload count per run."""
    max_upload_mb: float = 50.0
    """Largest single upload."""
    concurrency_limit: int = 1
    """Reconstructions run at once per device."""
    queue_size: int = 16
    """Most requests waiting in the queue; more are refused with a 'queue full' message."""
    max_niter: int = 2000
    """Upper end of the iterations slider."""
    max_conf_thr: float = 20.0
    """Upper end of the confidence-threshold slider (raw confidence, >= 1)."""
    max_cam_size: float = 0.2
    """Upper end of the camera-size slider (fraction of the scene extent)."""
    viewer_height: int = 560
    """Height of the 3D viewer in pixels (outside fullscreen)."""
    cache_clean_s: int = 3600
    """How often Gradio's cache of served files is cleaned (seconds); files older than the jobs' max age go."""

    def __post_init__(self) -> None:
        _check(0 < self.port < 65536, f"port must be in 1..65535, got {self.port}")
        _check(self.max_images >= 2, f"max_images must be >= 2, got {self.max_images}")
        _check(self.max_upload_mb > 0, f"max_upload_mb must be > 0, got {self.max_upload_mb}")
        _check(self.concurrency_limit >= 1, f"concurrency_limit must be >= 1, got {self.concurrency_limit}")
        _check(self.queue_size >= 1, f"queue_size must be >= 1, got {self.queue_size}")
        _check(self.max_niter >= 1, f"max_niter must be >= 1, got {self.max_niter}")
        _check(self.max_conf_thr > 1, f"max_conf_thr must be > 1, got {self.max_conf_thr}")
        _check(self.max_cam_size > 0, f"max_cam_size must be > 0, got {self.max_cam_size}")
        _check(self.viewer_height >= 200, f"viewer_height must be >= 200, got {self.viewer_height}")
        _check(self.cache_clean_s >= 60, f"cache_clean_s must be >= 60, got {self.cache_clean_s}")


@dataclass(frozen=True)
class AppConfig:
    """Everything, nested by concern."""

    model: ModelConfig = field(default_factory=ModelConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    alignment: AlignmentConfig = field(default_factory=AlignmentConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    viz: VizConfig = field(default_factory=VizConfig)
    colmap: ColmapConfig = field(default_factory=ColmapConfig)
    jobs: JobConfig = field(default_factory=JobConfig)
    ui: UIConfig = field(default_factory=UIConfig)
