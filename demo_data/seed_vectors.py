"""Rebuild demo_data/vectors.npz: the demo rows' vectors, so a fresh clone need not embed them.

    python demo_data/seed_vectors.py

Run it after changing the demo data (demo_data/raw, build.py), the indexed
tables in metadata.yml or the demo's embedding model; tests/test_demo_vectors.py
fails until you do. It builds the demo databases in a temporary folder,
indexes them with ``datasette llm-rag index`` (the model metadata.yml pins,
everything embedded) and exports the vectors of those sidecars
(datasette_llm_rag/seedvectors.py). ``make demo`` passes the file to the
index command with ``--vectors``: texts found there are not embedded again,
after a few of them were re-embedded and matched.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from build import build  # noqa: E402
from serve import datasette_command, indexed_databases  # noqa: E402

from datasette_llm_rag.seedvectors import export_seed  # noqa: E402

OUT = HERE / "vectors.npz"


def main() -> None:
    parser = argparse.ArgumentParser(description="Rebuild the demo rows' vectors")
    parser.add_argument("--out", default=str(OUT), help=f"output file (default {OUT.relative_to(ROOT)})")
    out = Path(parser.parse_args().out)
    metadata = ROOT / "metadata.yml"
    with tempfile.TemporaryDirectory() as tmp:
        paths = build(Path(tmp))
        sidecars = []
        for name in indexed_databases(metadata):
            side = Path(tmp) / f"{name}.llm-rag.db"
            subprocess.run(datasette_command() + ["llm-rag", "index", str(paths[name]), "-m", str(metadata),
                                                  "--sidecar", str(side)], check=True, cwd=ROOT)
            sidecars.append(side)
        model, n = export_seed(sidecars, out)
    print(f"{out}: {n:,} vectors of {model} ({out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
