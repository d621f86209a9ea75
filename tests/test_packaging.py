"""The wheel users get from `pip install` / `datasette install` carries everything the suite needs."""

import configparser
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    # Build from a copy so the checkout gets no build/ or egg-info folders.
    src = tmp_path_factory.mktemp("src") / "project"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".git", ".venv*", "__pycache__", "*.egg-info", "build", "results", "*.db", ".hypothesis", "node_modules"
        ),
    )
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    wheels = list(out.glob("datasette_llm_newsroom-*.whl"))
    assert len(wheels) == 1, wheels
    return zipfile.ZipFile(wheels[0])


def test_wheel_has_packages_and_data(wheel):
    names = set(wheel.namelist())
    for required in [
        "datasette_llm_core/__init__.py",
        "datasette_llm_extract/__init__.py",
        "datasette_llm_rag/__init__.py",
        "datasette_llm_core/embeddings/tokenizer/tokenizer.json",
        "datasette_llm_core/embeddings/tokenizer/vocab.txt",
        "datasette_llm_core/embeddings/tokenizer/NOTICE",
    ]:
        assert required in names, f"{required} missing from the wheel"
    # every template and static file in the source tree ships
    for package in ["datasette_llm_core", "datasette_llm_extract", "datasette_llm_rag"]:
        for sub in ["templates", "static"]:
            for path in (ROOT / package / sub).glob("*"):
                if path.is_file():
                    rel = f"{package}/{sub}/{path.name}"
                    assert rel in names, f"{rel} missing from the wheel"
    # tests, demo data and benchmarks are not installed as packages
    assert not any(n.startswith(("tests/", "demo_data/", "benchmarks/")) for n in names)


def test_wheel_declares_three_datasette_entry_points(wheel):
    ep_name = next(n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt"))
    parser = configparser.ConfigParser()
    parser.read_string(wheel.read(ep_name).decode())
    assert dict(parser["datasette"]) == {
        "llm_core": "datasette_llm_core",
        "llm_extract": "datasette_llm_extract",
        "llm_rag": "datasette_llm_rag",
    }
