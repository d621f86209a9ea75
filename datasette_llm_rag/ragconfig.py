"""The ``rag`` section of the plugin configuration, parsed into pydantic models.

Example (metadata.yml on Datasette 0.65, datasette.yaml on 1.0)::

    plugins:
      datasette-llm-newsroom:
        rag:
          embedding_model: all-MiniLM-L6-v2   # optional, else the gateway default
          sidecar_dir: null                   # optional folder for every sidecar
          full_text: memory                   # or sqlite: rank with FTS5's bm25() in SQLite
          rrf_k: 5                            # optional: fusion constant (default per model)
          fts_weight: 1.0                     # optional: full-text weight in the fusion
          rerank:                             # cross-encoder reranking (per database too)
            answers: true                     # question box and written answers
            search: false                     # search.json (?rerank=1 per request)
            depth: 12                         # candidates reranked
          databases:
            congress:
              sidecar: congress.llm-rag.db    # optional explicit sidecar path
              tables:
                legislators:
                  columns: [name, bio]        # or template: "{name}: {bio}"
                  title_column: name
                  chunk_chars: 1500           # split longer texts into chunks

Every table of one database shares one sidecar, so they must resolve to the
same embedding model: vectors from different models are never mixed.
Whether a configured table or column really exists can only be checked
against the database, which ``check_table`` does at index time.
"""

from __future__ import annotations

import string
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from datasette_llm_core.errors import ConfigError

SECTION = "plugins: datasette-llm-newsroom: rag"


class TableConfig(BaseModel):
    """How the rows of one table become searchable text."""

    model_config = ConfigDict(extra="forbid")

    columns: list[str] | None = Field(
        None, description="Columns joined (with newlines) into the indexed text"
    )
    template: str | None = Field(
        None, description='Python format string over column names, e.g. "{name}: {bio}"'
    )
    title_column: str | None = Field(None, description="Column shown as the hit's title")
    chunk_chars: int | None = Field(
        None, ge=100, le=100_000, description="Split texts longer than this many characters"
    )
    embedding_model: str | None = Field(None, description="Overrides the database/global model")

    @field_validator("template")
    @classmethod
    def _template_fields_are_plain(cls, value: str | None) -> str | None:
        if value is None:
            return value
        template_fields(value)  # raises on attribute access, indexing, bad braces
        return value

    def text_columns(self) -> list[str] | None:
        """Columns the text is made of (None: every text column, decided at index time)."""
        if self.template is not None:
            return template_fields(self.template)
        return list(self.columns) if self.columns is not None else None


class RerankConfig(BaseModel):
    """Cross-encoder reranking of the fused candidates (rerank.py)."""

    model_config = ConfigDict(extra="forbid")

    answers: bool = Field(True, description="Rerank the rows of the question box and written answers")
    search: bool = Field(False, description="Rerank search.json results (?rerank=1 asks per request)")
    depth: int = Field(12, ge=1, le=100, description="Candidates reranked (cost grows with it)")
    max_tokens: int = Field(64, ge=32, le=512, description="Word pieces per question + passage pair")
    min_relevance: float = Field(
        0.5, ge=0.0, le=1.0, description="Calibrated score from which a reranked row is relevant"
    )
    vector_weight: float | None = Field(
        None, ge=0.0, le=100.0,
        description="Weight of the question-row cosine added to the reranker's logit (default: "
        "10 for the local embedding models it was tuned on, 0 for any other model, whose cosines "
        "live on another scale)",
    )
    table_weights: list[float] | None = Field(
        None, min_length=3, max_length=3,
        description="When every reranked candidate comes from one table, weights of the first-stage "
        "evidence added to the reranker's logit: [cosine, full-text rank, fused rank] (default: "
        "[110, 20, 60] for bge-small-en-v1.5, tuned on SciFact; [0, 0, 0], the reranker alone, for "
        "any other model). Candidates from several tables are always ordered by the reranker",
    )


class DatabaseConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sidecar: str | None = Field(None, description="Path of this database's sidecar index")
    embedding_model: str | None = None
    rerank: RerankConfig | None = Field(None, description="Overrides the rag section's rerank")
    tables: dict[str, TableConfig] = {}

    @field_validator("tables", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        # ``tables: {legislators: }`` in YAML gives None for the table config
        if isinstance(value, dict):
            return {k: (v if v is not None else {}) for k, v in value.items()}
        return value


class RagConfig(BaseModel):
    """The whole ``rag`` section. Unknown top-level keys are kept (``model_extra``)
    for the web side's own settings; table and database sections are strict."""

    model_config = ConfigDict(extra="allow")

    embedding_model: str | None = Field(
        None, description="Embedding model id; None means the gateway's default"
    )
    sidecar_dir: str | None = Field(None, description="Folder for sidecars named <db>.llm-rag.db")
    rrf_k: int | None = Field(
        None, ge=1,
        description="Reciprocal rank fusion constant (default: tuned per embedding model on SciFact, "
        "5 for bge-small-en-v1.5, 10 otherwise; fusion.py)",
    )
    fts_weight: float | None = Field(
        None, ge=0.0, le=10.0,
        description="Weight of the full-text ranks in the fusion, the vector ranks' being 1 (default: "
        "1 for bge-small-en-v1.5, 1.5 otherwise)",
    )
    full_text: Literal["memory", "sqlite"] = Field(
        "memory",
        description="Where full-text ranking runs: 'memory' (FTS5's ranking from postings held in "
        "memory, fast) or 'sqlite' (FTS5's bm25() in SQLite: no postings in memory, slower on "
        "large tables)",
    )
    rerank: RerankConfig = Field(default_factory=RerankConfig)
    databases: dict[str, DatabaseConfig] = {}

    @field_validator("databases", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: (v if v is not None else {}) for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _one_model_per_database(self) -> "RagConfig":
        for db_name, db in self.databases.items():
            models = {
                self.model_for(db_name, table) for table in db.tables
            } or {self.model_for(db_name)}
            if len(models) > 1:
                listed = ", ".join(sorted(str(m) for m in models))
                raise ValueError(
                    f"database {db_name!r} has tables configured with different "
                    f"embedding models ({listed}); the tables of one database share one "
                    "sidecar index, so give them the same embedding_model"
                )
        return self

    def model_for(self, db_name: str, table: str | None = None) -> str | None:
        """Effective embedding model id for a database (or one of its tables)."""
        db = self.databases.get(db_name)
        if db is not None and table is not None and table in db.tables:
            if db.tables[table].embedding_model:
                return db.tables[table].embedding_model
        if db is not None and db.embedding_model:
            return db.embedding_model
        return self.embedding_model

    def rerank_for(self, db_name: str) -> RerankConfig:
        """Rerank settings of a database (its own section, else the rag section's)."""
        db = self.databases.get(db_name)
        return db.rerank if db is not None and db.rerank is not None else self.rerank

    def database(self, db_name: str) -> DatabaseConfig:
        """The config of ``db_name`` or a ``ConfigError`` naming the configured ones."""
        try:
            return self.databases[db_name]
        except KeyError:
            known = ", ".join(sorted(self.databases)) or "none"
            raise ConfigError(
                f"Database {db_name!r} is not configured for question answering "
                f"(configured: {known}). Add it under {SECTION}: databases:"
            ) from None


def template_fields(template: str) -> list[str]:
    """Column names used by a ``{column}`` template, in order, without repeats."""
    names: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ValueError(f"template {template!r} is not a valid format string: {e}") from None
    for _literal, field, _spec, _conv in parsed:
        if field is None:
            continue
        if field == "" or field.isdigit() or any(c in field for c in ".[]"):
            raise ValueError(
                f"template {template!r}: use plain column names in braces, like {{name}}; "
                f"{{{field}}} is not allowed"
            )
        if field not in names:
            names.append(field)
    return names


def parse_rag_config(raw: dict | RagConfig | None) -> RagConfig:
    """Validate the ``rag`` section (a dict) or raise ``ConfigError`` saying what is wrong."""
    if isinstance(raw, RagConfig):
        return raw
    try:
        return RagConfig.model_validate(raw or {})
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}"
            for err in e.errors()
        )
        raise ConfigError(f"Invalid configuration under {SECTION}: {problems}") from None


def rag_config_for(datasette) -> RagConfig:
    """Parsed ``rag`` section of a Datasette instance (imports Datasette-facing code lazily)."""
    from datasette_llm_core.config import plugin_settings

    return parse_rag_config(plugin_settings(datasette).rag)
