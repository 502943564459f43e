"""``make bench``: the CPU benchmark set, results to benchmarks/results/<machine>.json + table."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def machine_name() -> str:
    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return re.sub(r"[^a-z0-9]+", "-", f"cpu {cpu} {os.cpu_count()}c".lower()).strip("-")


def main() -> int:
    out = HERE / "results" / f"{machine_name()}.json"
    out.parent.mkdir(exist_ok=True)
    cmd = [
        sys.executable, "-m", "pytest", str(HERE), "-q", "-p", "no:cacheprovider",
        "--benchmark-only", f"--benchmark-json={out}", "-c", str(HERE / "pytest.ini"),
    ]
    rc = subprocess.call(cmd, cwd=HERE)
    if rc == 0:
        sys.path.insert(0, str(HERE))
        from report import plot, table

        md = table(str(out))
        out.with_suffix(".md").write_text(md + "\n")
        plot(str(out), str(out.with_suffix(".png")))
        sys.stdout.write(md + "\n")
    return rc


if __name__ == "__main__":
    sys.exit(main())
