"""Entry point: the web app (default) and the headless commands.

    python main.py [--host H] [--port P] [--checkpoint C] [--device D] [--image-size S]
                   [--output-root DIR] [--share]                 start the web app
    python main.py reconstruct IMAGE [IMAGE ...] --output DIR    images -> scene, headless
    python main.py align PAIRS_NPZ --output DIR                  re-align saved pair predictions

Exit codes: 0 success, 1 the reconstruction failed (alignment, COLMAP, memory, a full disk), 2 bad
command line (unknown option, bad value, a ``--known-focal`` count that does not match the images,
an ``--output`` that is a file or cannot be written), 3 bad input file (missing, not an image, not
a pairs file, ...), 4 DUSt3R weights missing or unreadable, 70 internal error, 130 interrupted
(Ctrl-C), 143 terminated (SIGTERM). Errors are one line on stderr; add ``--debug`` for the
traceback. SIGTERM and SIGINT stop the running job (marked ``interrupted``, its partial files
removed) and exit with one line, for the CLI and the web app alike.

This is the only module that configures logging and process-wide switches (TF32 on CUDA, the
signal handlers).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

from config import SETTINGS, AppConfig, Setting, apply_settings, current_value, settings_of
from core.errors import (
    EXIT_FAILED,
    EXIT_INPUT,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    EXIT_WEIGHTS,
    SettingsError,
    Terminated,
    UserError,
    exit_code_for,
)
from core.outputs.export import ALL_FORMATS

__all__ = ["main", "build_parser", "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_INPUT", "EXIT_WEIGHTS"]

logger = logging.getLogger("main")

_COMMANDS = ("reconstruct", "align")


class UsageError(SettingsError):
    """A bad command line (unknown option, bad value)."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (one line) instead of printing usage and exiting."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{message} (see: {self.prog} --help)")


# --------------------------------------------------------------------------------------------
# Command line, built from config.SETTINGS
# --------------------------------------------------------------------------------------------


def _argument_type(s: Setting):
    """argparse ``type=`` for a numeric setting: a number with the setting's name in the error."""

    def convert(text: str):
        try:
            return s.to_field(text)
        except SettingsError as e:
            raise argparse.ArgumentTypeError(f"expected {s.type.__name__}, got {text!r}") from e

    return convert if s.type in (int, float) and s.parse is None else None


def _add_setting(group, s: Setting, defaults: AppConfig) -> None:
    """One option from the table; absent options keep the config's value (default=SUPPRESS)."""
    default = current_value(defaults, s.name)
    shown = default if default not in ("", None) else "none"
    kwargs: dict = {"default": argparse.SUPPRESS, "help": f"{s.help} (default: {shown})"}
    if s.type is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    else:
        kwargs["type"] = _argument_type(s)
        kwargs["metavar"] = s.name.upper() if s.choices is None else None
        kwargs["choices"] = s.choices if s.name != "scene_graph" else None
        if s.type is Path:
            kwargs["type"] = Path
    group.add_argument(s.flag, **{k: v for k, v in kwargs.items() if v is not None})


def _add_settings(p: argparse.ArgumentParser, defaults: AppConfig, *groups: str) -> None:
    titles = {
        "model": "model",
        "input": "engine, pairs and video",
        "align": "global alignment",
        "display": "display",
        "server": "web app",
    }
    for g in groups:
        arg_group = p.add_argument_group(titles[g])
        for s in settings_of(g):
            _add_setting(arg_group, s, defaults)


def _output_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("outputs")
    g.add_argument("--output", "-o", required=True, type=Path, metavar="DIR", help="output folder")
    g.add_argument(
        "--as-pointcloud",
        action="store_const",
        const="pointcloud",
        dest="view_mode",
        default=argparse.SUPPRESS,
        help="GLB as a point cloud instead of a mesh (= --view-mode pointcloud)",
    )
    g.add_argument(
        "--export",
        default="glb,npz",
        metavar="LIST",
        help=f"comma list of {', '.join(ALL_FORMATS)}, or 'all' "
        "(scene.npz, scene.glb and manifest.json are always written)",
    )
    g.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="debug logging and tracebacks")


def cli_defaults() -> AppConfig:
    """The CLI's defaults: the app's, except that pair predictions are kept only on request."""
    cfg = AppConfig()
    return dataclasses.replace(cfg, jobs=dataclasses.replace(cfg.jobs, save_pairs=False))


def build_parser(defaults: AppConfig | None = None) -> argparse.ArgumentParser:
    """The top-level parser (web app options) with the ``reconstruct`` and ``align`` commands."""
    defaults = defaults if defaults is not None else cli_defaults()
    parser = _Parser(
        prog="main.py",
        description="DUSt3R / COLMAP 3D reconstruction: web app and headless commands.",
        epilog="commands: 'main.py reconstruct --help', 'main.py align --help'",
    )
    parser.add_argument("--debug", action="store_true", help="debug logging and tracebacks")
    _add_settings(parser, defaults, "server", "model")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="{reconstruct,align}")

    rec = sub.add_parser(
        "reconstruct",
        help="images -> 3D scene, headless",
        description="Reconstruct a scene from images (files or folders) or videos without the web app.",
    )
    rec.add_argument(
        "images", nargs="+", type=Path, metavar="IMAGE", help="image or video files, or folders of images (sorted)"
    )
    _add_settings(rec, defaults, "model", "input", "align", "display")
    _output_options(rec)
    rec.add_argument(
        "--sparse",
        action="store_const",
        const=False,
        dest="dense",
        default=argparse.SUPPRESS,
        help="COLMAP engine: the sparse points only, no dense stereo (= --no-dense)",
    )

    ali = sub.add_parser(
        "align",
        help="re-align saved pair predictions (no network)",
        description="Global alignment and outputs from a pairs.npz written by --save-pairs.",
    )
    ali.add_argument("pairs", type=Path, metavar="PAIRS_NPZ", help="pair predictions (.npz)")
    _add_setting(ali.add_argument_group("model"), SETTINGS["device"], defaults)
    _add_settings(ali, defaults, "align", "display")
    _output_options(ali)
    return parser


def _config_from_args(args: argparse.Namespace, base: AppConfig) -> AppConfig:
    """Command-line values -> AppConfig (bad values raise SettingsError -> usage error)."""
    from core.runtime import resolve_device

    given = {name: getattr(args, name) for name in SETTINGS if hasattr(args, name)}
    cfg = apply_settings(base, given)
    try:
        resolve_device(cfg.model.device)  # unknown or unavailable devices are command-line errors
    except ValueError as e:
        raise UsageError(str(e)) from e
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


def _export_formats(formats: tuple[str, ...]) -> tuple[str, ...]:
    """The CLI always writes scene.glb (and scene.npz) besides ``--export``."""
    return tuple(dict.fromkeys(("glb", *formats)))


def _summary(out_dir: Path, files: dict[str, Path], result, total: float) -> str:
    from pipeline import read_manifest

    names = sorted({_rel(p, out_dir) for p in files.values()} | {"manifest.json"})
    lines = [f"wrote {out_dir}: {', '.join(names)} ({result.scene.n_views} views, {result.engine}, {total:.1f} s)"]
    exports = read_manifest(result.job).get("exports") or {}
    if (exports.get("georef") or {}).get("status") in ("gps", "scale"):
        lines.append(exports["georef"]["summary"])
    by_reason: dict[str, list[str]] = {}
    for fmt, why in (exports.get("skipped") or {}).items():
        by_reason.setdefault(why, []).append(fmt)
    skipped = [f"skipped {', '.join(fmts)}: {why}" for why, fmts in by_reason.items()]
    for line in skipped:  # on stderr too, once per reason, for whoever reads only the errors
        sys.stderr.write(f"{line} (the {result.engine} engine)\n")
    lines += skipped
    lines += [f"warning: {w}" for w in result.scene.warnings]  # printed here only (the pipeline logs them at info)
    return "\n".join(lines) + "\n"


def _rel(p: Path, root: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(p)


def _check_output(folder: Path) -> None:
    """``--output`` must be a folder this process can create and write (else a bad command line)."""
    from pipeline import jobs

    jobs.check_output_folder(folder)


def _cmd_reconstruct(args: argparse.Namespace, cfg: AppConfig) -> int:
    from core.inputs.pairs import make_pairs
    from core.inputs.video import is_video
    from pipeline import Pipeline, expand_image_paths, job_in_folder

    formats = _formats(args.export)
    _check_output(args.output)
    paths = expand_image_paths(args.images)
    if cfg.engine == "dust3r" and len(paths) > 1 and not any(map(is_video, paths)):  # videos: counted later
        make_pairs(len(paths), cfg.inference.scene_graph)  # an index past the images is a usage error
    t0 = time.perf_counter()
    job = job_in_folder(args.output, keep=paths)
    progress = _TqdmProgress()
    try:
        result = Pipeline(cfg).reconstruct(paths, cfg, job=job, progress=progress, exports=_export_formats(formats))
    finally:
        progress.close()
    sys.stdout.write(_summary(job.dir, dict(result.files), result, time.perf_counter() - t0))
    return EXIT_OK


def _cmd_align(args: argparse.Namespace, cfg: AppConfig) -> int:
    from pipeline import job_in_folder, realign

    formats = _formats(args.export)
    _check_output(args.output)
    if not args.pairs.is_file():
        raise FileNotFoundError(f"{args.pairs}: file not found")
    t0 = time.perf_counter()
    job = job_in_folder(args.output, keep=[args.pairs])
    progress = _TqdmProgress()
    try:
        result = realign(args.pairs, cfg, job=job, progress=progress, exports=_export_formats(formats))
    finally:
        progress.close()
    files = dict(result.files)
    if result.pairs_path is not None and Path(result.pairs_path).parent.resolve() == job.dir.resolve():
        files["pairs"] = Path(result.pairs_path)
    sys.stdout.write(_summary(job.dir, files, result, time.perf_counter() - t0))
    return EXIT_OK


class _Signals:
    """SIGTERM and SIGINT -> :class:`Terminated` in the main thread (after ``on_stop``), so the
    running job is stopped and marked interrupted and the process exits with 143/130 and one
    line, never a native stack dump (pycolmap's glog handler is replaced). A second signal while
    stopping ends the process at once. Previous handlers are restored on exit."""

    def __init__(self) -> None:
        self.on_stop: Callable[[], None] | None = None
        self._seen = False

    def _handle(self, signum: int, _frame) -> None:
        if self._seen:  # a second signal: stop now
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self._seen = True
        if self.on_stop is not None:
            self.on_stop()
        raise Terminated(signum)

    def install(self) -> None:
        """(Re)install the handlers (again after importing pycolmap, whose glog handler replaces them)."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._handle)

    @contextlib.contextmanager
    def installed(self) -> Iterator[_Signals]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        self.install()
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _cmd_app(cfg: AppConfig, signals: _Signals) -> int:
    import gradio_ui
    from pipeline import Pipeline, cleanup_jobs

    cleanup_jobs(cfg.jobs)  # jobs of a killed earlier server are marked interrupted (cleaned first)
    pipe = Pipeline(cfg)
    signals.on_stop = pipe.request_stop
    for name, why in pipe.availability().items():
        if why is not None:
            logger.warning("engine %s unavailable: %s", name, why)
    demo = gradio_ui.build_demo(cfg, pipe)
    logger.info("starting the web app on http://%s:%d", cfg.ui.host, cfg.ui.port)
    try:
        demo.launch(**gradio_ui.launch_kwargs(cfg))
    except Terminated:
        running = sorted(pipe.active_jobs())
        stopped = pipe.wait_idle(cfg.ui.shutdown_grace_s)
        with contextlib.redirect_stdout(io.StringIO()):  # Gradio prints "Closing server ..."
            demo.close()
        _delete_served_files(demo)
        if not stopped:
            logger.error("job(s) %s did not stop within %g s", ", ".join(running), cfg.ui.shutdown_grace_s)
        raise
    return EXIT_OK


def _delete_served_files(demo) -> None:
    """Gradio's cache of this app's files (uploads, served copies), deleted on the way out.

    Gradio deletes them when its server thread shuts down, but ``demo.close()`` waits only 5 s for
    that thread: on a loaded machine the process can exit first and leave them. Same function,
    called here too (files already gone are skipped)."""
    try:
        from gradio.route_utils import delete_files_created_by_app

        delete_files_created_by_app(demo, age=None)
    except (ImportError, RuntimeError, OSError) as e:  # another Gradio, or the server thread is at it too
        logger.debug("Gradio's cache not cleaned here: %s", e)


def _configure(debug: bool, command: str | None, tune_allocator: bool = False) -> None:
    """Logging, TF32 on CUDA, COLMAP's log level; on a CPU-only machine with ``tune_allocator``
    the CPU allocator tuning, now, before the web app's threads start (so they share its heap)."""
    level = logging.DEBUG if debug else (logging.INFO if command is None else logging.WARNING)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    for noisy in ("httpx", "httpcore", "urllib3", "matplotlib", "PIL"):  # request-by-request chatter
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    import torch

    from core import runtime

    if torch.cuda.is_available():
        runtime.enable_tf32()
    elif tune_allocator:
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
    with _Signals().installed() as signals:
        return _main(argv, signals)


def _main(argv: list[str], signals: _Signals) -> int:
    debug = "--debug" in argv
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # --help
            return int(e.code or 0)
        debug = bool(args.debug)
        try:
            cfg = _config_from_args(args, cli_defaults() if args.command else AppConfig())
        except SettingsError as e:
            raise UsageError(str(e)) from e
        _configure(debug, args.command, cfg.inference.tune_cpu_allocator)
        signals.install()  # again: importing pycolmap installed its own SIGTERM handler
        if args.command == "reconstruct":
            return _cmd_reconstruct(args, cfg)
        if args.command == "align":
            return _cmd_align(args, cfg)
        return _cmd_app(cfg, signals)
    except SettingsError as e:
        return _fail(f"error: {_one_line(e)}", EXIT_USAGE, e, debug)
    except Terminated as e:
        what = "terminated (SIGTERM)" if e.signum == signal.SIGTERM else "interrupted (Ctrl-C)"
        return _fail(f"{what}: stopped (a running job is marked interrupted)", e.exit_code, e, debug)
    except KeyboardInterrupt as e:
        return _fail("interrupted", EXIT_INTERRUPTED, e, debug)
    except (UserError, OSError, MemoryError) as e:
        return _fail(f"error: {_one_line(e)}", exit_code_for(e) if isinstance(e, UserError) else _os_code(e), e, debug)
    except Exception as e:  # noqa: BLE001 - top-level reporter: a bug, shown as one line (--debug: traceback)
        return _fail(
            f"internal error: {type(e).__name__}: {_one_line(e)} (run with --debug for details)",
            EXIT_INTERNAL,
            e,
            debug,
        )


def _os_code(e: BaseException) -> int:
    """A missing input file is a bad input (3); other OS errors (disk full, permissions) a failed run (1)."""
    return EXIT_INPUT if isinstance(e, FileNotFoundError) else EXIT_FAILED


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
