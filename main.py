"""Entry point: the web app (default) and the headless commands.

    python main.py [--host H] [--port P] [--checkpoint C] [--device D] [--image-size S]
                   [--output-root DIR] [--share]                 start the web app
    python main.py reconstruct IMAGE [IMAGE ...] --output DIR    images -> scene, headless
    python main.py align PAIRS_NPZ --output DIR                  re-align saved pair predictions

Exit codes: 0 success, 1 the reconstruction failed (alignment, COLMAP, memory), 2 bad command
line (unknown option, bad value), 3 bad input file (missing, not an image, ...), 4 DUSt3R weights
missing or unreadable, 70 internal error, 130 interrupted. Errors are one line on stderr; add
``--debug`` for the traceback.

This is the only module that configures logging and process-wide switches (TF32 on CUDA).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from config import AppConfig

__all__ = ["main", "build_parser", "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_INPUT", "EXIT_WEIGHTS"]

logger = logging.getLogger("main")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_WEIGHTS = 4
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130

_COMMANDS = ("reconstruct", "align")


class UsageError(Exception):
    """A bad command line (unknown option, bad value)."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (one line) instead of printing usage and exiting."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{message} (see: {self.prog} --help)")


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from e
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a value >= 0, got {value}")
    return value


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from e


def _image_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from e
    if value < 16 or value % 16:
        raise argparse.ArgumentTypeError(f"must be a positive multiple of 16 (224 = square mode), got {value}")
    return value


def _focals(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected a focal length in pixels or a comma list, got {text!r}") from e
    if not values or any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"focal lengths must be > 0, got {text!r}")
    return values


def _model_options(p: argparse.ArgumentParser, defaults: AppConfig, *, inherit: bool = False) -> None:
    """Model options. With ``inherit`` (sub-commands), an option left out keeps the value given before
    the command (``main.py --device cpu reconstruct ...``) instead of being reset to its default."""
    g = p.add_argument_group("model")
    values = {
        "checkpoint": defaults.model.checkpoint,
        "device": defaults.model.device,
        "image_size": defaults.preprocess.image_size,
    }
    dflt = {k: (argparse.SUPPRESS if inherit else v) for k, v in values.items()}
    g.add_argument(
        "--checkpoint",
        default=dflt["checkpoint"],
        help=f"hub repo id, official short name, local folder, .safetensors or .pth (default: {values['checkpoint']})",
    )
    g.add_argument("--device", default=dflt["device"], help=f"auto, cpu, cuda, cuda:N (default: {values['device']})")
    g.add_argument(
        "--image-size",
        type=_image_size,
        default=dflt["image_size"],
        help=f"long side of the network input, a multiple of 16; 224 = square mode (default: {values['image_size']})",
    )


def _run_options(p: argparse.ArgumentParser, defaults: AppConfig, *, images: bool) -> None:
    a = defaults.alignment
    if images:
        g = p.add_argument_group("engine and pairs")
        g.add_argument("--engine", choices=("dust3r", "colmap"), default="dust3r", help="default: %(default)s")
        g.add_argument(
            "--scene-graph",
            default=defaults.inference.scene_graph,
            help="complete, swin-K[-noncyclic], logwin-K[-noncyclic] or oneref-I (default: %(default)s)",
        )
        g.add_argument(
            "--precision",
            choices=("auto", "fp32", "bf16", "fp16"),
            default=defaults.inference.precision,
            help="network precision (default: %(default)s)",
        )
        g.add_argument(
            "--enhance",
            action="store_true",
            help="contrast/sharpness enhancement before the network (it was trained without it)",
        )
        g.add_argument(
            "--matcher",
            choices=("auto", "exhaustive", "sequential"),
            default=defaults.colmap.matcher,
            help="COLMAP matcher (default: %(default)s)",
        )
        g.add_argument(
            "--mapper",
            choices=("global", "incremental"),
            default=defaults.colmap.mapper,
            help="COLMAP mapper (default: %(default)s)",
        )
    g = p.add_argument_group("global alignment")
    g.add_argument("--niter", type=_positive_int, default=a.niter, help="iterations (default: %(default)s)")
    g.add_argument("--schedule", choices=("linear", "cosine"), default=a.schedule, help="default: %(default)s")
    g.add_argument("--lr", type=_float, default=a.lr, help="learning rate (default: %(default)s)")
    g.add_argument(
        "--min-conf-thr",
        type=_float,
        default=a.min_conf_thr,
        help="raw confidence (>= 1) a pixel needs to be used and shown (default: %(default)s)",
    )
    g.add_argument(
        "--known-focal",
        type=_focals,
        default=None,
        metavar="F[,F...]",
        help="fixed focal length(s) in pixels of the network input: one, or one per image",
    )
    g.add_argument("--shared-focal", action="store_true", help="optimise one focal length for all images")
    g.add_argument(
        "--early-stop",
        action=argparse.BooleanOptionalAction,
        default=a.early_stop,
        help="stop when the loss stops improving (default: %(default)s)",
    )
    g = p.add_argument_group("outputs")
    g.add_argument("--output", "-o", required=True, type=Path, metavar="DIR", help="output folder")
    g.add_argument("--as-pointcloud", action="store_true", help="GLB as a point cloud instead of a mesh")
    g.add_argument(
        "--export",
        default="glb,npz",
        metavar="LIST",
        help="comma list of glb, ply, obj, colmap, json, npz, depth, zip, or 'all' "
        "(scene.npz, scene.glb and manifest.json are always written)",
    )
    if images:
        g.add_argument("--save-pairs", action="store_true", help="also write the pair predictions to DIR/pairs.npz")
    post = defaults.postprocess
    g.add_argument(
        "--clean-depth",
        action=argparse.BooleanOptionalAction,
        default=post.clean_depth,
        help="drop points hidden behind other views' surfaces (default: %(default)s)",
    )
    g.add_argument(
        "--outlier-removal",
        action=argparse.BooleanOptionalAction,
        default=post.outlier_removal,
        help="statistical outlier removal (default: %(default)s)",
    )
    g.add_argument(
        "--largest-component",
        action=argparse.BooleanOptionalAction,
        default=post.largest_component,
        help="keep only the largest connected object (default: %(default)s)",
    )
    g.add_argument(
        "--mask-sky",
        action=argparse.BooleanOptionalAction,
        default=post.mask_sky,
        help="drop sky-like pixels (default: %(default)s)",
    )
    g.add_argument(
        "--cam-size",
        type=_float,
        default=defaults.viz.cam_size,
        help="camera frustum size, fraction of the scene extent (default: %(default)s)",
    )
    g.add_argument(
        "--show-cameras",
        action=argparse.BooleanOptionalAction,
        default=defaults.viz.show_cameras,
        help="draw the cameras in the GLB (default: %(default)s)",
    )


def build_parser(defaults: AppConfig | None = None) -> argparse.ArgumentParser:
    """The top-level parser (web app options) with the ``reconstruct`` and ``align`` commands."""
    defaults = defaults if defaults is not None else AppConfig()
    parser = _Parser(
        prog="main.py",
        description="DUSt3R / COLMAP 3D reconstruction: web app and headless commands.",
        epilog="commands: 'main.py reconstruct --help', 'main.py align --help'",
    )
    parser.add_argument("--host", default=defaults.ui.host, help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=defaults.ui.port, help="port (default: %(default)s)")
    parser.add_argument(
        "--output-root", type=Path, default=defaults.jobs.output_root, help="folder for the jobs (default: %(default)s)"
    )
    parser.add_argument("--share", action="store_true", help="create a public Gradio share link (off by default)")
    parser.add_argument(
        "--max-images", type=int, default=defaults.ui.max_images, help="most images per run (default: %(default)s)"
    )
    parser.add_argument("--debug", action="store_true", help="debug logging and tracebacks")
    _model_options(parser, defaults)
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="{reconstruct,align}")

    rec = sub.add_parser(
        "reconstruct",
        help="images -> 3D scene, headless",
        description="Reconstruct a scene from images (files or folders) without the web app.",
    )
    rec.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files or folders (sorted)")
    _model_options(rec, defaults, inherit=True)
    _run_options(rec, defaults, images=True)
    rec.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="debug logging and tracebacks")

    ali = sub.add_parser(
        "align",
        help="re-align saved pair predictions (no network)",
        description="Global alignment and outputs from a pairs.npz written by --save-pairs.",
    )
    ali.add_argument("pairs", type=Path, metavar="PAIRS_NPZ", help="pair predictions (.npz)")
    ali.add_argument(
        "--device", default=argparse.SUPPRESS, help=f"auto, cpu, cuda, cuda:N (default: {defaults.model.device})"
    )
    _run_options(ali, defaults, images=False)
    ali.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="debug logging and tracebacks")
    return parser


def _config_from_args(args: argparse.Namespace, base: AppConfig) -> AppConfig:
    """Command-line values -> AppConfig (range checks raise ValueError -> usage error)."""
    from core.runtime import resolve_device

    r = dataclasses.replace
    cfg = base
    resolve_device(args.device)  # unknown or unavailable devices are command-line errors
    cfg = r(cfg, model=r(cfg.model, device=args.device))
    if hasattr(args, "checkpoint"):
        cfg = r(cfg, model=r(cfg.model, checkpoint=args.checkpoint))
    if hasattr(args, "image_size"):
        cfg = r(cfg, preprocess=r(cfg.preprocess, image_size=args.image_size))
    if getattr(args, "enhance", False):
        cfg = r(cfg, preprocess=r(cfg.preprocess, enhance=True))
    if hasattr(args, "scene_graph"):
        cfg = r(cfg, inference=r(cfg.inference, scene_graph=args.scene_graph, precision=args.precision))
        cfg = r(cfg, colmap=r(cfg.colmap, matcher=args.matcher, mapper=args.mapper))
    if hasattr(args, "niter"):
        cfg = r(
            cfg,
            alignment=r(
                cfg.alignment,
                niter=args.niter,
                schedule=args.schedule,
                lr=args.lr,
                min_conf_thr=args.min_conf_thr,
                known_focal=args.known_focal,
                shared_focal=args.shared_focal,
                early_stop=args.early_stop,
            ),
        )
        cfg = r(
            cfg,
            postprocess=r(
                cfg.postprocess,
                min_conf_thr=args.min_conf_thr,
                clean_depth=args.clean_depth,
                outlier_removal=args.outlier_removal,
                largest_component=args.largest_component,
                mask_sky=args.mask_sky,
            ),
        )
        cfg = r(
            cfg,
            viz=r(cfg.viz, as_pointcloud=args.as_pointcloud, cam_size=args.cam_size, show_cameras=args.show_cameras),
        )
    if hasattr(args, "output_root") and args.command is None:
        cfg = r(cfg, jobs=r(cfg.jobs, output_root=args.output_root))
    if args.command == "reconstruct":
        cfg = r(cfg, jobs=r(cfg.jobs, save_pairs=bool(args.save_pairs)))
    if args.command is None:
        cfg = r(cfg, ui=r(cfg.ui, host=args.host, port=args.port, share=args.share, max_images=args.max_images))
    return cfg


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


class _TqdmProgress:
    """progress(stage, done, total) -> one tqdm bar per stage on stderr."""

    def __init__(self) -> None:
        self._bar = None
        self._stage: str | None = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        from tqdm import tqdm

        from pipeline import STAGE_LABELS

        if stage != self._stage:
            self.close()
            self._stage = stage
            self._bar = tqdm(
                total=max(total, 1),
                desc=STAGE_LABELS.get(stage, stage),
                file=sys.stderr,
                leave=True,
                dynamic_ncols=True,
                mininterval=0.2,
            )
        bar = self._bar
        if bar is None:
            return
        if total and bar.total != total:
            bar.total = total
        step = done - bar.n
        if step > 0:
            bar.update(step)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _formats(text: str) -> tuple[str, ...]:
    from core.outputs.export import parse_formats

    try:
        return tuple(parse_formats(text))
    except ValueError as e:
        raise UsageError(f"--export: {e}") from e


def _write_outputs(result, cfg: AppConfig, formats: Sequence[str], out_dir: Path, t0: float) -> dict[str, Path]:
    """scene.npz, scene.glb and the requested formats into ``out_dir``; completes manifest.json."""
    from pipeline import export, update_manifest

    t_export = time.perf_counter()
    # scene.npz was written by the run itself (same settings); "zip" re-writes everything anyway
    wanted = tuple(f for f in dict.fromkeys(("glb", *formats)) if f != "npz" or "zip" in formats)
    files = export(result, cfg.postprocess, cfg.viz, wanted, out_dir=out_dir)
    files.setdefault("npz", result.job.scene_path)
    if result.pairs_path is not None and Path(result.pairs_path).parent.resolve() == out_dir.resolve():
        files = {**files, "pairs": Path(result.pairs_path)}
    timings = {"export": round(time.perf_counter() - t_export, 4), "total": round(time.perf_counter() - t0, 4)}
    update_manifest(result.job, files={k: v for k, v in files.items() if k != "manifest"}, timings=timings)
    return files


def _summary(out_dir: Path, files: dict[str, Path], result, total: float) -> str:
    names = sorted({_rel(p, out_dir) for p in files.values()} | {"manifest.json"})
    lines = [f"wrote {out_dir}: {', '.join(names)} ({result.scene.n_views} views, {result.engine}, {total:.1f} s)"]
    lines += [f"warning: {w}" for w in result.scene.warnings]
    return "\n".join(lines) + "\n"


def _rel(p: Path, root: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(p)


def _cmd_reconstruct(args: argparse.Namespace, cfg: AppConfig) -> int:
    from core.inputs.pairs import make_pairs
    from pipeline import Pipeline, expand_image_paths, job_in_folder

    formats = _formats(args.export)
    paths = expand_image_paths(args.images)
    if args.engine == "dust3r" and len(paths) > 1:
        try:
            make_pairs(len(paths), cfg.inference.scene_graph)
        except ValueError as e:
            raise UsageError(f"--scene-graph: {e}") from e
    t0 = time.perf_counter()
    job = job_in_folder(args.output)
    progress = _TqdmProgress()
    try:
        result = Pipeline(cfg).reconstruct(paths, cfg, engine=args.engine, job=job, progress=progress)
    finally:
        progress.close()
    files = _write_outputs(result, cfg, formats, job.dir, t0)
    sys.stdout.write(_summary(job.dir, files, result, time.perf_counter() - t0))
    return EXIT_OK


def _cmd_align(args: argparse.Namespace, cfg: AppConfig) -> int:
    from pipeline import job_in_folder, realign

    formats = _formats(args.export)
    if not args.pairs.is_file():
        raise FileNotFoundError(f"{args.pairs}: file not found")
    t0 = time.perf_counter()
    job = job_in_folder(args.output)
    progress = _TqdmProgress()
    try:
        result = realign(args.pairs, cfg, job=job, progress=progress)
    finally:
        progress.close()
    files = _write_outputs(result, cfg, formats, job.dir, t0)
    sys.stdout.write(_summary(job.dir, files, result, time.perf_counter() - t0))
    return EXIT_OK


def _cmd_app(cfg: AppConfig) -> int:
    import gradio_ui
    from pipeline import Pipeline, cleanup_jobs

    cleanup_jobs(cfg.jobs)
    pipe = Pipeline(cfg)
    for name, why in pipe.availability().items():
        if why is not None:
            logger.warning("engine %s unavailable: %s", name, why)
    demo = gradio_ui.build_demo(cfg, pipe)
    logger.info("starting the web app on http://%s:%d", cfg.ui.host, cfg.ui.port)
    demo.launch(**gradio_ui.launch_kwargs(cfg))
    return EXIT_OK


def _exit_code(exc: BaseException) -> int:
    from core.inputs.preprocessing import ImageLoadError
    from model import CheckpointError

    if isinstance(exc, CheckpointError):
        return EXIT_WEIGHTS
    if isinstance(exc, (ImageLoadError, FileNotFoundError)):
        return EXIT_INPUT
    return EXIT_FAILED


def _configure(debug: bool, command: str | None, tune_allocator: bool = False) -> None:
    """Logging, TF32 on CUDA, COLMAP's log level; on a CPU-only machine with ``tune_allocator``
    the CPU allocator tuning, now, before the web app's threads start (so they share its heap)."""
    level = logging.DEBUG if debug else (logging.INFO if command is None else logging.WARNING)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    for noisy in ("httpx", "httpcore", "urllib3", "matplotlib", "PIL"):  # request-by-request chatter
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    import torch

    if torch.cuda.is_available():
        from core.runtime import enable_tf32

        enable_tf32()
    elif tune_allocator:
        from core import runtime

        runtime.tune_cpu_allocator()
    try:
        import pycolmap
    except ImportError:  # the COLMAP engine reports this itself when selected
        return
    if not debug and hasattr(pycolmap, "logging"):
        pycolmap.logging.minloglevel = 2  # COLMAP's INFO/WARNING stream; errors still show


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # --help
            return int(e.code or 0)
        debug = bool(args.debug)
        try:
            cfg = _config_from_args(args, AppConfig())
        except ValueError as e:
            raise UsageError(str(e)) from e
        _configure(debug, args.command, cfg.inference.tune_cpu_allocator)
        if args.command == "reconstruct":
            return _cmd_reconstruct(args, cfg)
        if args.command == "align":
            return _cmd_align(args, cfg)
        return _cmd_app(cfg)
    except UsageError as e:
        return _fail(f"error: {e}", EXIT_USAGE, e, debug)
    except KeyboardInterrupt as e:
        return _fail("interrupted", EXIT_INTERRUPTED, e, debug)
    except (ValueError, OSError, RuntimeError, MemoryError) as e:
        return _fail(f"error: {_one_line(e)}", _exit_code(e), e, debug)
    except Exception as e:  # noqa: BLE001 - top-level reporter: a bug, shown as one line (--debug: traceback)
        return _fail(
            f"internal error: {type(e).__name__}: {_one_line(e)} (run with --debug for details)",
            EXIT_INTERNAL,
            e,
            debug,
        )


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__


def _fail(message: str, code: int, exc: BaseException, debug: bool) -> int:
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
