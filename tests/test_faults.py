"""Fault injection (issue 12): kills, signals and a full disk for the CLI and the web app's process;
the web app's sessions, exports and hostile clients are in ``test_faults_web.py``. Every loop is
bounded and small (tiny model, 64-px images); the CLI scenarios run in one driver subprocess
(``tests/fault_driver.py``) that forks a child per scenario, two independent scenarios at a time.

What is tried, and how many times per test run:

- ``kill -9`` of ``main.py reconstruct --export all --save-pairs`` over an earlier complete
  result, at 6 points (:data:`KILL_POINTS`: while the earlier result is set aside, mid-alignment,
  halfway through writing the GLB, while the outputs are published, just before and just after
  the final manifest), each followed by a normal run in the same folder: 6 kills, 6 recoveries;
- SIGTERM and SIGINT of the CLI mid-alignment: once each;
- a full disk: a 32 MB tmpfs with 2 MB left (when a mount namespace is available), and a
  simulated ENOSPC on the last output's rename: once each, each followed by a run once space is free;
- SIGTERM of the web app mid-run and idle (two servers started side by side): once each; a job
  of a killed server found at start-up;
- file names with spaces and line breaks through every export; the memory check of the alignment.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import httpx
import pycolmap
import pytest

import pipeline
from core.errors import InsufficientMemoryError
from core.inference.memory import ModelDims, check_alignment_memory, check_memory, estimate_memory
from core.inputs.pairs import make_pairs
from tests.conftest import tiny_config
from tests.fault_helpers import LEFTOVERS, can_unshare, last_line, leftovers, native_dump, read_back
from tests.live_app import free_port

ROOT = Path(__file__).resolve().parents[1]
#: Where the second run dies. Its R renames (29 here): 2 checks that the folder is writable, 12 moving
#: the earlier result aside (manifest first), .running, the "running" manifest, settings.json, the
#: staged manifest, 10 outputs published, then manifest.json ("done").
KILL_POINTS = {
    "mid-set-aside": {"kind": "replace", "n": 4},
    "align": {"kind": "stage", "stage": "align", "at": 3},
    "glb": {"kind": "glb"},
    "mid-publish": {"kind": "replace", "n": -6},
    "before-manifest": {"kind": "replace", "n": "R"},
    "after-manifest": {"kind": "replace", "n": "R", "after": True},
}


# --------------------------------------------------------------------------------------------
# The CLI under kill -9, SIGTERM/SIGINT and a full disk (one driver subprocess)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def faults(fixtures_dir: Path, tmp_path_factory) -> tuple[dict, Path, bool]:
    work = tmp_path_factory.mktemp("faults")
    images = str(fixtures_dir / "images")
    common = ["--checkpoint", str(fixtures_dir / "tiny_linear"), "--image-size", "64", "--device", "cpu"]
    common += ["--precision", "fp32", "--export", "all", "--save-pairs", "--surface-res", "32", "--voxel-res", "16"]

    def run(name: str, out: Path, niter: int, fault: dict | None = None) -> dict:
        argv = ["reconstruct", images, "--output", str(out), "--niter", str(niter), *common]
        return {"do": "run", "name": name, "argv": argv, "fault": fault}

    def copy(src: Path, dst: Path) -> dict:
        return {"do": "copy", "src": str(src), "dst": str(dst)}

    base = work / "base"
    serial = [run("base", base, 5), copy(base, work / "count"), run("count", work / "count", 7, {"kind": "count"})]
    chains = []  # independent of each other: run two at a time
    for point, fault in KILL_POINTS.items():
        folder = work / f"kill-{point}"
        chains.append([copy(base, folder), run(f"kill-{point}", folder, 7, fault), copy(folder, work / f"snap-{point}"),
                       run(f"recover-{point}", folder, 7)])  # fmt: skip
    for name, sig in (("sigterm", signal.SIGTERM), ("sigint", signal.SIGINT)):
        fault = {"kind": "stage", "stage": "align", "at": 3, "signal": int(sig)}
        chains.append([copy(base, work / name), run(name, work / name, 200, fault)])
    chains.append([copy(base, work / "enospc"), run("enospc", work / "enospc", 7, {"kind": "enospc", "n": -2}),
                   copy(work / "enospc", work / "snap-enospc"), run("enospc-freed", work / "enospc", 7)])  # fmt: skip
    tmpfs = can_unshare()
    if tmpfs:
        full = ["reconstruct", images, "--output", str(work / "tmpfs" / "out"), "--niter", "5", *common]
        chains.append(
            [{"do": "diskfull", "name": "diskfull", "mount": str(work / "tmpfs"), "size_mb": 32, "leave_kb": 2048}
             | {"argv": full}]
        )  # fmt: skip
    (work / "steps.json").write_text(json.dumps({"serial": serial, "chains": chains, "jobs": 2}))
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
    assert read_back(work / "count")["settings"]["alignment"]["niter"] == 7
    assert not leftovers(work / "count")


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_9_never_leaves_done_beside_broken_outputs(faults, point: str) -> None:
    """The folder held a complete result (niter 5); a second run (niter 7) is killed with SIGKILL."""
    res, work, _ = faults
    killed = res[f"kill-{point}"]
    assert killed["signal"] == signal.SIGKILL, killed["stderr"][-2000:]
    snap = work / f"snap-{point}"
    manifest = json.loads((snap / "manifest.json").read_text()) if (snap / "manifest.json").is_file() else {}
    if manifest.get("status") == "done":  # the earlier result untouched, or the new one complete
        niter = read_back(snap)["settings"]["alignment"]["niter"]
        assert json.loads((snap / "settings.json").read_text())["alignment"]["niter"] == niter
        assert niter == 7 or not (snap / ".running").exists()  # never the earlier "done" beside this run
    else:
        assert manifest.get("status") in (None, "running"), manifest.get("status")
    previous = snap / ".previous"
    if previous.is_dir() and (previous / "manifest.json").exists():  # the earlier result, set aside whole
        assert read_back(previous)["settings"]["alignment"]["niter"] == 5
    # a normal run in the same folder succeeds and leaves nothing behind
    recovered = res[f"recover-{point}"]
    assert recovered["code"] == 0, recovered["stderr"][-2000:]
    folder = work / f"kill-{point}"
    assert read_back(folder)["status"] == "done"
    assert not leftovers(folder), leftovers(folder)


@pytest.mark.parametrize(
    ("name", "code", "word"), [("sigterm", 143, "terminated (SIGTERM)"), ("sigint", 130, "Ctrl-C")]
)
def test_sigterm_and_ctrl_c_stop_the_cli_cleanly(faults, name: str, code: int, word: str) -> None:
    res, work, _ = faults
    run = res[name]
    assert run["signal"] is None and run["code"] == code, run["stderr"][-2000:]
    assert not native_dump(run["stderr"])
    assert word in last_line(run["stderr"])
    manifest = json.loads((work / name / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["settings"]["alignment"]["niter"] == 200
    assert not leftovers(work / name, keep_previous=True), leftovers(work / name)
    assert not (work / name / "scene.glb").exists()  # outputs of an unfinished run never appear
    assert read_back(work / name / ".previous")["status"] == "done"  # the earlier result is kept aside


def test_disk_full_simulated_names_the_folder_and_the_next_run_succeeds(faults) -> None:
    res, work, _ = faults
    full, freed = res["enospc"], res["enospc-freed"]
    assert full["code"] == 1, full["stderr"][-2000:]
    last = last_line(full["stderr"])
    assert "disk is full" in last and "MB free" in last and str(work / "enospc") in last
    snap, folder = work / "snap-enospc", work / "enospc"
    assert sorted(p.name for p in snap.iterdir()) == [".previous", "manifest.json", "settings.json"]
    assert json.loads((snap / "manifest.json").read_text())["status"] == "failed"
    assert read_back(snap / ".previous")["status"] == "done"  # the earlier result, kept aside
    assert freed["code"] == 0 and read_back(folder)["status"] == "done" and not leftovers(folder)


def test_disk_full_on_a_small_tmpfs(faults) -> None:
    res, _, tmpfs = faults
    if not tmpfs or res["diskfull"].get("skipped"):
        pytest.skip("no mount namespace for a tmpfs here; the simulated ENOSPC test covers the logic")
    full, freed = res["diskfull"]["full"], res["diskfull"]["freed"]
    assert full["code"] == 1, full["stderr"][-2000:]
    last = last_line(full["stderr"])
    assert "disk is full" in last and "MB free" in last and "out" in last
    assert sorted(full["listing"]) == ["out", "out/manifest.json", "out/settings.json"]  # no partial files
    assert freed["code"] == 0, freed["stderr"][-2000:]
    assert freed["manifest"]["status"] == "done"
    assert not [p for p in freed["listing"] if any(m in p for m in LEFTOVERS)]


# --------------------------------------------------------------------------------------------
# The web app: SIGTERM mid-run and idle (a real server process)
# --------------------------------------------------------------------------------------------


def _start_server(fixtures_dir: Path, root: Path, port: int, log: Path) -> subprocess.Popen:
    """``main.py`` serving the tiny model on ``port`` (starting; see :func:`_wait_up`); Gradio's
    upload cache in ``root/../gradio``."""
    argv = [sys.executable, str(ROOT / "main.py"), "--port", str(port), "--output-root", str(root)]
    argv += ["--checkpoint", str(fixtures_dir / "tiny_linear"), "--image-size", "64", "--device", "cpu"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    env["GRADIO_TEMP_DIR"] = str(root.parent / "gradio")
    root.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log.open("w"), env=env, cwd=root.parent)


def _wait_up(proc: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise AssertionError("the web app did not start: " + log.read_text()[-3000:])


def test_sigterm_stops_the_web_app_idle_or_mid_run(fixtures_dir: Path, tmp_path: Path) -> None:
    """Two servers started side by side: SIGTERM of the idle one is one line; mid-run, the job is
    marked interrupted, nothing is left half-written and Gradio's cache is cleaned."""
    idle, busy = tmp_path / "idle", tmp_path / "busy"
    ports = free_port(), free_port()
    while ports[1] == ports[0]:
        ports = ports[0], free_port()
    procs = [
        _start_server(fixtures_dir, d / "jobs", port, d / "server.log")
        for d, port in zip((idle, busy), ports, strict=True)
    ]
    try:
        for proc, d, port in zip(procs, (idle, busy), ports, strict=True):
            _wait_up(proc, port, d / "server.log")
        _sigterm_when_idle(procs[0], idle / "server.log")
        _sigterm_mid_run(procs[1], ports[1], fixtures_dir, busy)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()


def _sigterm_when_idle(proc: subprocess.Popen, log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=90)
    text = log.read_text()
    assert code == 143 and not native_dump(text), text[-3000:]
    assert "terminated (SIGTERM)" in last_line(text)


def _sigterm_mid_run(proc: subprocess.Popen, port: int, fixtures_dir: Path, folder: Path) -> None:
    from gradio_client import Client, handle_file

    root, log = folder / "jobs", folder / "server.log"
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
    text = log.read_text()
    assert code == 143, text[-3000:]
    assert not native_dump(text), text[-3000:]
    assert sum("terminated (SIGTERM)" in ln for ln in text.splitlines()) == 1
    job = running[0].parent
    manifest = json.loads((job / "manifest.json").read_text())
    assert manifest["status"] == "interrupted", manifest.get("status")
    assert not leftovers(job), leftovers(job)
    # Gradio's cache (the uploads, the served copies) is cleaned on the way out; its multipart
    # parser's empty temporary files are Gradio's own and stay
    cached = [p for p in (folder / "gradio").rglob("*") if p.is_file() and p.stat().st_size > 0]
    assert not cached, cached


def _ignore(fn) -> None:
    try:
        fn()
    except Exception:  # noqa: BLE001 - the server goes away under the client on purpose
        return


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


def test_names_with_spaces_and_line_breaks_are_renamed_with_a_warning(fixtures_dir: Path, tmp_path: Path) -> None:
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
    expected = ["my_photo_1.png", "line_break.png", "tab_and_space.png"]  # COLMAP's text files end a name at a space
    assert list(result.scene.names) == expected
    assert sum("in the outputs" in w for w in result.scene.warnings) == 3
    manifest = read_back(job.dir)
    assert [im["name"] for im in manifest["images"]] == expected
    assert [c["name"] for c in json.loads((job.dir / "cameras.json").read_text())["images"]] == expected
    rec = pycolmap.Reconstruction(str(job.dir / "colmap" / "sparse" / "0"))
    assert sorted(im.name for im in rec.images.values()) == sorted(expected)
    text = pycolmap.Reconstruction()
    text.read_text(str(job.dir / "colmap" / "sparse" / "0"))
    assert sorted(im.name for im in text.images.values()) == sorted(expected)
    with zipfile.ZipFile(job.dir / "reconstruction.zip") as zf:
        assert "depth/my_photo_1_depth.npy" in zf.namelist()
        assert not [n for n in zf.namelist() if any(c in n for c in " \n\t")]
