"""How long `make demo` takes on a fresh clone, from the command to the first page served.

    python benchmarks/bench_demo.py [--branch main] [--port 8799] [--dest /tmp/demo-clone]

Clones this checkout (the committed tree of ``--branch``) into ``--dest``,
runs ``make demo`` there without API keys, and polls the server until it
answers 200. Prints the total and when ``.venv`` and the demo databases were
ready, with the load average at the start and the end. pip's cache is used as
it is on the machine (say whether it was warm when quoting the figure). The
goal (issue #13): within 90 s on an idle 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--branch", default="main")
    parser.add_argument("--port", type=int, default=8799)
    parser.add_argument("--dest", default="/tmp/datasette-llm-demo-clone")
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    shutil.rmtree(args.dest, ignore_errors=True)
    subprocess.run(["git", "clone", "-q", "-b", args.branch, ROOT, args.dest], check=True)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "DATASETTE_LLM_BASE_URL")}
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    ready: dict[str, float] = {}
    outcome = "timed out"
    with open(args.dest + ".log", "w") as log:
        proc = subprocess.Popen(["make", "demo", f"PORT={args.port}"], cwd=args.dest, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while time.perf_counter() - started < args.timeout:
                if proc.poll() is not None:
                    outcome = f"make exited with {proc.returncode} (see {args.dest}.log)"
                    break
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{args.port}/", timeout=2) as response:
                        if response.status == 200:
                            outcome = "first page served"
                            break
                except OSError:
                    pass
                for mark, path in ((".venv", (".venv", ".installed")),
                                   ("demo databases", ("demo_data", "build", "newsroom.db"))):
                    if mark not in ready and os.path.exists(os.path.join(args.dest, *path)):
                        ready[mark] = time.perf_counter() - started
                time.sleep(0.25)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            proc.wait(timeout=30)
    total = time.perf_counter() - started
    marks = ", ".join(f"{name} ready at {seconds:.1f} s" for name, seconds in ready.items())
    print(f"make demo on a fresh clone of {args.branch}: {outcome} after {total:.1f} s ({marks}); "
          f"load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
