"""Run many command lines, each in its own forked process, paying for torch's import once.

``python -m tests.cli_fork_runner < cases.json > results.json``: the input is a JSON list of
``{"module": "openhart", "argv": [...]}``; the output the same list with ``returncode``,
``stdout`` and ``stderr`` of each. A child is a real process (its own exit status, file
descriptors 1 and 2 on files of its own) that runs the module as ``python -m MODULE ARGV`` would
(:func:`runpy.run_module` as ``__main__``); only the interpreter's start and the imports are
shared, made once here before any thread exists. Cases run ``--jobs`` at a time; one that
outlives ``--timeout`` seconds is killed (exit -9).

The bad-input test uses it because 200 fresh interpreters, each importing torch, cost minutes of
CPU on a 2-core machine; a sample of the cases also runs in fresh interpreters to show that both
give the same results.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import signal
import sys
import tempfile
import time
import traceback


def _child(module: str, argv: list[str], out_fd: int, err_fd: int) -> None:
    """In the forked child: point stdout/stderr at the files, run the module, exit with its code."""
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    sys.stdout = open(1, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
    sys.argv = [f"python -m {module}", *argv]
    code = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        if not isinstance(done.code, int) and done.code is not None:
            print(done.code, file=sys.stderr)
    except BaseException:  # what an interpreter does with an uncaught exception
        sys.excepthook(*sys.exc_info())
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            traceback.print_exc()
    os._exit(code)


def run_cases(cases: list[dict], jobs: int, timeout: float) -> list[dict]:
    """Fork one child per case, at most ``jobs`` alive at once; collect exit codes and output."""
    pending = list(enumerate(cases))
    running: dict[int, tuple[int, float, object, object]] = {}  # pid → (index, start, out, err)
    results: list[dict] = [{} for _ in cases]
    while pending or running:
        while pending and len(running) < jobs:
            index, case = pending.pop(0)
            out = tempfile.TemporaryFile()  # noqa: SIM115  (closed when the child is reaped)
            err = tempfile.TemporaryFile()  # noqa: SIM115
            pid = os.fork()
            if pid == 0:
                _child(case["module"], case["argv"], out.fileno(), err.fileno())
            running[pid] = (index, time.monotonic(), out, err)
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            now = time.monotonic()
            for child, (_, start, _, _) in running.items():
                if now - start > timeout:
                    os.kill(child, signal.SIGKILL)
            time.sleep(0.02)
            continue
        index, _, out, err = running.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        texts = []
        for handle in (out, err):
            handle.seek(0)
            texts.append(handle.read().decode("utf-8", "replace"))
            handle.close()
        results[index] = {**cases[index], "returncode": code, "stdout": texts[0], "stderr": texts[1]}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=180.0)
    args = parser.parse_args()
    cases = json.load(sys.stdin)
    # The imports every case shares, made before the first fork (and before any thread exists).
    import openhart.cli
    import openhart.synthesis.cli

    try:  # the web extra, which `serve` imports when it runs
        import uvicorn  # noqa: F401

        import openhart.serve.app  # noqa: F401
    except ImportError:
        pass

    json.dump(run_cases(cases, args.jobs, args.timeout), sys.stdout)


if __name__ == "__main__":
    main()
