"""The ``extract:`` section of the plugin configuration, validated.

All keys are optional::

    plugins:
      datasette-llm-newsroom:
        extract:
          direct_insert: false        # allow "insert without review" (trusted pipelines)
          add_run_column: true        # add an _llm_run column to existing tables on insert
          max_upload_bytes: 20000000  # per file
          max_documents: 20
          max_text_chars: 2000000     # pasted text
          concurrency: 2              # chunks sent to the model at once
          chunk_chars: 12000
          overlap: 400
          max_cost_per_run: 1.0       # USD; falls back to budgets.max_cost_per_run
          max_tokens_per_run: 500000  # falls back to budgets.max_tokens_per_run
          run_timeout: 1800           # seconds before a run is stopped
          max_examples: 5             # accepted examples offered to later runs
          max_json_bytes: 33554432    # a JSON run request (api/runs, estimate), base64 files included
          pdf_timeout: 20             # seconds to read one PDF's text layer
          pdf_max_decompressed_bytes: 67108864  # page content one PDF may decompress to
          templates: [{name, instructions, columns, key_columns}]
          keep_documents_days: 30     # uploaded images/PDFs kept for review (0: keep none)
          keep_documents_max_bytes: 500000000  # all kept files together; oldest go first
          documents_folder: null      # keep them in this folder instead of the state database
          public_provenance: quote    # off | quote | document: what readers of a row may see
          public_provenance_actors: false  # show who extracted/reviewed on provenance cards
          ocr: {max_pages: 50, page_timeout: 60, timeout: 600,
                detect_max_side: 960, detect_unclip: 1.8, recognize_batch: 3,
                threads: 0}  # engine: see ocr.EngineSettings
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from datasette_llm_core.config import PLUGIN_NAME, plugin_settings
from datasette_llm_core.errors import ConfigError


class TemplateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    instructions: str = ""
    columns: list[Any]
    key_columns: list[str] = []
    description: str = ""


class OcrSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_pages: int = Field(50, ge=0)  # OCR pages per run
    page_timeout: float = Field(60.0, gt=0)  # seconds per page
    timeout: float = Field(600.0, gt=0)  # seconds of OCR per run
    # how the engine is set up (ocr.EngineSettings; defaults from benchmarks/bench_ocr.py)
    detect_max_side: int = Field(960, ge=0, le=4000)  # px, longest side for line detection; 0: RapidOCR's
    detect_unclip: float = Field(1.8, ge=1.0, le=4.0)  # how far line boxes grow before reading
    recognize_batch: int = Field(3, ge=1, le=64)  # lines per recognition call
    threads: int = Field(0, ge=0, le=64)  # onnxruntime threads per call; 0: one per core

    def limits(self):
        """These settings as the reading step takes them (``reading.OcrLimits``)."""
        from .ocr import EngineSettings
        from .reading import OcrLimits

        engine = EngineSettings(detect_max_side=self.detect_max_side, detect_unclip=self.detect_unclip,
                                recognize_batch=self.recognize_batch, threads=self.threads)
        return OcrLimits(max_pages=self.max_pages, page_timeout=self.page_timeout, timeout=self.timeout,
                         engine=engine)


class ExtractSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    direct_insert: bool = False
    add_run_column: bool = True
    max_upload_bytes: int = Field(20_000_000, gt=0)
    max_documents: int = Field(20, gt=0)
    max_text_chars: int = Field(2_000_000, gt=0)
    concurrency: int = Field(2, ge=1, le=16)
    chunk_chars: int = Field(12_000, ge=500)
    overlap: int = Field(400, ge=0)
    max_cost_per_run: float | None = None
    max_tokens_per_run: int | None = None
    run_timeout: float = Field(1800.0, gt=0)
    max_examples: int = Field(5, ge=0, le=50)
    max_json_bytes: int = Field(32 * 1024 * 1024, gt=0)
    pdf_timeout: float = Field(20.0, gt=0)
    pdf_max_decompressed_bytes: int = Field(64 * 1024 * 1024, gt=0)
    templates: list[TemplateConfig] = []
    keep_documents_days: float = Field(30.0, ge=0)
    keep_documents_max_bytes: int = Field(500_000_000, ge=0)
    documents_folder: str | None = None
    public_provenance: Literal["off", "quote", "document"] = "quote"
    public_provenance_actors: bool = False
    ocr: OcrSettings = OcrSettings()
    #: Seconds between polls of a provider batch of an enrichment job (the batch API answers within 24 h).
    batch_poll_seconds: float = Field(60.0, gt=0)

    @field_validator("public_provenance", mode="before")
    @classmethod
    def _yaml_off(cls, value):
        # YAML reads a bare `off` as false
        return "off" if value is False else value


def extract_settings(datasette) -> ExtractSettings:
    """Parsed ``extract`` settings, budgets filled in from ``budgets``."""
    settings = plugin_settings(datasette)
    try:
        parsed = ExtractSettings.model_validate(settings.extract or {})
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()
        )
        raise ConfigError(
            f"Invalid configuration under plugins: {PLUGIN_NAME}: extract: {problems}."
        ) from None
    if parsed.max_cost_per_run is None:
        parsed.max_cost_per_run = settings.budgets.max_cost_per_run
    if parsed.max_tokens_per_run is None:
        parsed.max_tokens_per_run = settings.budgets.max_tokens_per_run
    return parsed
