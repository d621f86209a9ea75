"""``register_enrichments``: this suite's "Extract into new columns" in datasette-enrichments' menu.

When datasette-enrichments (0.5.1, which runs on Datasette 0.65: it calls
``datasette.permission_allowed``, gone from 1.0 alphas) is installed, its
"Enrich selected data" page lists this enrichment. Its form takes the source
columns, the new columns, instructions and the sample size; submitting it starts
the same job as the table action (``enrich_jobs.create``): the sample stops for
review on the suite's job page, listed on ``/-/llm-extract``.
"""

from __future__ import annotations

from urllib.parse import parse_qs

try:  # optional: pip install 'datasette-llm-newsroom[enrichments]'
    from datasette_enrichments import Enrichment
except ImportError:  # pragma: no cover - exercised where the package is absent
    Enrichment = None

SLUG = "llm-newsroom-columns"
NAME = "Extract into new columns (LLM, with review)"


def parse_columns(text: str) -> list[dict]:
    """``name: type: description`` per line (type and description optional) -> column dicts."""
    columns = []
    for line in (text or "").splitlines():
        if not line.strip():
            continue
        name, _, rest = line.partition(":")
        ctype, _, description = rest.partition(":")
        columns.append({"name": name.strip(), "type": ctype.strip() or "text", "description": description.strip()})
    return columns


def enrichments(datasette) -> list:
    if Enrichment is None:
        return []
    return [SuiteEnrichment()]


if Enrichment is not None:

    class SuiteEnrichment(Enrichment):
        slug = SLUG
        name = NAME
        description = ("A model reads each row's source columns and fills new typed columns; every value keeps "
                       "its quote, a sample is reviewed first, and writes can be undone.")

        async def get_config_form(self, datasette, db, table):
            from wtforms import Form, IntegerField, SelectMultipleField, TextAreaField
            from wtforms.validators import DataRequired, NumberRange

            from .enrich_jobs import table_columns

            columns = await table_columns(db, table)

            class ConfigForm(Form):
                source_columns = SelectMultipleField("Source columns the model reads",
                                                     choices=[(c, c) for c in columns], validators=[DataRequired()])
                new_columns = TextAreaField(
                    "New columns", validators=[DataRequired()],
                    description="One per line: name: type: description (types: text, integer, number, date, "
                                "boolean, choice)")
                instructions = TextAreaField("Instructions")
                sample_size = IntegerField("Rows to review first", default=20, validators=[NumberRange(min=0)])

            return ConfigForm

        async def enrich_batch(self, datasette, db, table, rows, pks, config, job_id):  # pragma: no cover
            raise NotImplementedError("runs as the suite's own job (enqueue)")

        async def enqueue(self, datasette, db, table, filter_querystring, config, actor_id=None):
            """Start the suite's job instead of a datasette-enrichments one; its id comes back."""
            from datasette import Forbidden
            from datasette.utils.asgi import BadRequest

            from .enrich_jobs import JobError, JobRequest, create
            from .enrich_views import check_may_enrich

            actor = {"id": actor_id} if actor_id else None
            args = {k: (v if len(v) > 1 else v[0]) for k, v in parse_qs(filter_querystring or "").items()
                    if k not in ("_enrichment", "_sort", "_enrichment_job")}
            try:
                await check_may_enrich(datasette, actor, db.name, table, where="_where" in args)
                return await create(datasette, actor, JobRequest(
                    database=db.name, table=table, source_columns=list(config.get("source_columns") or []),
                    spec={"columns": parse_columns(config.get("new_columns") or "")},
                    instructions=config.get("instructions") or "", selection={"args": args},
                    sample_size=int(config.get("sample_size") or 0), write_mode="review"))
            except JobError as e:  # a clear page, nothing started
                raise (Forbidden if e.status == 403 else BadRequest)(str(e)) from None
