"""``datasette llm-extract enrich DB TABLE``: fill new columns of a table's rows from the shell.

    datasette llm-extract enrich news.db complaints --source narrative --template Fines \\
        --where "borough = 'Bronx'" -c datasette.yaml --since-last

The job is the same as the web page's (``enrich_jobs``), kept in the state
database, written directly (the operator's command, like ``run``). Running the
same command again after an interruption resumes the unfinished job; with
``--since-last`` only rows whose rowid is above the largest one an earlier
finished job of that template selected on that table are run.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import click

from datasette_llm_core.errors import LLMSuiteError

from .cli import _read_structured, build_datasette


def _spec(ds, schema: str | None, template: str | None) -> tuple[dict, str, str]:
    """(spec, template instructions, template key for --since-last)."""
    if bool(schema) == bool(template):
        raise click.UsageError("Give the new columns with --template NAME or --schema FILE (one of them).")
    if schema:
        data = _read_structured(schema)
        instructions = data.pop("instructions", "") if isinstance(data, dict) else ""
        if isinstance(data, dict):
            data.pop("name", None)
        return data, instructions or "", f"schema:{Path(schema).name}"
    from .settings import extract_settings

    for t in extract_settings(ds).templates:
        if t.name == template:
            return {"columns": t.columns}, t.instructions, template
    names = ", ".join(t.name for t in extract_settings(ds).templates) or "none configured"
    raise click.ClickException(f"No template named {template!r} (templates: {names}).")


def _url_columns(values) -> dict | None:
    """``--url-column scan:image`` (or ``filing:pdf``) as {column: kind}."""
    from .enrich import URL_KINDS

    out = {}
    for value in values or ():
        name, _, kind = value.rpartition(":")
        if not name or kind not in URL_KINDS:
            raise click.BadParameter(f"{value!r}: give COLUMN:image or COLUMN:pdf.", param_hint="--url-column")
        out[name] = kind
    return out or None


async def _enrich(db_path, table, source, where, template, schema, instructions, model, config, limit,
                  since_last, max_cost, estimate_only, batch, url_columns=None) -> dict:
    from datasette.database import Database

    from datasette_llm_core.state import state_db

    from . import enrich_jobs as jobs
    from . import enrich_store as store

    if not os.path.exists(db_path):
        raise click.ClickException(f"There is no database file {db_path}: check the path.")
    ds = build_datasette(config)
    name = Path(db_path).stem
    ds.add_database(Database(ds, path=str(db_path), is_mutable=True), name=name)
    spec, template_instructions, key = _spec(ds, schema, template)
    req = jobs.JobRequest(database=name, table=table, source_columns=list(source), spec=spec,
                          instructions=instructions or template_instructions, model_id=model,
                          selection={"where": where} if where else {}, row_limit=limit, sample_size=0,
                          write_mode="direct", max_cost=max_cost, template=key, since_last=since_last,
                          batch=batch, url_columns=url_columns)
    if estimate_only:
        return {"estimate": await jobs.estimate(ds, req)}
    state = await state_db(ds)
    selection = dict(req.selection)
    if since_last:
        mark = await store.high_water(state, name, table, key)
        if mark is not None:
            selection["after"] = mark
    job = await store.unfinished_job(state, name, table, key, selection)
    resumed = job is not None
    if job is None:
        try:
            job_id = await jobs.create(ds, {"id": "cli"}, req, start=False)
        except jobs.JobError as e:
            if since_last and selection.get("after") is not None and str(e).startswith("No rows match"):
                return {"message": f"No new rows in {table} since the last run of {key}: nothing to do."}
            raise
        job = await store.get_job(state, job_id)
    if batch or (job["batch"] is not None):
        from . import enrich_batch

        return await enrich_batch.run_batch_cli(ds, job, echo=click.echo)
    left = job["rows_total"] - job["rows_done"] - job["rows_failed"]
    with click.progressbar(length=job["rows_total"], label="Enriching", show_pos=True, show_eta=True) as bar:
        bar.update(job["rows_total"] - left)
        final = await jobs.run_in_foreground(
            ds, job["id"], {"id": "cli"}, from_status={"pending", "running", "paused", "failed", "interrupted"},
            progress=lambda _: bar.update(1), wait=jobs.lease_for(ds) + 2)
    return {"job": final, "resumed": resumed}


def register(group) -> None:
    @group.command(name="enrich")
    @click.argument("database", type=click.Path(dir_okay=False))
    @click.argument("table")
    @click.option("--source", "source", multiple=True, required=True,
                  help="Column the model reads (repeat for several)")
    @click.option("--where", help="SQL condition selecting the rows, e.g. \"borough = 'Bronx'\"")
    @click.option("--template", help="Template under plugins: datasette-llm-newsroom: extract: templates")
    @click.option("--schema", type=click.Path(exists=True, dir_okay=False),
                  help="The new columns as JSON or YAML: {columns: [...], instructions: ...}")
    @click.option("--instructions", default="", help="Extra instructions for the model")
    @click.option("--model", help="Chat model id (default: the configured extract model)")
    @click.option("-c", "--config", type=click.Path(exists=True, dir_okay=False),
                  help="datasette.yaml / metadata.yml with the plugin configuration")
    @click.option("--limit", type=click.IntRange(1), help="At most this many rows")
    @click.option("--since-last", is_flag=True,
                  help="Only rows added since the last finished run of this template on this table (rowid)")
    @click.option("--max-cost", type=float, help="Budget of the job in USD: it pauses when reached")
    @click.option("--estimate", "estimate_only", is_flag=True, help="Only print the rows, tokens and cost")
    @click.option("--batch", is_flag=True,
                  help="Send the rows through the provider's batch API (OpenAI, Anthropic): half the price, "
                  "results within 24 h; run the command again to collect them")
    @click.option("--url-column", "url_column", multiple=True, metavar="COLUMN:image|pdf",
                  help="A source column whose https URLs are images or PDFs, sent by URL for the model's "
                  "provider to fetch (URLs ending .jpg/.png/.gif/.webp/.pdf are sent so anyway)")
    def enrich_command(database, table, source, where, template, schema, instructions, model, config, limit,
                       since_last, max_cost, estimate_only, batch, url_column):
        """Fill new columns of TABLE's rows in DATABASE: the model reads the --source columns of each row.

        Resumable: run the same command again after an interruption and it goes on
        with the rows left. Values are written directly, each with its quote, the
        model and the prompt version kept in the state database (undo on the job page).
        """
        from .enrich_jobs import JobError

        try:
            out = asyncio.run(_enrich(database, table, source, where, template, schema, instructions, model,
                                      config, limit, since_last, max_cost, estimate_only, batch,
                                      _url_columns(url_column)))
        except JobError as e:
            raise click.ClickException(str(e)) from None
        except LLMSuiteError as e:
            raise click.ClickException(str(e)) from None
        if "estimate" in out:
            e = out["estimate"]
            cost = f"${e['cost']:.4f}" if e["cost"] is not None else "unknown (no prices for this model)"
            click.echo(f"{e['rows']} row(s) selected: about {e['input_tokens']:,} input and "
                       f"{e['output_tokens']:,} output tokens, cost {cost}.")
            return
        if "message" in out:
            click.echo(out["message"])
            if out.get("exit"):
                raise SystemExit(out["exit"])
            return
        job = out["job"]
        cost = f"${job['cost']:.4f}" if job["cost"] is not None else "unknown (no prices for this model)"
        click.echo(f"{'Resumed job' if out['resumed'] else 'Job'} {job['id']}: {job['status']}; "
                   f"{job['rows_done']} row(s) answered, {job['rows_failed']} failed, {job['rows_written']} "
                   f"written of {job['rows_total']}; cost {cost}.")
        if job["error"]:
            click.echo(job["error"], err=True)
        if job["status"] != "done":
            raise SystemExit(1)
        if job["rows_failed"]:
            click.echo(f"{job['rows_failed']} row(s) failed: see the job page "
                       f"/-/llm-extract/enrich/jobs/{job['id']}.", err=True)
            raise SystemExit(1)
