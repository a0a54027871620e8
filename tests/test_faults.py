"""Fault injection (issue 12): kills, signals, a full disk, lost heartbeats, racing exports, hostile
clients. Every loop is bounded and small (tiny model, 64-px images); the CLI scenarios run in one
driver subprocess (``tests/fault_driver.py``) that forks a child per scenario.

What is tried, and how many times per test run:

- ``kill -9`` of ``main.py reconstruct --export all --save-pairs`` over an earlier complete
  result, at 6 points (mid-alignment, halfway through writing the GLB, before the 1st, the
  R/2-th and the last rename, after the last rename), each followed by a normal run in the same
  folder: 6 kills, 6 recoveries;
- SIGTERM and SIGINT of the CLI mid-alignment: once each;
- a full disk: a 8 MB tmpfs with 2 MB left (when a mount namespace is available), and a
  simulated ENOSPC on the publishing rename: once each, each followed by a run once space is free;
- SIGTERM of the web app mid-run and idle: once each;
- a lost heartbeat during another session's run, expired results, 1 ``/package`` racing
  3 ``/render`` (twice), foreign-origin and over-cap uploads, unknown endpoints, served job files.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import httpx
import numpy as np
import pycolmap
import pytest
import trimesh
from PIL import Image, ImageFile

import gradio_ui
import pipeline
from config import UIConfig
from core.errors import InsufficientMemoryError
from core.inference.memory import ModelDims, check_alignment_memory, check_memory, estimate_memory
from core.inputs.pairs import make_pairs
from tests.conftest import tiny_config
from tests.live_app import free_port

ROOT = Path(__file__).resolve().parents[1]
KILL_POINTS = {
    "align": {"kind": "stage", "stage": "align", "at": 3},
    "glb": {"kind": "glb"},
    "first-rename": {"kind": "replace", "n": 1},
    "half-renames": {"kind": "replace", "n": "0.5"},
    "last-rename": {"kind": "replace", "n": "R"},
    "after-last-rename": {"kind": "replace", "n": "R", "after": True},
}
_LEFTOVERS = (".partial-", ".running", ".previous", ".tmp")


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _png_header(width: int, height: int) -> bytes:
    """A tiny PNG file whose header claims ``width`` x ``height`` (no pixel data to speak of)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _read_back(folder: Path) -> dict:
    """The folder's manifest, after reading back every file it lists with the library users would use."""
    manifest = json.loads((folder / "manifest.json").read_text())
    for key, rel in manifest["files"].items():
        path = folder / rel
        assert path.exists(), (key, rel)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            if f.suffix == ".npz":
                with np.load(f) as z:
                    assert all(z[k] is not None for k in z.files)
            elif f.suffix in (".glb", ".ply", ".obj"):
                assert trimesh.load(f) is not None
            elif f.suffix == ".zip":
                with zipfile.ZipFile(f) as zf:
                    assert zf.testzip() is None
            elif f.suffix == ".json":
                json.loads(f.read_text())
            elif f.suffix == ".npy":
                np.load(f)
            elif f.suffix == ".png":
                with Image.open(f) as im:
                    im.load()
        if key == "colmap":
            assert pycolmap.Reconstruction(str(path)).num_reg_images() == manifest["n_views"]
    return manifest


def _leftovers(folder: Path, *, keep_previous: bool = False) -> list[str]:
    """Temporary files, staging folders, running markers (and the set-aside earlier result)."""
    marks = [m for m in _LEFTOVERS if not (keep_previous and m == ".previous")]
    found = [p.relative_to(folder) for p in folder.rglob("*") if any(m in p.name for m in marks)]
    return [str(p) for p in found if not (keep_previous and p.parts[0] == ".previous")]


def _can_unshare() -> bool:
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=30)
    return probe.returncode == 0


def _native_dump(stderr: str) -> bool:
    """glog's failure handler output (``*** SIGTERM received``, ``@ 0x...`` frames) or a Python traceback."""
    return "*** " in stderr or "@     0x" in stderr or "@ 0x" in stderr or "Traceback" in stderr


def _last_line(text: str) -> str:
    lines = [ln for ln in text.replace("\r", "\n").splitlines() if ln.strip()]
    return lines[-1] if lines else ""


# --------------------------------------------------------------------------------------------
# The CLI under kill -9, SIGTERM/SIGINT and a full disk (one driver subprocess)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def faults(fixtures_dir: Path, tmp_path_factory) -> tuple[dict, Path, bool]:
    work = tmp_path_factory.mktemp("faults")
    images = str(fixtures_dir / "images")
    common = ["--checkpoint", str(fixtures_dir / "tiny_linear"), "--image-size", "64", "--device", "cpu"]
    common += ["--precision", "fp32", "--export", "all", "--save-pairs"]

    def run(name: str, out: Path, niter: int, fault: dict | None = None) -> dict:
        argv = ["reconstruct", images, "--output", str(out), "--niter", str(niter), *common]
        return {"do": "run", "name": name, "argv": argv, "fault": fault}

    base = work / "base"
    steps = [run("base", base, 5), {"do": "copy", "src": str(base), "dst": str(work / "count")}]
    steps.append(run("count", work / "count", 7, {"kind": "count"}))
    for point, fault in KILL_POINTS.items():
        folder = work / f"kill-{point}"
        steps += [{"do": "copy", "src": str(base), "dst": str(folder)}, run(f"kill-{point}", folder, 7, fault)]
        steps += [{"do": "copy", "src": str(folder), "dst": str(work / f"snap-{point}")}]
        steps.append(run(f"recover-{point}", folder, 7))
    for name, sig in (("sigterm", signal.SIGTERM), ("sigint", signal.SIGINT)):
        steps += [{"do": "copy", "src": str(base), "dst": str(work / name)}]
        steps.append(run(name, work / name, 200, {"kind": "stage", "stage": "align", "at": 3, "signal": int(sig)}))
    steps += [{"do": "copy", "src": str(base), "dst": str(work / "enospc")}]
    steps.append(run("enospc", work / "enospc", 7, {"kind": "enospc", "n": -2}))  # the last output's rename
    steps += [{"do": "copy", "src": str(work / "enospc"), "dst": str(work / "snap-enospc")}]
    steps.append(run("enospc-freed", work / "enospc", 7))
    tmpfs = _can_unshare()
    if tmpfs:
        full = ["reconstruct", images, "--output", str(work / "tmpfs" / "out"), "--niter", "5", *common]
        steps.append(
            {"do": "diskfull", "name": "diskfull", "mount": str(work / "tmpfs"), "size_mb": 8, "leave_kb": 2048}
            | {"argv": full}
        )
    (work / "steps.json").write_text(json.dumps(steps))
    cmd = [sys.executable, str(ROOT / "tests" / "fault_driver.py"), str(work / "steps.json"), str(work / "res.json")]
    if tmpfs:
        cmd = ["unshare", "-rm", *cmd]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, cwd=work, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((work / "res.json").read_text()), work, tmpfs


def test_earlier_result_and_counting_run(faults) -> None:
    res, work, _ = faults
    assert res["base"]["code"] == 0 and res["count"]["code"] == 0, res["count"]["stderr"][-2000:]
    assert res["count"]["replaces"] >= 10  # the kill points below are spread over these renames
    assert _read_back(work / "count")["settings"]["alignment"]["niter"] == 7
    assert not _leftovers(work / "count")


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_9_never_leaves_done_beside_broken_outputs(faults, point: str) -> None:
    """The folder held a complete result (niter 5); a second run (niter 7) is killed with SIGKILL."""
    res, work, _ = faults
    killed = res[f"kill-{point}"]
    assert killed["signal"] == signal.SIGKILL, killed["stderr"][-2000:]
    snap = work / f"snap-{point}"
    manifest = json.loads((snap / "manifest.json").read_text()) if (snap / "manifest.json").is_file() else {}
    if manifest.get("status") == "done":  # the earlier result untouched, or the new one complete
        niter = _read_back(snap)["settings"]["alignment"]["niter"]
        assert json.loads((snap / "settings.json").read_text())["alignment"]["niter"] == niter
        assert niter == 7 or not (snap / ".running").exists()  # never the earlier "done" beside this run
    else:
        assert manifest.get("status") in (None, "running"), manifest.get("status")
    previous = snap / ".previous"
    if previous.is_dir() and (previous / "manifest.json").exists():  # the earlier result, set aside whole
        assert _read_back(previous)["settings"]["alignment"]["niter"] == 5
    # a normal run in the same folder succeeds and leaves nothing behind
    recovered = res[f"recover-{point}"]
    assert recovered["code"] == 0, recovered["stderr"][-2000:]
    folder = work / f"kill-{point}"
    assert _read_back(folder)["status"] == "done"
    assert not _leftovers(folder), _leftovers(folder)


@pytest.mark.parametrize(
    ("name", "code", "word"), [("sigterm", 143, "terminated (SIGTERM)"), ("sigint", 130, "Ctrl-C")]
)
def test_sigterm_and_ctrl_c_stop_the_cli_cleanly(faults, name: str, code: int, word: str) -> None:
    res, work, _ = faults
    run = res[name]
    assert run["signal"] is None and run["code"] == code, run["stderr"][-2000:]
    assert not _native_dump(run["stderr"])
    assert word in _last_line(run["stderr"])
    manifest = json.loads((work / name / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["settings"]["alignment"]["niter"] == 200
    assert not _leftovers(work / name, keep_previous=True), _leftovers(work / name)
    assert not (work / name / "scene.glb").exists()  # outputs of an unfinished run never appear
    assert _read_back(work / name / ".previous")["status"] == "done"  # the earlier result is kept aside


def test_disk_full_simulated_names_the_folder_and_the_next_run_succeeds(faults) -> None:
    res, work, _ = faults
    full, freed = res["enospc"], res["enospc-freed"]
    assert full["code"] == 1, full["stderr"][-2000:]
    last = _last_line(full["stderr"])
    assert "disk is full" in last and "MB free" in last and str(work / "enospc") in last
    snap, folder = work / "snap-enospc", work / "enospc"
    assert sorted(p.name for p in snap.iterdir()) == [".previous", "manifest.json", "settings.json"]
    assert json.loads((snap / "manifest.json").read_text())["status"] == "failed"
    assert _read_back(snap / ".previous")["status"] == "done"  # the earlier result, kept aside
    assert freed["code"] == 0 and _read_back(folder)["status"] == "done" and not _leftovers(folder)


def test_disk_full_on_a_small_tmpfs(faults) -> None:
    res, _, tmpfs = faults
    if not tmpfs or res["diskfull"].get("skipped"):
        pytest.skip("no mount namespace for a tmpfs here; the simulated ENOSPC test covers the logic")
    full, freed = res["diskfull"]["full"], res["diskfull"]["freed"]
    assert full["code"] == 1, full["stderr"][-2000:]
    last = _last_line(full["stderr"])
    assert "disk is full" in last and "MB free" in last and "out" in last
    assert sorted(full["listing"]) == ["out", "out/manifest.json", "out/settings.json"]  # no partial files
    assert freed["code"] == 0, freed["stderr"][-2000:]
    assert freed["manifest"]["status"] == "done"
    assert not [p for p in freed["listing"] if any(m in p for m in _LEFTOVERS)]


# --------------------------------------------------------------------------------------------
# The web app: SIGTERM mid-run and idle (a real server process)
# --------------------------------------------------------------------------------------------


def _start_server(fixtures_dir: Path, root: Path, port: int, log: Path) -> subprocess.Popen:
    argv = [sys.executable, str(ROOT / "main.py"), "--port", str(port), "--output-root", str(root)]
    argv += ["--checkpoint", str(fixtures_dir / "tiny_linear"), "--image-size", "64", "--device", "cpu"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log.open("w"), env=env, cwd=root.parent)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise AssertionError("the web app did not start: " + log.read_text()[-3000:])


def test_sigterm_stops_the_web_app_mid_run_and_marks_the_job_interrupted(fixtures_dir: Path, tmp_path: Path) -> None:
    from gradio_client import Client, handle_file

    root, port, log = tmp_path / "jobs", free_port(), tmp_path / "server.log"
    proc = _start_server(fixtures_dir, root, port, log)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        files = [handle_file(str(p)) for p in sorted((fixtures_dir / "images").glob("img*.png"))]
        worker = threading.Thread(
            target=lambda: _ignore(lambda: client.predict(files=files, niter=2000, api_name="/reconstruct")),
            daemon=True,
        )
        worker.start()
        deadline = time.monotonic() + 120
        while not list(root.glob("*/.running")) and time.monotonic() < deadline:
            time.sleep(0.2)
        running = list(root.glob("*/.running"))
        assert running, log.read_text()[-3000:]
        time.sleep(1.0)  # well inside the 2000 alignment iterations
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert code == 143, text[-3000:]
    assert not _native_dump(text), text[-3000:]
    assert sum("terminated (SIGTERM)" in ln for ln in text.splitlines()) == 1
    job = running[0].parent
    manifest = json.loads((job / "manifest.json").read_text())
    assert manifest["status"] == "interrupted", manifest.get("status")
    assert not _leftovers(job), _leftovers(job)


def _ignore(fn) -> None:
    try:
        fn()
    except Exception:  # noqa: BLE001 - the server goes away under the client on purpose
        return


def test_sigterm_of_an_idle_web_app_is_one_line(fixtures_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    proc = _start_server(fixtures_dir, tmp_path / "jobs", free_port(), log)
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=90)
    text = log.read_text()
    assert code == 143 and not _native_dump(text), text[-3000:]
    assert "terminated (SIGTERM)" in _last_line(text)


def test_startup_marks_jobs_of_a_killed_process_interrupted(tmp_path: Path) -> None:
    """kill -9 of the web app mid-run: the next start-up (cleanup pass) marks the job interrupted,
    removes its partial files, and cleans it before any finished job."""
    cfg = tiny_config(tmp_path / "jobs")
    dead = pipeline.create_job(cfg.jobs.output_root)
    (dead.dir / ".running").write_text(json.dumps({"pid": 2**22 + 17, "start": 1, "host": os.uname().nodename}))
    (dead.dir / "manifest.json").write_text(json.dumps({"job_id": dead.id, "status": "running"}))
    (dead.dir / ".partial-0123").mkdir()
    (dead.dir / ".scene.0123abcd.tmp.npz").write_bytes(b"\0" * 10)
    done = pipeline.create_job(cfg.jobs.output_root)
    (done.dir / "manifest.json").write_text(json.dumps({"job_id": done.id, "status": "done"}))
    (done.dir / "scene.npz").write_bytes(b"\0" * 10_000)
    for p in (done.dir, *done.dir.iterdir()):
        os.utime(p, (time.time() - 3600, time.time() - 3600))  # less recently used than the dead job
    assert pipeline.cleanup_jobs(cfg.jobs) == []
    manifest = json.loads((dead.dir / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and "killed or crashed" in manifest["error"]
    assert sorted(p.name for p in dead.dir.iterdir()) == [".dust3r-job", "manifest.json"]
    done_mb = sum(p.stat().st_size for p in done.dir.iterdir()) / 2**20
    tight = replace(cfg.jobs, max_total_mb=done_mb * 1.001)  # over the limit by the dead job's size
    assert pipeline.cleanup_jobs(tight) == [dead.id]  # interrupted first, though the done job is older
    assert done.dir.is_dir()


# --------------------------------------------------------------------------------------------
# Sessions, exports, quotas (handlers called as plain functions)
# --------------------------------------------------------------------------------------------


def _request(session: str) -> SimpleNamespace:
    return SimpleNamespace(session_hash=session)


def _no_progress(*args, **kwargs) -> None:
    return None


@pytest.fixture(scope="module")
def images(fixtures_dir: Path) -> list[str]:
    return [str(p) for p in sorted((fixtures_dir / "images").glob("img*.png"))]


def test_lost_heartbeat_during_another_users_run_loses_nothing(images: list[str], tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "jobs", niter=10, max_images=4)
    cfg = replace(cfg, jobs=replace(cfg.jobs, keep_session_jobs=False))
    handlers = gradio_ui.UIHandlers(cfg, pipeline.Pipeline(cfg))
    mine = handlers.reconstruct(images, _request("mine"), _no_progress)[0]
    handlers.unload(_request("mine"))  # the heartbeat drops; the page is still open
    used = sum(p.stat().st_size for p in (tmp_path / "jobs").rglob("*") if p.is_file()) / 2**20
    handlers.cfg = replace(cfg, jobs=replace(cfg.jobs, max_total_mb=used * 1.5, max_age_hours=1e-6))
    for other in range(2):  # other users' runs: cleanup by age and size may not touch my job
        try:
            handlers.reconstruct(images[:2], _request(f"other-{other}"), _no_progress)
        except gr.Error as e:
            assert "storage limit" in e.message
    assert mine.job.dir.is_dir() and mine.pairs_path.is_file() and mine.job.inputs_dir.is_dir()
    glb, _, status = handlers.render(mine, view_mode="pointcloud")
    assert Path(glb).is_file() and "Done" in status
    again = handlers.realign(mine, _request("mine"), _no_progress, niter=5)[0]
    assert again.scene.n_views == 3


def test_an_expired_result_says_so_and_creates_nothing(images: list[str], tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "jobs", niter=5, max_images=4)
    handlers = gradio_ui.UIHandlers(cfg, pipeline.Pipeline(cfg))
    result = handlers.reconstruct(images, _request("s"), _no_progress)[0]
    shutil.rmtree(result.job.dir)  # cleaned up (its state outlived it)
    for call in (
        lambda: handlers.render(result, cam_size=0.1),
        lambda: handlers.package(result),
        lambda: handlers.realign(result, _request("s"), _no_progress),
    ):
        with pytest.raises(gr.Error, match="expired") as info:
            call()
        assert str(tmp_path) not in info.value.message
    assert not result.job.dir.exists()
    assert [p.name for p in (tmp_path / "jobs").iterdir()] == []  # no folder re-created


def _race(handlers, result) -> dict[str, object]:
    """One ``/package`` and three ``/render`` of the same session at once; key -> file or exception."""
    outcome: dict[str, object] = {}

    def call(key: str, fn) -> None:
        try:
            outcome[key] = fn()
        except Exception as e:  # noqa: BLE001 - surfaced by the caller
            outcome[key] = e

    jobs = {"zip": lambda: handlers.package(result, view_mode="pointcloud")}
    for k in range(3):
        jobs[f"render{k}"] = lambda k=k: handlers.render(result, cam_size=0.01 + 0.01 * k)[0]
    threads = [threading.Thread(target=call, args=(key, fn)) for key, fn in jobs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return outcome


def test_one_package_racing_three_renders_never_loses_a_file(images: list[str], tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "jobs", niter=5, max_images=4)
    handlers = gradio_ui.UIHandlers(cfg, pipeline.Pipeline(cfg))
    result = handlers.reconstruct(images, _request("s"), _no_progress)[0]
    no_grace = replace(result, settings=replace(result.settings, jobs=replace(result.settings.jobs, export_keep_s=0)))
    for res in (result, no_grace):  # without the grace period in-flight exports still never lose files
        outcome = _race(handlers, res)
        errors = {k: v for k, v in outcome.items() if isinstance(v, Exception)}
        assert not errors, errors
        if res is result:  # within the grace period every returned file is still there
            with zipfile.ZipFile(str(outcome["zip"])) as zf:
                assert zf.testzip() is None and "scene.glb" in zf.namelist()
            assert all(Path(str(outcome[f"render{k}"])).is_file() for k in range(3))
    exports = result.job.dir / "exports"
    assert not [p for p in exports.iterdir() if p.name.startswith(".")]  # no half-made export folder


def test_api_clients_without_heartbeat_and_protected_jobs_keep_the_quota(images: list[str], tmp_path: Path) -> None:
    """Protected jobs count: when only live work fills ``max_total_mb``, new runs are refused."""
    cfg = tiny_config(tmp_path / "jobs", niter=5, max_images=4)
    handlers = gradio_ui.UIHandlers(cfg, pipeline.Pipeline(cfg))
    handlers.reconstruct(images[:2], _request("api-1"), _no_progress)  # API clients never unload
    used = sum(p.stat().st_size for p in (tmp_path / "jobs").rglob("*") if p.is_file()) / 2**20
    handlers.cfg = replace(cfg, jobs=replace(cfg.jobs, max_total_mb=used * 1.1))
    with pytest.raises(gr.Error, match="storage limit is reached") as info:
        handlers.reconstruct(images[:2], _request("api-2"), _no_progress)
    assert "max_total_mb" in info.value.message
    floor = replace(cfg, jobs=replace(cfg.jobs, min_free_mb=1e9))  # a free-space floor above the disk
    handlers.cfg = floor
    with pytest.raises(gr.Error, match="disk is almost full"):
        handlers.reconstruct(images[:2], _request("api-2"), _no_progress)
    assert len(list((tmp_path / "jobs").iterdir())) == 1


def test_per_run_limits_name_the_limit(images: list[str], tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "jobs", niter=5, max_images=4, max_pairs=4)
    handlers = gradio_ui.UIHandlers(cfg, pipeline.Pipeline(cfg))
    with pytest.raises(gr.Error, match=r"6 image pairs .* at most 4 per run \(max_pairs\)"):
        handlers.reconstruct(images, _request("s"), _no_progress)
    handlers.cfg = replace(cfg, ui=replace(cfg.ui, max_pairs=100, max_run_s=1e-6))
    with pytest.raises(gr.Error, match=r"max_run_s"):
        handlers.reconstruct(images, _request("s"), _no_progress)
    failed = [json.loads(p.read_text()) for p in (tmp_path / "jobs").glob("*/manifest.json")]
    assert [m["status"] for m in failed] == ["failed"]


def test_memory_check_covers_the_global_alignment() -> None:
    """32 images at 512 px, complete graph: inference alone fits in 9 GB, with the alignment it does not."""
    hw, pairs = [(384, 512)] * 32, make_pairs(32)
    inference = estimate_memory(hw, pairs, ModelDims(), device="cpu", autocast_dtype=None, batch_size=1)
    free = int(9 * 1024**3)
    check_memory(inference, "complete", memory_fraction=1.0, available=free + inference.bytes_weights)
    with pytest.raises(InsufficientMemoryError, match="global alignment.*swin-3"):
        check_alignment_memory(hw, pairs, device="cpu", scene_graph="complete", memory_fraction=1.0, available=free)
    swin = make_pairs(32, "swin-3")
    check_alignment_memory(hw, swin, device="cpu", scene_graph="swin-3", memory_fraction=1.0, available=free)


# --------------------------------------------------------------------------------------------
# Hostile clients against a live server (in this process)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("live-jobs")
    cfg = tiny_config(root, niter=5, port=free_port(), max_request_mb=1)
    demo = gradio_ui.build_demo(cfg, pipeline.Pipeline(cfg))
    demo.launch(prevent_thread_lock=True, quiet=True, **gradio_ui.launch_kwargs(cfg))
    try:
        yield demo.local_url.rstrip("/"), root
    finally:
        demo.close()


def _upload_dir_files() -> set[Path]:
    from gradio.utils import get_upload_folder

    folder = Path(get_upload_folder())
    return {p for p in folder.rglob("*") if p.is_file()} if folder.is_dir() else set()


def test_foreign_origins_are_refused_and_nothing_is_stored(live, caplog) -> None:
    url, _ = live
    before = _upload_dir_files()
    part = ("files", ("a.png", b"\x89PNG" + b"\0" * 100, "image/png"))
    for origin in ("http://evil.example", "null", "http://127.0.0.1:1"):
        r = httpx.post(f"{url}/gradio_api/upload", files=[part], headers={"Origin": origin})
        assert r.status_code == 403, (origin, r.text)
        r = httpx.post(f"{url}/gradio_api/call/reconstruct", json={"data": []}, headers={"Origin": origin})
        assert r.status_code == 403
    assert _upload_dir_files() == before
    own = httpx.post(f"{url}/gradio_api/upload", files=[part], headers={"Origin": url})
    assert own.status_code == 200


def test_uploads_over_the_request_cap_are_refused(live) -> None:
    url, _ = live
    before = _upload_dir_files()
    parts = [("files", (f"p{k}.png", b"\0" * 400_000, "image/png")) for k in range(3)]  # 1.2 MB > 1 MB
    r = httpx.post(f"{url}/gradio_api/upload", files=parts)
    assert r.status_code == 413 and "at most 1 MB per request" in r.text
    assert _upload_dir_files() == before
    assert UIConfig().max_request_mb < 6 * 45  # six 45 MB parts in one request: refused by default


def test_unknown_endpoints_are_404_and_malformed_requests_one_line(live, caplog) -> None:
    url, _ = live
    for path, body in (("/gradio_api/call/nope", {"data": []}), ("/gradio_api/run/nope", {"data": []})):
        r = httpx.post(url + path, json=body)
        assert r.status_code == 404, (path, r.status_code, r.text)
    r = httpx.post(f"{url}/gradio_api/queue/join", json={"fn_index": 999, "data": [], "session_hash": "x"})
    assert r.status_code == 404
    assert not any(rec.exc_info for rec in caplog.records if rec.name == "web_guard")


def test_job_files_are_never_served_by_path(live, images: list[str]) -> None:
    from gradio_client import Client, handle_file

    url, root = live
    client = Client(url + "/", verbose=False)
    viewer, *_ = client.predict(files=[handle_file(p) for p in images], niter=5, api_name="/reconstruct")
    assert Path(viewer).is_file()  # the session's own copy came through Gradio's cache
    job = next(p for p in root.iterdir() if p.is_dir())
    for target in (job / "inputs" / "img0.png", job / "scene.npz", job / "pairs.npz", job / "manifest.json"):
        for prefix in ("/gradio_api/file=", "/gradio_api/file/", "/file="):
            r = httpx.get(f"{url}{prefix}{target}")
            assert r.status_code in (403, 404), (prefix, target, r.status_code)


# --------------------------------------------------------------------------------------------
# Thumbnails, names, exit codes
# --------------------------------------------------------------------------------------------


def test_thumbnails_apply_the_pixel_limit_before_decoding(tmp_path: Path, monkeypatch) -> None:
    bomb = tmp_path / "huge.png"
    bomb.write_bytes(_png_header(13000, 13000))
    cfg = tiny_config(tmp_path / "jobs")
    handlers = gradio_ui.UIHandlers(cfg, pipeline.Pipeline(cfg))

    def no_decode(self, *args, **kwargs):
        raise AssertionError("an image over the pixel limit was decoded")

    monkeypatch.setattr(Image.Image, "load", no_decode)
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    with pytest.warns(UserWarning, match="huge.png: not previewed: 13000x13000 is over the limit"):
        update = handlers.thumbnails([str(bomb)])
    assert update.visible is False


def test_names_with_spaces_and_line_breaks_survive_every_export(fixtures_dir: Path, tmp_path: Path) -> None:
    src = sorted((fixtures_dir / "images").glob("img*.png"))
    names = ["my photo 1.png", "line\nbreak.png", "tab\tand space.png"]
    folder = tmp_path / "in"
    folder.mkdir()
    for s, n in zip(src, names, strict=True):
        shutil.copyfile(s, folder / n)
    cfg = tiny_config(tmp_path / "jobs", niter=5)
    paths = [folder / n for n in names]
    job = pipeline.job_in_folder(tmp_path / "out", keep=paths)
    result = pipeline.reconstruct(paths, cfg, job=job, exports=("zip",))
    expected = ["my photo 1.png", "line_break.png", "tab_and space.png"]
    assert list(result.scene.names) == expected
    assert sum("renamed" in w for w in result.scene.warnings) == 2
    manifest = _read_back(job.dir)
    assert [im["name"] for im in manifest["images"]] == expected
    assert [c["name"] for c in json.loads((job.dir / "cameras.json").read_text())["images"]] == expected
    rec = pycolmap.Reconstruction(str(job.dir / "colmap" / "sparse" / "0"))
    assert sorted(im.name for im in rec.images.values()) == sorted(expected)
    text = pycolmap.Reconstruction()
    text.read_text(str(job.dir / "colmap" / "sparse" / "0"))
    assert sorted(im.name for im in text.images.values()) == sorted(expected)
    with zipfile.ZipFile(job.dir / "reconstruction.zip") as zf:
        assert "depth/my photo 1_depth.npy" in zf.namelist()
        assert not [n for n in zf.namelist() if "\n" in n or "\t" in n]


def test_manifests_hold_no_absolute_server_paths(images: list[str], tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "jobs", niter=5, max_images=4)
    handlers = gradio_ui.UIHandlers(cfg, pipeline.Pipeline(cfg))
    result = handlers.reconstruct(images, _request("s"), _no_progress)[0]
    manifest = result.job.manifest_path.read_text()
    assert "inputs/img0.png" in manifest and "/tmp/gradio" not in manifest
    zip_path = handlers.package(result)
    with zipfile.ZipFile(zip_path) as zf:
        for name in zf.namelist():
            if name.endswith(".json"):
                assert str(tmp_path) not in zf.read(name).decode(), name
