"""``make bench`` / ``make gpu``: the pytest-benchmark set, results to
``benchmarks/results/<machine>.json`` with its markdown table and PNG.

On a CPU machine (``make bench``) the machine is named after the CPU and the README's table is
refreshed; where CUDA is available (``make gpu``) the benchmarks take their GPU shapes, the file
is named after the device (``gpu-<name>-pytest.json``, beside ``gpu.py``'s ``gpu-<name>.json``)
and the README is left alone.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def machine_name() -> str:
    """``cpu-<model>-<cores>c``, or ``gpu-<device>-pytest`` where CUDA is available."""
    import torch

    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
        return re.sub(r"[^a-z0-9]+", "-", f"gpu {gpu} pytest".lower()).strip("-")
    from ssgr.info import cpu_name

    return re.sub(r"[^a-z0-9]+", "-", f"cpu {cpu_name()} {os.cpu_count()}c".lower()).strip("-")


BEGIN, END = "<!-- bench:begin (written by make bench) -->", "<!-- bench:end -->"


def update_readme(readme: Path, md: str, results: Path) -> None:
    """Replace the README's table between the bench markers with ``md`` (the latest run)."""
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{readme}: the markers {BEGIN!r} and {END!r} are missing; put them back "
                         "in the Benchmarks section")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    body = (f"Latest CPU run (`{results.with_suffix('.*')}`, PNG: `{results.with_suffix('.png')}`; "
            "medians; ratios are within one run):\n\n" + md.strip() + "\n")
    readme.write_text(f"{head}{BEGIN}\n{body}{END}{tail}")


def main() -> int:
    smoke = os.environ.get("SSGR_BENCH_SMOKE", "").strip() not in ("", "0")
    # a smoke run (tiny shapes) never replaces the measured results or the README's table
    out = HERE / "results" / f"{machine_name()}{'-smoke' if smoke else ''}.json"
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
        try:
            plot(str(out), str(out.with_suffix(".png")))
        except ImportError as exc:  # an offline GPU image without matplotlib: table and JSON only
            sys.stderr.write(f"no plot ({exc}); install matplotlib for the PNG\n")
        if out.name.startswith("cpu-") and not smoke:
            update_readme(HERE.parent / "README.md", md, out.relative_to(HERE.parent))
        sys.stdout.write(md + "\n")
    return rc


if __name__ == "__main__":
    sys.exit(main())
