"""``datasette llm-extract``: batch extraction of a folder and evaluation, from the shell.

    datasette llm-extract run data.db receipts ./scans --schema receipt.json --model gpt-4.1-mini
    datasette llm-extract evaluate gold.jsonl --schema receipt.json --model gpt-4.1-mini

Both build a Datasette instance from ``--config`` (datasette.yaml or
metadata.yml) so model providers, defaults, fallbacks, budgets and the call
log work exactly as on the server. ``run`` is resumable: each file's rows and
its "done" mark are written in one transaction into the target database, so
a re-run after an interruption skips finished files and retries the rest.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import inspect
import json
import secrets
import sqlite3
import time
from pathlib import Path
from typing import Any

import click

from datasette_llm_core.errors import LLMSuiteError
from datasette_llm_core.sql import quote_identifier, quote_identifiers

from .documents import DEFAULT_MAX_BYTES, InputError, load_upload
from .schema import SchemaError, TableSpec, spec_from_table, sqlite_columns, validate_table_spec

FILES_TABLE = "_llm_extract_files"
RUNS_TABLE = "_llm_extract_cli_runs"
QUOTES_TABLE = "_llm_extract_quotes"
RUN_COLUMN = "_llm_run"
DEFAULT_CONCURRENCY = 4


# --- helpers ---------------------------------------------------------------------

def _read_structured(path: str) -> Any:
    text = Path(path).read_text(encoding="utf-8")
    if path.endswith((".yml", ".yaml")):
        import yaml

        return yaml.safe_load(text) or {}
    return json.loads(text)


def build_datasette(config_path: str | None):
    """A Datasette configured like the server (no databases, no startup side effects)."""
    from datasette.app import Datasette

    config = _read_structured(config_path) if config_path else {}
    kwargs: dict[str, Any] = {}
    if "config" in inspect.signature(Datasette.__init__).parameters:
        kwargs["config"] = config  # Datasette 1.0: plugin settings live in config
    else:
        kwargs["metadata"] = config
    return Datasette([], **kwargs)


def _load_spec(schema_path: str | None, template: str | None, ds, conn: sqlite3.Connection,
               table: str) -> tuple[TableSpec, str]:
    """(spec, instructions from the template) from --schema, --template or the existing table."""
    if schema_path:
        data = _read_structured(schema_path)
        instructions = data.pop("instructions", "") if isinstance(data, dict) else ""
        data.pop("name", None) if isinstance(data, dict) else None
        return validate_table_spec(data), instructions or ""
    if template:
        from .settings import extract_settings

        for t in extract_settings(ds).templates:
            if t.name == template:
                spec = validate_table_spec({"columns": t.columns, "key_columns": t.key_columns})
                return spec, t.instructions
        names = ", ".join(t.name for t in extract_settings(ds).templates) or "none configured"
        raise click.ClickException(f"No template named {template!r} (templates: {names}).")
    info = conn.execute(f"pragma table_info({quote_identifier(table)})").fetchall()
    if not info:
        raise click.ClickException(
            f"Table {table!r} does not exist yet: pass --schema schema.json (or --template NAME) to create it."
        )
    return spec_from_table(info), ""


def _ensure_tables(conn: sqlite3.Connection, table: str, spec: TableSpec) -> None:
    exists = conn.execute("select 1 from sqlite_master where type='table' and name=?", [table]).fetchone()
    if not exists:
        defs = [f"{quote_identifier(n)} {t}" + ("" if spec.column(n).nullable else " NOT NULL")
                for n, t in sqlite_columns(spec).items()]
        defs.append(f"{quote_identifier(RUN_COLUMN)} TEXT")
        if spec.primary_key and spec.key_columns:
            defs.append(f"PRIMARY KEY ({quote_identifiers(spec.key_columns)})")
        conn.execute(f"create table {quote_identifier(table)} ({', '.join(defs)})")
    else:
        names = {r[1] for r in conn.execute(f"pragma table_info({quote_identifier(table)})")}
        missing = [n for n in spec.column_names() if n not in names]
        if missing:
            raise click.ClickException(
                f"Table {table!r} has no column(s) {', '.join(map(repr, missing))}: "
                "add them or change the schema."
            )
        if RUN_COLUMN not in names:
            conn.execute(f"alter table {quote_identifier(table)} add column {quote_identifier(RUN_COLUMN)} text")
    conn.execute(
        f"create table if not exists {quote_identifier(RUNS_TABLE)} ("
        " run_id text primary key, -- id stored in each row's _llm_run column\n"
        " started_at text, -- UTC time the command started\n"
        " table_name text, -- target table\n"
        " folder text, -- folder extracted from\n"
        " model_id text, -- chat model used\n"
        " prompt_version text, -- extraction prompt template version\n"
        " instructions text, -- instructions given to the model\n"
        " schema_json text -- table spec as JSON\n)"
    )
    conn.execute(
        f"create table if not exists {quote_identifier(FILES_TABLE)} ("
        " table_name text not null, -- target table\n"
        " path text not null, -- file path relative to the folder\n"
        " sha256 text not null, -- content hash: a changed file is extracted again\n"
        " status text not null, -- done, or refused (file unusable)\n"
        " run_id text, -- command run that processed it\n"
        " rows integer, -- rows written\n"
        " message text, -- why a file was refused\n"
        " finished_at text, -- UTC time\n"
        " primary key (table_name, path, sha256))"
    )
    conn.execute(
        f"create table if not exists {quote_identifier(QUOTES_TABLE)} ("
        " run_id text, -- command run\n"
        " table_name text, -- target table\n"
        " row_rowid integer, -- rowid of the inserted row\n"
        " path text, -- source file\n"
        " source_quote text, -- verbatim quote the model gave for the row\n"
        " quote_found integer, -- 1 when the quote was found in the file's text\n"
        " quote_start integer, -- offset of the quote in the file's text\n"
        " quote_end integer -- end offset\n)"
    )
    conn.commit()


def _existing_keys(conn: sqlite3.Connection, table: str, spec: TableSpec) -> list[tuple]:
    if not spec.key_columns:
        return []
    return conn.execute(
        f"select {quote_identifiers(spec.key_columns)} from {quote_identifier(table)}"
    ).fetchall()


def _done_files(conn: sqlite3.Connection, table: str) -> set[tuple[str, str]]:
    return {(r[0], r[1]) for r in conn.execute(
        f"select path, sha256 from {quote_identifier(FILES_TABLE)} where table_name = ?", [table])}


class _LimitedGateway:
    """The gateway with at most ``limit`` model calls in flight across all files."""

    def __init__(self, gateway, limit: int) -> None:
        self._gateway = gateway
        self._semaphore = asyncio.Semaphore(max(1, limit))
        self._accepts = set(inspect.signature(gateway.stream).parameters)

    def __getattr__(self, name):
        return getattr(self._gateway, name)

    async def stream(self, request, **kwargs):
        kwargs = {k: v for k, v in kwargs.items() if k in self._accepts}
        async with self._semaphore:
            async for event in self._gateway.stream(request, **kwargs):
                yield event


def _write_file(conn, table, spec, run_id, path, sha, rows, status="done", message=None) -> int:
    """Rows of one file plus its done mark, in one transaction.

    Keys are checked again against the table here: files extracted side by
    side may have found the same record.
    """
    from .merge import Deduplicator

    dedup = Deduplicator(spec, _existing_keys(conn, table, spec)) if spec.key_columns and rows else None
    if dedup is not None:
        rows = [event for i, event in enumerate(rows) if dedup.check(event.values, i) is None]
    columns = spec.column_names() + [RUN_COLUMN]
    verb = "insert or ignore" if spec.primary_key else "insert"
    sql = (f"{verb} into {quote_identifier(table)} ({quote_identifiers(columns)}) "
           f"values ({', '.join('?' for _ in columns)})")
    written = 0
    with conn:
        for event in rows:
            params = [(1 if v is True else 0 if v is False else v)
                      for v in (event.values.get(c) for c in spec.column_names())]
            cursor = conn.execute(sql, params + [run_id])
            if cursor.rowcount:
                written += 1
                span = event.quote_span or [None, None]
                conn.execute(
                    f"insert into {quote_identifier(QUOTES_TABLE)} values (?, ?, ?, ?, ?, ?, ?, ?)",
                    [run_id, table, cursor.lastrowid, path, event.source_quote, int(event.quote_found),
                     span[0], span[1]],
                )
        conn.execute(
            f"insert or replace into {quote_identifier(FILES_TABLE)} values (?, ?, ?, ?, ?, ?, ?, ?)",
            [table, path, sha, status, run_id, written, message, dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")],
        )
    return written


def _folder_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(folder).parts))


# --- the run command -------------------------------------------------------------

def _estimate_folder(conn, table, spec, folder: Path, chat, instructions, max_bytes) -> dict:
    """Tokens and cost of the files still to do, without calling the model."""
    from .engine import ExtractionJob, estimate

    done = _done_files(conn, table) if conn.execute(
        "select 1 from sqlite_master where name = ?", [FILES_TABLE]).fetchone() else set()
    totals = {"estimate": True, "files": 0, "skipped": 0, "input_tokens": 0, "output_tokens": 0,
              "cost": 0.0,
                   "cost_known": chat.estimate_cost(1, 1) is not None, "problems": []}
    for path in _folder_files(folder):
        data = path.read_bytes()
        rel = str(path.relative_to(folder))
        if (rel, hashlib.sha256(data).hexdigest()) in done:
            totals["skipped"] += 1
            continue
        try:
            document = load_upload(path.name, None, data, max_bytes=max_bytes)
            est = estimate(ExtractionJob(spec=spec, instructions=instructions, documents=[document],
                                         model_id=chat.model_id), chat)
        except (InputError, LLMSuiteError, ValueError) as e:
            totals["problems"].append(f"{rel}: {e}")
            continue
        totals["files"] += 1
        totals["input_tokens"] += est["input_tokens"]
        totals["output_tokens"] += est["output_tokens"]
        if est["cost"] is None:
            totals["cost_known"] = False
        else:
            totals["cost"] += est["cost"]
    return totals


async def _run(db_path, table, folder, schema, template, model, instructions, config, concurrency,
               max_bytes, echo, estimate_only: bool = False) -> dict:
    from datasette_llm_core.gateway import llm_gateway

    from .engine import (
        ChunkDone,
        ChunkFailed,
        ExtractionJob,
        RowExtracted,
        RunFinished,
        run_extraction,
    )
    from .prompts import PROMPT_VERSION

    ds = build_datasette(config)
    conn = sqlite3.connect(db_path)
    try:
        spec, template_instructions = _load_spec(schema, template, ds, conn, table)
        instructions = instructions or template_instructions
        gateway = await llm_gateway(ds)
        chat = gateway.get_chat_model(model) if model else gateway.default_chat_model("extract")
        if chat is None:
            from datasette_llm_core.gateway import no_model_message

            raise click.ClickException(no_model_message("extract"))
        if estimate_only:
            return _estimate_folder(conn, table, spec, Path(folder), chat, instructions, max_bytes)
        _ensure_tables(conn, table, spec)
        caps: dict = {}
        try:
            from .settings import extract_settings

            settings = extract_settings(ds)
            caps = {"max_cost": settings.max_cost_per_run, "max_tokens": settings.max_tokens_per_run,
                    "chunk_chars": settings.chunk_chars, "overlap": settings.overlap,
                    "ocr_limits": settings.ocr.limits()}  # scans: the configured OCR limits
        except (ImportError, LLMSuiteError):
            pass
        run_id = secrets.token_hex(8)
        with conn:
            conn.execute(
                f"insert into {quote_identifier(RUNS_TABLE)} values (?, ?, ?, ?, ?, ?, ?, ?)",
                [run_id, dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), table, str(folder), chat.model_id, PROMPT_VERSION,
                 instructions, spec.model_dump_json()],
            )
        files = _folder_files(Path(folder))
        done = _done_files(conn, table)
        summary = {"run_id": run_id, "files": len(files), "skipped": 0, "done": 0, "failed": 0,
                   "refused": 0, "rows": 0, "invalid_rows": 0, "cost": 0.0,
                   "cost_known": chat.estimate_cost(1, 1) is not None,
                   "model_id": chat.model_id, "problems": []}
        actor = {"id": "cli"}
        # The model's own limit (its server's slots) unless --concurrency says otherwise.
        concurrency = concurrency or getattr(chat, "concurrency", None) or DEFAULT_CONCURRENCY
        limited = _LimitedGateway(gateway, concurrency)

        async def one_file(path: Path) -> None:
            rel = str(path.relative_to(folder))
            data = path.read_bytes()
            sha = hashlib.sha256(data).hexdigest()
            if (rel, sha) in done:
                summary["skipped"] += 1
                return
            try:
                document = load_upload(path.name, None, data, max_bytes=max_bytes)
            except InputError as e:
                _write_file(conn, table, spec, run_id, rel, sha, [], "refused", str(e))
                summary["refused"] += 1
                summary["problems"].append(f"{rel}: {e}")
                return
            job = ExtractionJob(spec=spec, instructions=instructions, documents=[document],
                                model_id=chat.model_id, concurrency=concurrency,
                                existing_keys=_existing_keys(conn, table, spec),
                                chunk_chars=caps.get("chunk_chars"), overlap=caps.get("overlap") or 300,
                                max_cost=caps.get("max_cost"), max_tokens=caps.get("max_tokens"),
                                ocr_limits=caps.get("ocr_limits"))
            rows, failures, invalid = [], [], {}
            try:
                async for event in run_extraction(limited, job, actor=actor, ref=f"cli:{run_id}"):
                    if isinstance(event, RowExtracted):
                        if event.valid and not event.duplicate:
                            rows.append(event)
                        elif not event.valid:
                            reason = "; ".join(event.errors) or "invalid"
                            invalid[reason] = invalid.get(reason, 0) + 1
                    elif isinstance(event, ChunkFailed):
                        failures.append(event.error)
                    elif isinstance(event, ChunkDone):
                        failures.extend(event.failed_calls)  # a re-ask or continuation that failed
                    elif isinstance(event, RunFinished):
                        if event.cost is None:
                            summary["cost_known"] = False
                        else:
                            summary["cost"] += event.cost
            except (LLMSuiteError, ValueError) as e:
                failures.append(str(e))
            if failures:
                summary["failed"] += 1
                summary["problems"].append(f"{rel}: {failures[0]} (will be retried on the next run)")
                return
            if invalid:
                summary["invalid_rows"] += sum(invalid.values())
                reasons = "; ".join(f"{n} x {reason}" for reason, n in sorted(invalid.items(), key=lambda r: -r[1])[:3])
                summary["problems"].append(f"{rel}: {sum(invalid.values())} invalid row(s) not written: {reasons}")
            summary["rows"] += _write_file(conn, table, spec, run_id, rel, sha, rows)
            summary["done"] += 1

        # Files run side by side (a folder of one-page scans is many small requests); the
        # gateway wrapper keeps the number of model calls in flight at --concurrency overall.
        pending = list(files)
        with click.progressbar(length=len(files), label=f"Extracting into {table}", show_pos=True,
                               file=echo) as bar:
            async def worker() -> None:
                while pending:
                    path = pending.pop(0)
                    await one_file(path)
                    bar.update(1)

            workers = [asyncio.create_task(worker()) for _ in range(min(concurrency, len(files)) or 1)]
            try:
                await asyncio.gather(*workers)
            finally:
                for w in workers:
                    w.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
        return summary
    finally:
        conn.close()


def resolve_image(gold_path: Path, image: str) -> Path | None:
    """Find a gold record's image: relative to the gold file, also with leading folders dropped."""
    parts = Path(image).parts
    for i in range(len(parts)):
        candidate = gold_path.parent.joinpath(*parts[i:])
        if candidate.is_file():
            return candidate
    return None


def _image_documents(gold_path: Path, docs: list) -> tuple[list, list]:
    kept, sources = [], []
    for doc in docs:
        path = resolve_image(gold_path, doc.image) if doc.image else None
        if path is None:
            continue
        try:
            sources.append(load_upload(path.name, None, path.read_bytes()))
        except InputError as e:
            click.echo(f"  {doc.id}: {e}", err=True)
            continue
        kept.append(doc)
    return kept, sources


def register(cli) -> None:
    """Add the ``llm-extract`` command group to Datasette's CLI."""

    @cli.group(name="llm-extract")
    def llm_extract():
        """Extract table rows from documents with an LLM, and evaluate extraction quality."""

    @llm_extract.command(name="run")
    @click.argument("database", type=click.Path(dir_okay=False))
    @click.argument("table")
    @click.argument("folder", type=click.Path(exists=True, file_okay=False))
    @click.option("--schema", "schema", type=click.Path(exists=True, dir_okay=False),
                  help="Table spec as JSON or YAML: {columns: [...], key_columns: [...]}")
    @click.option("--template", help="Name of a template under plugins: datasette-llm-newsroom: extract: templates")
    @click.option("--model", "model", help="Chat model id (default: the configured extract model)")
    @click.option("--instructions", default="", help="Extra instructions for the model")
    @click.option("-c", "--config", "config", type=click.Path(exists=True, dir_okay=False),
                  help="datasette.yaml / metadata.yml with the plugin configuration")
    @click.option("--concurrency", default=None, type=click.IntRange(1, 32),
                  help="Model calls in flight at once [default: the model's concurrency setting, else 4]")
    @click.option("--max-bytes", default=DEFAULT_MAX_BYTES, show_default=True, type=int,
                  help="Largest file accepted")
    @click.option("--estimate", "estimate_only", is_flag=True,
                  help="Only print the estimated tokens and cost of the files still to do")
    def run_command(database, table, folder, schema, template, model, instructions, config, concurrency,
                    max_bytes, estimate_only):
        """Extract every file in FOLDER into TABLE of DATABASE.

        Files already done (same path and content) are skipped, so the command
        can be run again after an interruption or to pick up new files.
        """
        if schema and template:
            raise click.UsageError("Use --schema or --template, not both.")
        started = time.monotonic()
        try:
            summary = asyncio.run(_run(database, table, Path(folder), schema, template, model, instructions,
                                       config, concurrency, max_bytes, None, estimate_only))
        except (SchemaError, LLMSuiteError) as e:
            raise click.ClickException(str(e)) from None
        if estimate_only:
            cost = f"${summary['cost']:.4f}" if summary["cost_known"] else "unknown (no prices for this model)"
            click.echo(
                f"{summary['files']} file(s) to extract ({summary['skipped']} already done): about "
                f"{summary['input_tokens']:,} input and {summary['output_tokens']:,} output tokens, cost {cost}."
            )
            for problem in summary["problems"]:
                click.echo(f"  {problem}", err=True)
            return
        if summary["cost_known"]:
            cost = f"cost ${summary['cost']:.4f}"
        else:  # the call log has NULL cost: never print a made-up $0
            cost = (f"cost unknown (no prices for model {summary['model_id']}: set input_cost_per_mtok "
                    "and output_cost_per_mtok)")
        click.echo(
            f"{summary['done']} file(s) extracted, {summary['skipped']} already done, "
            f"{summary['failed']} failed, {summary['refused']} refused; {summary['rows']} rows written "
            f"({summary['invalid_rows']} invalid rows not written) in {time.monotonic() - started:.1f}s, "
            f"{cost}. Run id {summary['run_id']}."
        )
        for problem in summary["problems"]:
            click.echo(f"  {problem}", err=True)
        if summary["failed"]:
            raise SystemExit(1)

    from . import enrich_cli

    enrich_cli.register(llm_extract)

    @llm_extract.command(name="evaluate")
    @click.argument("gold", type=click.Path(exists=True, dir_okay=False))
    @click.option("--schema", "schema", type=click.Path(exists=True, dir_okay=False),
                  help="Table spec (default: every gold field as text)")
    @click.option("--model", "model", help="Chat model id")
    @click.option("--instructions", default="", help="Extra instructions for the model")
    @click.option("-c", "--config", "config", type=click.Path(exists=True, dir_okay=False),
                  help="datasette.yaml / metadata.yml with the plugin configuration")
    @click.option("--limit", type=int, help="Only the first N documents")
    @click.option("--concurrency", default=4, show_default=True, type=click.IntRange(1, 32))
    @click.option("--date-order", type=click.Choice(["dmy", "mdy"]),
                  help="How to read ambiguous gold dates like 01/02/2018")
    @click.option("--images", "use_images", is_flag=True,
                  help="Send each document's image (its \"image\" path) instead of its text; "
                  "documents without a readable image are left out")
    @click.option("--ocr", "use_ocr", is_flag=True,
                  help="Read each document's image with local OCR and send the text (implies --images): "
                  "any text model can then be evaluated on scans")
    @click.option("--json", "as_json", is_flag=True, help="Print the scores as JSON")
    def evaluate_command(gold, schema, model, instructions, config, limit, concurrency, date_order,
                         use_images, use_ocr, as_json):
        """Score extraction against GOLD.jsonl: per-field precision, recall, F1 and exact match."""
        from .evaluate import evaluate, infer_spec, load_gold

        docs = load_gold(gold, limit=limit)
        sources = None
        use_images = use_images or use_ocr
        if use_images:
            docs, sources = _image_documents(Path(gold), docs)
        if not docs:
            raise click.ClickException(f"{gold} has no documents" + (" with readable images." if use_images else "."))
        try:
            if schema:
                data = _read_structured(schema)
                if isinstance(data, dict):
                    instructions = instructions or data.pop("instructions", "")
                    data.pop("name", None)
                spec = validate_table_spec(data)
            else:
                spec = infer_spec(docs)

            async def go():
                from datasette_llm_core.gateway import llm_gateway

                from .settings import extract_settings

                ds = build_datasette(config)
                gateway = await llm_gateway(ds)
                ocr_limits = extract_settings(ds).ocr.limits()  # scans: the configured OCR limits
                with click.progressbar(length=len(docs), label="Evaluating", show_pos=True) as bar:
                    return await evaluate(gateway, spec, docs, model_id=model, instructions=instructions,
                                          concurrency=concurrency, actor={"id": "cli"},
                                          date_order=date_order, progress=bar.update, documents=sources,
                                          read_as="ocr" if use_ocr else "auto", ocr_limits=ocr_limits)

            report = asyncio.run(go())
        except (SchemaError, LLMSuiteError) as e:
            raise click.ClickException(str(e)) from None
        click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.format_table())
