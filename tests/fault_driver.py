"""Fault injection for the CLI: runs ``main.main(argv)`` in forked children that die at chosen points.

Used by ``tests/test_faults.py`` (one subprocess for every scenario, so the heavy imports happen
once; each child is forked before any torch work, so no thread pool is shared across ``fork``)::

    python tests/fault_driver.py STEPS.json RESULTS.json

``STEPS.json`` is ``{"serial": [steps], "chains": [[steps], ...], "jobs": J}``: the serial steps run
first, in order; then the chains (each a list of steps in order, independent of the others) are
dealt round-robin to J forked runners that run at the same time (J = 2 on a 2-core machine). Steps:

- ``{"do": "run", "name": ..., "argv": [...], "fault": {...} | null}``: fork, apply the fault,
  run the CLI; records the exit code or the killing signal and the child's stderr.
  Faults: ``{"kind": "count"}`` counts ``os.replace`` calls (the count, R, is kept for later
  steps); ``{"kind": "replace", "n": N, "after": bool}`` SIGKILLs just before (or after) the N-th
  ``os.replace`` (N may be a fraction of R, or ``"R"``); ``{"kind": "stage", "stage": S,
  "at": K, "signal": SIG}`` sends SIG when the CLI's progress reports stage S at K or more;
  ``{"kind": "glb"}`` SIGKILLs halfway through writing the GLB; ``{"kind": "enospc", "n": N}``
  makes the N-th ``os.replace`` fail with 'No space left on device'.
- ``{"do": "copy", "src": ..., "dst": ...}``: copy a folder.
- ``{"do": "diskfull", "name": ..., "mount": DIR, "size_mb": M, "leave_kb": K, "argv": [...]}``:
  mount a tmpfs of M MB at DIR (needs a private mount namespace: run the driver under
  ``unshare -rm``), fill it up to K KB free, run the CLI into it, record what is left, free the
  space and run again. Recorded as skipped when the tmpfs cannot be mounted.

``RESULTS.json`` gets one object per run/diskfull step, by name.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import main as cli  # noqa: E402 - after the path set-up; imports torch, pycolmap, trimesh once
import pipeline  # noqa: E402,F401 - imported before fork so children share it
from core.outputs import export as export_module  # noqa: E402

_REAL_REPLACE = os.replace


def _kill(sig: int = signal.SIGKILL) -> None:
    os.kill(os.getpid(), sig)


def _install(fault: dict, count_file: Path, r_count: int) -> None:
    kind = fault["kind"]
    if kind in ("count", "replace", "enospc"):
        n = fault.get("n", 0)
        if isinstance(n, str):
            n = r_count if n == "R" else max(1, round(float(n) * r_count))
        elif n < 0:
            n = r_count + n + 1
        calls = {"n": 0}

        def replace(src, dst, *args, **kwargs):
            calls["n"] += 1
            count_file.write_text(str(calls["n"]))
            if kind == "replace" and calls["n"] == n and not fault.get("after"):
                _kill()
            if kind == "enospc" and calls["n"] == n:
                raise OSError(28, "No space left on device", str(dst))
            out = _REAL_REPLACE(src, dst, *args, **kwargs)
            if kind == "replace" and calls["n"] == n and fault.get("after"):
                _kill()
            return out

        os.replace = replace
    elif kind == "stage":
        original = cli._TqdmProgress.__call__
        sig = int(fault.get("signal", signal.SIGKILL))

        def progress(self, stage, done, total):
            original(self, stage, done, total)
            if stage == fault["stage"] and done >= fault.get("at", 0):
                _kill(sig)

        cli._TqdmProgress.__call__ = progress
    elif kind == "glb":
        original_glb = export_module.scene_to_glb

        def half_glb(scene, masks, viz_cfg, path, **kwargs):
            out = original_glb(scene, masks, viz_cfg, path, **kwargs)
            data = Path(out).read_bytes()
            Path(out).write_bytes(data[: len(data) // 2])
            _kill()

        export_module.scene_to_glb = half_glb
    else:
        raise ValueError(f"unknown fault {kind!r}")


def _run(argv: list[str], fault: dict | None, work: Path, name: str, r_count: int) -> dict:
    err_path, count_file = work / f"{name}.stderr", work / f"{name}.count"
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 70
        try:
            import torch

            torch.set_num_threads(1)
            fd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 2)
            if fault:
                _install(fault, count_file, r_count)
            code = cli.main(argv)
        finally:
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    out = {"name": name, "stderr": err_path.read_text(errors="replace") if err_path.exists() else ""}
    if os.WIFSIGNALED(status):
        out.update(signal=os.WTERMSIG(status), code=None)
    else:
        out.update(signal=None, code=os.WEXITSTATUS(status))
    out["replaces"] = int(count_file.read_text()) if count_file.exists() else None
    return out


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.is_dir() else []


def _diskfull(step: dict, work: Path) -> dict:
    mount = Path(step["mount"])
    mount.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={int(step['size_mb'])}m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        return {"name": step["name"], "skipped": f"cannot mount a tmpfs: {proc.stderr.strip()}"}
    try:
        free = shutil.disk_usage(mount).free
        filler = mount / "filler.bin"
        with open(filler, "wb") as f:
            f.write(b"\0" * max(free - int(step["leave_kb"]) * 1024, 0))
        first = _run(step["argv"], None, work, step["name"] + "-full", 0)
        first["listing"] = [p for p in _listing(mount) if p != "filler.bin"]
        filler.unlink()
        second = _run(step["argv"], None, work, step["name"] + "-freed", 0)
        second["listing"] = _listing(mount)
        out_dir = Path(step["argv"][step["argv"].index("--output") + 1])
        manifest = out_dir / "manifest.json"
        second["manifest"] = json.loads(manifest.read_text()) if manifest.is_file() else None
        return {"name": step["name"], "full": first, "freed": second}
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def _run_steps(steps: list[dict], work: Path, results: dict[str, dict], r_count: int) -> int:
    """Run ``steps`` in order, adding each run's record to ``results``; returns the replace count R."""
    for step in steps:
        if step["do"] == "copy":
            shutil.copytree(step["src"], step["dst"], dirs_exist_ok=True)
        elif step["do"] == "run":
            res = _run(step["argv"], step.get("fault"), work, step["name"], r_count)
            if (step.get("fault") or {}).get("kind") == "count":
                r_count = res["replaces"] or 0
            res["r_count"] = r_count
            results[step["name"]] = res
        elif step["do"] == "diskfull":
            results[step["name"]] = _diskfull(step, work)
    return r_count


def _run_chains(chains: list[list[dict]], jobs: int, work: Path, r_count: int) -> dict[str, dict]:
    """The chains on ``jobs`` forked runners (chain k on runner k mod jobs); their records merged."""
    pids = []
    for j in range(jobs):
        mine = [step for chain in chains[j::jobs] for step in chain]
        pid = os.fork()
        if pid == 0:  # a runner: never returns
            code = 70
            try:
                results: dict[str, dict] = {}
                _run_steps(mine, work, results, r_count)
                (work / f"runner-{j}.json").write_text(json.dumps(results))
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    merged: dict[str, dict] = {}
    for j, pid in enumerate(pids):
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"fault runner {j} failed with status {status}")
        merged.update(json.loads((work / f"runner-{j}.json").read_text()))
    return merged


def main(steps_path: str, results_path: str) -> int:
    plan = json.loads(Path(steps_path).read_text())
    work = Path(results_path).parent
    results: dict[str, dict] = {}
    r_count = _run_steps(plan["serial"], work, results, 0)
    results.update(_run_chains(plan["chains"], max(1, int(plan.get("jobs", 1))), work, r_count))
    Path(results_path).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
