"""All settings of the app, in one place.

One frozen dataclass per concern, nested in :class:`AppConfig`. Every field has a docstring (the
help text everywhere it is shown); choice fields are ``Literal`` types and ranges are field
metadata (:func:`_num`), both checked once in ``__post_init__`` so a bad value fails where it is
set, with the value in the message (:class:`core.errors.SettingsError`, a ``ValueError``).

The user-facing settings are one table, :data:`SETTINGS`: flat name -> config section and field,
type, allowed values, range, default and help, all read off the dataclasses. The CLI options
(``main.py``), the page's widgets (``gradio_ui.py``) and the API parameters are built from it, and
:func:`apply_settings` turns a flat mapping into an ``AppConfig`` for all of them. Adding a
setting = a field here, a line in ``_TABLE``, and placing its widget.

>>> cfg = apply_settings(AppConfig(), {"niter": 50, "scene_graph": "swin-2-noncyclic"})
>>> cfg.alignment.niter, cfg.inference.scene_graph
(50, 'swin-2-noncyclic')
>>> SETTINGS["schedule"].choices
('linear', 'cosine')
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from core.errors import SettingsError
from core.inputs.pairs import SCENE_GRAPH_KINDS, SceneGraphKind, format_scene_graph, parse_scene_graph
from core.settings import Setting, Validated, check, make_setting, num, parse_focals, parse_scale_from

__all__ = [
    "OFFICIAL_CHECKPOINTS",
    "DEFAULT_CHECKPOINT",
    "ENGINES",
    "SCENE_GRAPH_KINDS",
    "ModelConfig",
    "InferenceConfig",
    "AlignmentConfig",
    "PreprocessConfig",
    "PostprocessConfig",
    "VizConfig",
    "ColmapConfig",
    "VideoConfig",
    "JobConfig",
    "UIConfig",
    "AppConfig",
    "Setting",
    "SETTINGS",
    "apply_settings",
    "settings_of",
    "parse_scene_graph",
    "format_scene_graph",
    "parse_focals",
    "parse_scale_from",
]

#: Short names of Naver's official checkpoints -> Hugging Face hub repo ids.
OFFICIAL_CHECKPOINTS: dict[str, str] = {
    "DUSt3R_ViTLarge_BaseDecoder_512_dpt": "naver/DUSt3R_ViTLarge_BaseDecoder_512_dpt",
    "DUSt3R_ViTLarge_BaseDecoder_512_linear": "naver/DUSt3R_ViTLarge_BaseDecoder_512_linear",
    "DUSt3R_ViTLarge_BaseDecoder_224_linear": "naver/DUSt3R_ViTLarge_BaseDecoder_224_linear",
    "MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric": "naver/MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric",
}
DEFAULT_CHECKPOINT = OFFICIAL_CHECKPOINTS["DUSt3R_ViTLarge_BaseDecoder_512_dpt"]

#: Engine names (the registry in :mod:`core.engines` holds one engine per name).
ENGINES = ("dust3r", "colmap")
EngineName = Literal["dust3r", "colmap"]


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# Scene-graph names (parsed in core.inputs.pairs only) and focal lists
# --------------------------------------------------------------------------------------------


def _scene_graph_fields(name: str) -> dict[str, Any]:
    """A scene-graph name -> the :class:`InferenceConfig` fields it sets."""
    kind, param, cyclic = parse_scene_graph(name)
    out: dict[str, Any] = {"graph": kind}
    if kind in ("swin", "logwin"):
        out.update(window_size=param, cyclic=cyclic)
    elif kind == "oneref":
        out["ref_image"] = param
    return out


# --------------------------------------------------------------------------------------------
# The settings, by concern
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelConfig(Validated):
    """Which network to load and where."""

    checkpoint: str = DEFAULT_CHECKPOINT
    """Hub repo id, official short name, local folder, .safetensors or .pth file."""
    device: str = "auto"
    """auto (CUDA if present, else CPU), cpu, cuda or cuda:N."""
    cache_dir: str | None = None
    """Hugging Face cache folder; None = huggingface_hub's default (HF_HOME)."""


@dataclass(frozen=True)
class PreprocessConfig(Validated):
    """How uploads become network inputs (reference rules, FORMAT.md section 3)."""

    image_size: int = num(512, 16)
    """Long side of the network input in pixels, a multiple of 16; 224 = square mode of the 224 model."""
    square_ok: bool = False
    """Keep square images square (otherwise cropped to 4:3, as the reference does)."""
    enhance: bool = False
    """Contrast/sharpness enhancement before the network (it was trained without it)."""
    contrast: float = num(1.2, above=0)
    """Contrast factor used when enhance is on."""
    sharpness: float = num(1.5, above=0)
    """Sharpness factor used when enhance is on."""
    max_pixels: int = num(100_000_000, above=0)
    """Decompression-bomb guard: images with more pixels are rejected."""
    min_side: int = num(16, 1)
    """Smallest accepted width/height of an upload (pixels, after EXIF): one 16-pixel patch."""

    def _extra_checks(self) -> None:
        check(self.image_size % 16 == 0, f"image_size must be a positive multiple of 16, got {self.image_size}")


@dataclass(frozen=True)
class InferenceConfig(Validated):
    """Pair inference. The scene graph is four fields; :attr:`scene_graph` is its name."""

    graph: SceneGraphKind = "auto"
    """Which image pairs go through the network: auto (complete for photos, a log window over time for
    video frames), complete (every pair), swin (each image with the next ones), logwin (neighbours at
    1, 2, 4, ...), oneref (every image with one reference)."""
    window_size: int = num(3, 1)
    """swin/logwin: window size K."""
    cyclic: bool = True
    """swin/logwin: the last images pair with the first."""
    ref_image: int = num(0, 0)
    """oneref: index of the reference image."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Network precision; auto = bf16/fp16 autocast on CUDA, bf16 on CPUs with native bf16, else fp32."""
    batch_size: int = num(0, 0)
    """Pairs decoded together (same shapes only); 0 = auto: 8 on CUDA, 1 on CPU (measured faster there)."""
    memory_fraction: float = num(0.9, hi=1, above=0)
    """Fraction of free device memory the run may plan to use before it refuses to start."""
    view_cache_gb: float = num(1.0, 0)
    """Memory for the per-view part of the DPT heads (computed once per view, reused by every
    pair the view is in; least recently used out first); 0 = recompute it for every pair."""
    tune_cpu_allocator: bool = True
    """On CPU (glibc), keep freed memory for reuse instead of returning it to the OS, so large
    tensors do not pay page faults on every allocation (``core.runtime``); the process then
    keeps its peak memory after a run."""
    descriptors: bool = False
    """MASt3R checkpoints only: also predict the per-pixel descriptors (``desc``, ``desc_conf``),
    which the alignment does not need (their MLP costs ~90 GFLOP per view and pair at 512x384)."""
    pair_storage: Literal["auto", "memory", "fp16", "disk"] = "auto"
    """Where pair predictions wait for the alignment: memory (float32, exact), fp16 (half the RAM, ~3
    significant digits), disk (float32 memory-mapped files in the job folder, exact, little RAM); auto =
    memory while they take under a quarter of the free RAM, else disk (fp16 without a job folder)."""
    workers: int = num(0, 0)
    """Ray workers for pair inference, each holding the network once (one per GPU, or CPU workers);
    0 = in this process (or one per GPU of the cluster given by ray_address). Needs requirements-ray.txt."""
    ray_address: str = ""
    """Address of an existing Ray cluster for pair inference (e.g. auto, or ray://head:10001); empty =
    a local Ray started by this process when workers > 0."""
    ray_max_restarts: int = num(3, 0)
    """Ray workers that die are restarted (their pairs retried) up to this many times each."""

    @property
    def scene_graph(self) -> str:
        """The graph's name: ``auto``, ``complete``, ``swin-3``, ``logwin-2-noncyclic``, ``oneref-0``."""
        param = self.window_size if self.graph in ("swin", "logwin") else self.ref_image
        return format_scene_graph(self.graph, param, cyclic=self.cyclic)

    @classmethod
    def with_graph(cls, name: str, **fields: Any) -> InferenceConfig:
        """An InferenceConfig from a scene-graph name (``swin-3-noncyclic``) plus other fields."""
        return cls(**_scene_graph_fields(name), **fields)


@dataclass(frozen=True)
class AlignmentConfig(Validated):
    """Global alignment (FORMAT.md section 6)."""

    niter: int = num(300, 0)
    """Adam iterations (3+ images); more = tighter fit, slower. 2 images need none."""
    schedule: Literal["linear", "cosine"] = "linear"
    """Learning-rate schedule (the reference demo's default is linear)."""
    lr: float = num(0.01, above=0)
    """Initial learning rate."""
    lr_min: float = num(1e-6, 0)
    """Final learning rate."""
    min_conf_thr: float = num(3.0, 0)
    """Raw confidence (>= 1) a pixel needs to be used by the alignment's initialisation (its PnP masks).
    The display threshold is a separate setting: it never changes the alignment."""
    init: Literal["mst"] = "mst"
    """Initialisation method."""
    mst_stale_focal: bool = True
    """Keep the reference 'mst' quirk (a focal estimated from the previous tree edge's points); False = own pair."""
    shared_focal: bool = False
    """Optimise one focal length shared by all images (one camera, one zoom)."""
    known_focal: tuple[float, ...] | None = None
    """Fixed focal length(s) in pixels of the network input: one value, or one per image; empty = estimate."""
    early_stop: bool = False
    """Stop when the loss stops improving (off by default: reference parity)."""
    early_stop_patience: int = num(30, 1)
    """Window (iterations): the mean loss of the last window is compared with the window before."""
    early_stop_tol: float = 1e-3
    """Plateau when the mean loss improves by less than this relative amount per iteration."""
    early_stop_anneal: int = num(60, 1)
    """After a plateau, iterations over which lr decays to lr_min before stopping (early stop only)."""

    def _extra_checks(self) -> None:
        check(
            self.known_focal is None or all(f > 0 and math.isfinite(f) for f in self.known_focal),
            f"known focal lengths must be > 0, got {self.known_focal}",
        )


@dataclass(frozen=True)
class PostprocessConfig(Validated):
    """Which points of the aligned scene are shown and exported (display only: never re-runs anything)."""

    min_conf_thr: float = num(3.0, 0)
    """Raw confidence (> 1) a point needs to be shown and exported; higher = fewer, surer points."""
    clean_depth: bool = True
    """Drop points lying in front of another view's surface with lower confidence."""
    outlier_removal: bool = True
    """Statistical outlier removal (isolated floating points)."""
    outlier_neighbors: int = num(16, 1)
    """k for statistical outlier removal."""
    outlier_std: float = num(2.0, above=0)
    """Points whose mean neighbour distance exceeds mean + std_ratio * std are dropped."""
    largest_component: bool = False
    """Keep only the largest connected object."""
    mask_sky: bool = False
    """Drop bright, low-texture, far pixels at the top of the images (heuristic sky mask)."""
    component_radius: float = num(8.0, above=0)
    """Neighbour radius of the connected-object graph, in median nearest-neighbour distances."""
    filter_max_points: int = num(60_000, 1000)
    """Outlier/object filters run on at most this many evenly sampled points; the rest follow their nearest sample."""
    colmap_max_points: int = num(100_000, 1)
    """Most 3D points written to the COLMAP model (evenly sampled from the kept points)."""
    georeference: bool = True
    """Use the photos' GPS (EXIF) to place the outputs on the map (UTM, metres) when 3+ photos with well-spread
    GPS positions are in the scene; off = outputs stay in the scene's own frame."""
    scale_from: str = ""
    """Without GPS: a known distance between two cameras, 'nameA,nameB,metres' (image names), makes the outputs
    metric; empty = units stay unknown."""
    gps_inlier_m: float = num(10.0, above=0)
    """A photo whose GPS position is farther than this (metres) from where the fit puts its camera is named
    as disagreeing and left out of the fit."""
    gps_min_spread_m: float = num(10.0, above=0)
    """GPS positions must spread at least this far (metres, RMS distance from their centre) to georeference;
    closer together, GPS noise would dominate the fit."""
    dsm_cell: float = num(0.0, 0)
    """Cell size of the DSM/DTM/ortho rasters in metres; 0 = from the point density."""
    ground_filter: bool = True
    """Classify ground points (cloth simulation filter, when the CSF package is installed) for the LAS
    classes and the DTM."""
    splat_max_points: int = num(1_000_000, 1)
    """Most 3D points in the splat-ready COLMAP model (evenly sampled from the kept points)."""

    def _extra_checks(self) -> None:
        parse_scale_from(self.scale_from)


@dataclass(frozen=True)
class VizConfig(Validated):
    """How the scene is drawn in the GLB and the gallery."""

    view_mode: Literal["mesh", "pointcloud", "surface", "voxels"] = "mesh"
    """Show as: mesh (each view's pixel grid), pointcloud (coloured points), surface (one fused, watertight
    or observed-only surface) or voxels (an N^3 coloured grid); surface and voxels need dense depth."""
    show_cameras: bool = True
    """Draw a frustum per view."""
    cam_size: float = num(0.05, above=0)
    """Camera frustum size, as a fraction of the scene extent."""
    cam_image: bool = True
    """Show each image on its frustum."""
    cam_transparent: bool = False
    """Draw frustums semi-transparent."""
    max_points: int = num(1_000_000, 1000)
    """Points/vertices above this are subsampled."""
    depth_cmap: str = "turbo"
    """Matplotlib colormap for depth maps."""
    conf_cmap: str = "magma"
    """Matplotlib colormap for confidence maps."""
    mesh_depth_jump: float = num(0.05, above=0)
    """Mesh triangles whose vertex depths differ by more than this fraction (max/min - 1) are not drawn."""
    surface_res: int = num(256, 16, 1024)
    """Surface: voxels along the longest side of the kept geometry (TSDF fusion)."""
    watertight: bool = True
    """Surface and solid voxels: carve what no view saw through so the surface closes; off = observed surfaces only."""
    surface_max_faces: int = num(0, 0)
    """Surface: decimate to at most this many faces (0 = keep every face; else at least 100)."""
    voxel_res: int = num(64, 16, 256)
    """Voxels: N of the N^3 grid around the kept geometry (32 = the 3D-R2N2 convention)."""
    voxel_fill: Literal["solid", "surface"] = "solid"
    """Voxels: solid (inside filled; needs watertight) or surface only."""

    @property
    def as_pointcloud(self) -> bool:
        """The per-view geometry is drawn as points (``view_mode == "pointcloud"``)."""
        return self.view_mode == "pointcloud"

    def _extra_checks(self) -> None:
        check(
            self.surface_max_faces == 0 or self.surface_max_faces >= 100,
            f"surface_max_faces must be 0 or >= 100, got {self.surface_max_faces}",
        )
        check(
            self.voxel_fill == "surface" or self.watertight,
            "solid voxels need watertight; turn watertight on or choose voxel_fill 'surface'",
        )


@dataclass(frozen=True)
class ColmapConfig(Validated):
    """Classical structure-from-motion engine (pycolmap)."""

    matcher: Literal["auto", "exhaustive", "sequential"] = "auto"
    """Feature matching; auto = exhaustive for small sets, sequential for long ordered captures."""
    exhaustive_max_images: int = num(40, 2)
    """auto switches to sequential matching above this many images."""
    mapper: Literal["global", "incremental"] = "global"
    """Mapping method."""
    max_image_size: int = num(2000, 0)
    """SIFT runs on images downscaled to this long side (0 = original size)."""
    camera_model: Literal["SIMPLE_RADIAL", "RADIAL", "OPENCV", "SIMPLE_PINHOLE", "PINHOLE"] = "SIMPLE_RADIAL"
    """COLMAP camera model; the scene keeps its pinhole part (distortion is reported, not applied)."""
    sequential_overlap: int = num(10, 1)
    """Sequential matching: each image is matched with this many following ones (plus 2^k jumps)."""
    max_num_features: int = num(8192, 100)
    """Most SIFT features kept per image."""
    num_threads: int = num(0, 0)
    """CPU threads for extraction, matching and mapping (0 = every core this process may use)."""
    display_max_size: int = num(1024, 64)
    """Sparse scenes: long side of the images stored in the scene (intrinsics refer to these images)."""
    dense: bool = True
    """Run multi-view stereo after mapping, so the scene has per-view depth, confidence and a full model
    (off: the sparse points only)."""
    mvs_size: int = num(640, 64, 4096)
    """Dense stereo working size: long side of the undistorted images (never above the images COLMAP ran on)."""


@dataclass(frozen=True)
class VideoConfig(Validated):
    """How frames are taken from videos (``core.inputs.video``): by time, the sharpest of each interval."""

    fps: float = num(1.0, hi=60, above=0)
    """Video frames kept per second of video (the sharpest of each 1/fps s); ignored with target_frames."""
    target_frames: int = num(0, 0)
    """Keep about this many frames per video, evenly spread over it; 0 = use fps."""
    max_frames: int = num(0, 0)
    """Most frames kept from one video; 0 = auto: the image limit (max_images), lowered until the
    memory estimate of the run fits."""
    sharpest: bool = True
    """Take the sharpest frame of each sampling interval (not its first)."""
    skip_static: bool = True
    """Skip video frames that barely differ from the previous kept one (camera standing still)."""
    max_duration_s: float = num(1200.0, above=0)
    """Longest video accepted (seconds of video)."""
    max_decode_s: float = num(300.0, above=0)
    """Longest time decoding one video may take (seconds)."""


@dataclass(frozen=True)
class JobConfig(Validated):
    """Where runs write their files and how long they are kept."""

    output_root: Path = Path("outputs")
    """Folder for the jobs; every run gets its own folder below it."""
    max_age_hours: float = num(24.0, above=0)
    """Jobs older than this are deleted (never the current session's)."""
    max_total_mb: float = num(5000.0, above=0)
    """Most megabytes all jobs may take: failed, then oldest jobs are deleted; when results still in use fill it, new runs are refused."""
    min_free_mb: float = num(512.0, 0)
    """Megabytes that must stay free on the disk of the output folder: new runs that would go below it are refused."""
    export_keep_s: float = num(120.0, 0, 86400)
    """Seconds an export folder (a display change, a zip) is kept at least, so a download in flight never loses it."""
    save_pairs: bool = True
    """Keep the DUSt3R pair predictions (pairs.npz, ~6 MB per pair at 512x384) for re-alignment."""
    keep_session_jobs: bool = True
    """Keep a browser session's jobs after its tab closes (then cleaned by age/size); False deletes them."""


@dataclass(frozen=True)
class UIConfig(Validated):
    """The web app."""

    host: str = "127.0.0.1"
    """Address to bind (loopback by default)."""
    port: int = num(7860, 1, 65535)
    """Port to bind."""
    share: bool = False
    """Create a public Gradio share link (off unless given)."""
    max_images: int = num(32, 2)
    """Most images per run."""
    max_upload_mb: float = num(50.0, above=0)
    """Largest single upload."""
    max_request_mb: float = num(200.0, above=0)
    """Largest upload request (all its files together), in megabytes."""
    max_pairs: int = num(500, 1)
    """Most image pairs one web run may send through the network (DUSt3R)."""
    max_run_s: float = num(3600.0, above=0)
    """Longest a web run may take, in seconds; it is stopped (and marked failed) after that."""
    allowed_origins: tuple[str, ...] = ()
    """Web origins besides the app's own that may call it (e.g. a reverse proxy's https://host); others are refused."""
    shutdown_grace_s: float = num(20.0, 0, 600)
    """On SIGTERM/SIGINT, seconds the running job gets to stop and be marked interrupted."""
    thumbnail_workers: int = num(2, 1, 64)
    """Uploads previewed at once (each decode is bounded by PreprocessConfig.max_pixels)."""
    concurrency_limit: int = num(1, 1)
    """Reconstructions run at once per device."""
    queue_size: int = num(16, 1)
    """Most requests waiting in the queue; more are refused with a 'queue full' message."""
    max_niter: int = num(2000, 1)
    """Upper end of the iterations slider."""
    max_conf_thr: float = num(20.0, above=1)
    """Upper end of the confidence-threshold sliders (raw confidence, >= 1)."""
    max_cam_size: float = num(0.2, above=0)
    """Upper end of the camera-size slider (fraction of the scene extent)."""
    viewer_height: int = num(560, 200)
    """Height of the 3D viewer in pixels (outside fullscreen)."""
    cache_clean_s: int = num(3600, 60)
    """How often Gradio's cache of served files is cleaned (seconds); files older than the jobs' max age go."""


@dataclass(frozen=True)
class AppConfig(Validated):
    """Everything, nested by concern."""

    engine: EngineName = "dust3r"
    """Reconstruction engine: dust3r (neural, works from 2 photos) or colmap (classical SfM, no weights)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    alignment: AlignmentConfig = field(default_factory=AlignmentConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    viz: VizConfig = field(default_factory=VizConfig)
    colmap: ColmapConfig = field(default_factory=ColmapConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    jobs: JobConfig = field(default_factory=JobConfig)
    ui: UIConfig = field(default_factory=UIConfig)


# --------------------------------------------------------------------------------------------
# The table of user-facing settings
# --------------------------------------------------------------------------------------------

#: Where each setting is used: ``model`` (network choice), ``input`` (reconstruct only), ``align``
#: (reconstruct, re-align), ``display`` (re-export only), ``server`` (the web app's process).
Group = Literal["model", "input", "align", "display", "server"]


_FOCALS = (parse_focals, lambda v: ",".join(f"{f:g}" for f in v or ()))


#: flat name, "section.field", group, and for the few that need them (parse, show, choices).
_TABLE: tuple[tuple, ...] = (
    ("checkpoint", "model.checkpoint", "model"),
    ("device", "model.device", "model"),
    ("workers", "inference.workers", "model"),
    ("ray_address", "inference.ray_address", "model"),
    ("image_size", "preprocess.image_size", "model"),
    ("engine", "engine", "input"),
    ("enhance", "preprocess.enhance", "input"),
    ("scene_graph", "inference.graph", "input"),
    ("window_size", "inference.window_size", "input"),
    ("cyclic", "inference.cyclic", "input"),
    ("ref_image", "inference.ref_image", "input"),
    ("precision", "inference.precision", "input"),
    ("descriptors", "inference.descriptors", "input"),
    ("matcher", "colmap.matcher", "input"),
    ("mapper", "colmap.mapper", "input"),
    ("dense", "colmap.dense", "input"),
    ("mvs_size", "colmap.mvs_size", "input"),
    ("save_pairs", "jobs.save_pairs", "input"),
    ("fps", "video.fps", "input"),
    ("target_frames", "video.target_frames", "input"),
    ("max_frames", "video.max_frames", "input"),
    ("sharpest", "video.sharpest", "input"),
    ("skip_static", "video.skip_static", "input"),
    ("pair_storage", "inference.pair_storage", "input"),
    ("niter", "alignment.niter", "align"),
    ("schedule", "alignment.schedule", "align"),
    ("lr", "alignment.lr", "align"),
    ("init_conf_thr", "alignment.min_conf_thr", "align"),
    ("known_focal", "alignment.known_focal", "align", *_FOCALS),
    ("shared_focal", "alignment.shared_focal", "align"),
    ("early_stop", "alignment.early_stop", "align"),
    ("min_conf_thr", "postprocess.min_conf_thr", "display"),
    ("view_mode", "viz.view_mode", "display"),
    ("clean_depth", "postprocess.clean_depth", "display"),
    ("outlier_removal", "postprocess.outlier_removal", "display"),
    ("largest_component", "postprocess.largest_component", "display"),
    ("mask_sky", "postprocess.mask_sky", "display"),
    ("cam_size", "viz.cam_size", "display"),
    ("show_cameras", "viz.show_cameras", "display"),
    ("cam_transparent", "viz.cam_transparent", "display"),
    ("cam_image", "viz.cam_image", "display"),
    ("surface_res", "viz.surface_res", "display"),
    ("watertight", "viz.watertight", "display"),
    ("surface_max_faces", "viz.surface_max_faces", "display"),
    ("voxel_res", "viz.voxel_res", "display"),
    ("voxel_fill", "viz.voxel_fill", "display"),
    ("georeference", "postprocess.georeference", "display"),
    ("scale_from", "postprocess.scale_from", "display"),
    ("gps_inlier_m", "postprocess.gps_inlier_m", "display"),
    ("dsm_cell", "postprocess.dsm_cell", "display"),
    ("host", "ui.host", "server"),
    ("port", "ui.port", "server"),
    ("share", "ui.share", "server"),
    ("max_images", "ui.max_images", "server"),
    ("output_root", "jobs.output_root", "server"),
    ("max_total_mb", "jobs.max_total_mb", "server"),
    ("min_free_mb", "jobs.min_free_mb", "server"),
    ("max_pairs", "ui.max_pairs", "server"),
    ("max_run_s", "ui.max_run_s", "server"),
)


#: The user-facing settings by flat name (the CLI, the page and the API are built from it).
SETTINGS: dict[str, Setting] = {row[0]: make_setting(AppConfig, *row) for row in _TABLE}


def settings_of(*groups: str) -> tuple[Setting, ...]:
    """The settings of these groups, in table order."""
    return tuple(s for s in SETTINGS.values() if s.group in groups)


def _expand(name: str, value: Any) -> dict[str, Any]:
    """One flat (name, value) -> field values keyed by setting name (a scene-graph name sets up to three)."""
    if name == "scene_graph" and isinstance(value, str) and value.strip().lower() not in SCENE_GRAPH_KINDS:
        fields = _scene_graph_fields(value)
        return {"scene_graph" if k == "graph" else k: v for k, v in fields.items()}
    return {name: SETTINGS[name].to_field(value)}


def apply_settings(cfg: AppConfig, settings: Mapping[str, Any]) -> AppConfig:
    """A flat settings mapping (names of :data:`SETTINGS`) -> a new AppConfig; None values are skipped.

    Raises SettingsError (a ValueError) naming the setting for an unknown name or a bad value.
    """
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise SettingsError(f"unknown setting(s) {unknown}; known: {', '.join(SETTINGS)}")
    values: dict[str, Any] = {}
    for name, value in settings.items():
        if value is not None:
            values.update(_expand(name, value))
    by_section: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        s = SETTINGS[name]
        by_section.setdefault(s.section, {})[s.field] = value
    top = by_section.pop("", {})
    changes = {sec: dataclasses.replace(getattr(cfg, sec), **fields) for sec, fields in by_section.items()}
    return dataclasses.replace(cfg, **changes, **top)


def current_value(cfg: AppConfig, name: str) -> Any:
    """A setting's value in ``cfg``, in the user's form."""
    s = SETTINGS[name]
    value = getattr(getattr(cfg, s.section) if s.section else cfg, s.field)
    return s.show(value) if s.show else value
