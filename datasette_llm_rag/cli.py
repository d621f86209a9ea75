"""``datasette llm-rag index`` and ``datasette llm-rag evaluate``.

``index`` builds or refreshes a database's sidecar through the same gateway
the server uses (so embedding calls are logged), with a progress bar.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import os
from pathlib import Path

import click

from datasette_llm_core.errors import LLMSuiteError


def _load_file(path: str | None) -> dict:
    if not path:
        return {}
    text = Path(path).read_text(encoding="utf-8")
    try:
        if path.endswith((".yml", ".yaml")):
            import yaml

            return yaml.safe_load(text) or {}
        return json.loads(text)
    except Exception as e:  # yaml.YAMLError, json.JSONDecodeError
        detail = " ".join(str(e).split())
        raise click.ClickException(f"Cannot read {path}: {detail}. Fix its syntax and try again.") from None


def _make_datasette(db_path: str, metadata: dict, config: dict, immutable: bool):
    from datasette.app import Datasette

    params = inspect.signature(Datasette.__init__).parameters
    kwargs: dict = {"metadata": metadata}
    if "config" in params:
        kwargs["config"] = config
    elif config.get("plugins"):  # 0.65 reads plugin settings from metadata
        merged = dict(metadata)
        merged.setdefault("plugins", {}).update(config["plugins"])
        kwargs["metadata"] = merged
    if immutable:
        return Datasette([], immutables=[db_path], **kwargs)
    return Datasette([db_path], **kwargs)


async def _run_index(db_path, db_name, tables, rebuild, verify_only, metadata, config, sidecar, immutable, bar,
                     vectors=None, seeds_out=None):
    from datasette_llm_core.gateway import llm_gateway

    from .indexer import refresh_index, verify
    from .ragconfig import rag_config_for

    ds = _make_datasette(db_path, metadata, config, immutable)
    await ds.invoke_startup()
    from .indexer import sidecar_path
    from .modelchoice import gateway_choice

    rag = rag_config_for(ds)
    gw = await llm_gateway(ds)
    # An index built with the previous default model keeps it until --rebuild.
    side = sidecar or sidecar_path(db_path, db_name, rag)
    model = gw.get_embedding_model(gateway_choice(gw, rag, db_name, side, rebuild=rebuild))
    if verify_only:
        return await verify(db_path, db_name, rag, model, sidecar=sidecar, immutable=immutable)
    embed = functools.partial(gw.embed, purpose="embed", model_id=model.model_id, ref=f"index:{db_name}")
    if vectors:
        from .seedvectors import load_seed, seeded_embed

        seeds = load_seed(vectors, model.model_id)
        if seeds is None:
            click.echo(f"{vectors} holds vectors of another model than {model.model_id}: not used.", err=True)
        else:
            embed = seeded_embed(embed, seeds)
            if seeds_out is not None:
                seeds_out.append(seeds)
    return await refresh_index(
        db_path,
        db_name,
        rag,
        model,
        embed=embed,
        sidecar=sidecar,
        tables=tables or None,
        rebuild=rebuild,
        immutable=immutable,
        progress=bar,
    )


def register(cli: click.Group) -> None:
    """Add the ``llm-rag`` command group to Datasette's CLI."""

    @cli.group(name="llm-rag")
    def llm_rag():
        "Build and check the search indexes used for question answering"

    @llm_rag.command(name="index")
    @click.argument("db_path", type=click.Path(exists=True, dir_okay=False))
    @click.option("--table", "tables", multiple=True, help="Only this table (repeatable)")
    @click.option("--rebuild", is_flag=True, help="Start from an empty index (e.g. new model)")
    @click.option("--verify", "verify_only", is_flag=True, help="Report stale/missing rows, change nothing")
    @click.option("-m", "--metadata", type=click.Path(exists=True, dir_okay=False), help="metadata.yml/json")
    @click.option("-c", "--config", type=click.Path(exists=True, dir_okay=False), help="datasette.yaml/json")
    @click.option("--sidecar", type=click.Path(dir_okay=False), help="Sidecar path (default: beside DB)")
    @click.option("--name", "db_name", help="Database name (default: file name without extension)")
    @click.option("-i", "--immutable", is_flag=True, help="Open the database as immutable")
    @click.option("--vectors", type=click.Path(exists=True, dir_okay=False),
                  help="Vectors computed earlier by the same model (.npz, see seedvectors.py; the demo's): "
                  "texts found there are not embedded again, after a sample was re-embedded and matched")
    def index(db_path, tables, rebuild, verify_only, metadata, config, sidecar, db_name, immutable, vectors):
        "Build or refresh the search index of DB_PATH (only new or changed rows are embedded)"
        db_name = db_name or Path(db_path).stem
        state: dict = {}
        seeds: list = []

        def progress(done: int, total: int) -> None:
            if "bar" not in state:
                if total == 0:
                    return
                state["bar"] = click.progressbar(length=total, label="Embedding", file=click.get_text_stream("stderr"))
                state["bar"].__enter__()
                state["done"] = 0
            state["bar"].update(done - state["done"])
            state["done"] = done

        try:
            result = asyncio.run(
                _run_index(
                    os.path.abspath(db_path), db_name, list(tables), rebuild, verify_only,
                    _load_file(metadata), _load_file(config), sidecar, immutable, progress,
                    vectors, seeds,
                )
            )
        except LLMSuiteError as e:
            raise click.ClickException(str(e)) from None
        finally:
            if "bar" in state:
                state["bar"].__exit__(None, None, None)
        if verify_only:
            click.echo(
                f"stale: {result.stale}  missing: {result.missing}  orphaned: {result.orphaned}  "
                f"model ok: {'yes' if result.model_ok else 'no'} "
                f"(index: {result.indexed_model}, configured: {result.configured_model})  "
                f"entries: {result.entries}"
            )
            if not result.ok:
                raise SystemExit(1)
            return
        stored = ""
        if seeds:
            if seeds[0].verified is False:
                click.echo(f"{vectors}: {seeds[0].reason}", err=True)
            stored = f", {seeds[0].used} of them from {os.path.basename(vectors)}"
        click.echo(
            f"{db_name}: {result.added} added, {result.updated} updated, {result.deleted} deleted, "
            f"{result.unchanged} unchanged ({result.rows} rows read, {result.embedded} texts embedded"
            f"{stored}) in {result.seconds:.2f}s -> {result.sidecar}"
        )

    @llm_rag.command(name="evaluate")
    @click.argument("corpus", type=click.Path(exists=True, dir_okay=False))
    @click.argument("queries", type=click.Path(exists=True, dir_okay=False))
    @click.argument("qrels", type=click.Path(exists=True, dir_okay=False))
    @click.option("--limit", type=int, help="Only the first N judged queries")
    @click.option("--cache", type=click.Path(dir_okay=False),
                  help="Embedding cache file (.npz), written as it goes")
    @click.option("--model", "model_id", help="Local embedding model (default: the default for new indexes)")
    @click.option("--rerank/--no-rerank", default=True, show_default=True,
                  help="Also score hybrid + cross-encoder rerank")
    @click.option("--rerank-depth", type=int, default=12, show_default=True)
    @click.option("--rrf-k", type=int, default=None,
                  help="Fusion constant (default: the model's, as the question box uses it)")
    @click.option("--fts-weight", type=float, default=None,
                  help="Weight of the full-text ranking in the fusion, vector 1 (default: the model's)")
    @click.option("--depth", type=int, default=100, show_default=True, help="Results per method fused")
    def evaluate_cmd(corpus, queries, qrels, limit, cache, model_id, rerank, rerank_depth, rrf_k,
                     fts_weight, depth):
        """Retrieval quality (nDCG@10, recall@10/100, MRR@10) on a BEIR-format data set

        QRELS may be separated by tabs or spaces, with or without a header line:
        3 columns (query-id corpus-id score) or TREC's 4 (query-id 0 corpus-id score).
        """
        from datasette_llm_core.embeddings import local_model

        from .evaluate import CachingEmbedder, EvalSettings, evaluate, format_table, read_dataset
        from .fusion import fusion_for
        from .rerank import RerankSettings, table_weights_for, vector_weight_for

        err = click.get_text_stream("stderr")
        state: dict = {}

        def progress(stage: str, done: int, total: int) -> None:
            if state.get("stage") != stage:
                state.update(stage=stage, shown=-1)
            step = max(1, total // 20)
            if total and (done == total or done - state["shown"] >= step):
                state["shown"] = done
                click.echo(f"  {stage}: {done:,}/{total:,}", file=err)

        try:
            _c, _q, _r, read = read_dataset(corpus, queries, qrels)
            click.echo(f"Read {read.summary()}")
            model = local_model(model_id)
            rrf_k, (_vw, fts_weight) = fusion_for(model.model_id, rrf_k, fts_weight)
            embedder = CachingEmbedder(model, cache)
            if cache:
                click.echo(f"{model.model_id}: {embedder.cached_at_start:,} vectors in the cache {cache}")
            reranker = None
            if rerank:
                from datasette_llm_core.embeddings.cross_encoder import CrossEncoder

                reranker = CrossEncoder()
                reranker.ensure_ready()
            [result] = evaluate(
                corpus, queries, qrels, embedder, limit=limit, progress=progress,
                settings_list=[EvalSettings(rrf_k=rrf_k, depth=depth, weights=(1.0, fts_weight))],
                reranker=reranker, rerank_settings=RerankSettings(
                    depth=rerank_depth, vector_weight=vector_weight_for(model.model_id, None),
                    table_weights=table_weights_for(model.model_id, None)),
            )
        except LLMSuiteError as e:
            raise click.ClickException(str(e)) from None
        finally:
            if "embedder" in locals():
                embedder.save()
        click.echo(
            f"{result.documents:,} documents, {result.queries:,} queries scored; model {model.model_id}; "
            f"rrf_k={rrf_k} fts weight={fts_weight} depth={depth}"
            f"{f'; rerank depth {rerank_depth}' if rerank else ''}; indexed in {result.index_seconds:.1f}s "
            f"({embedder.embedded:,} texts embedded)"
        )
        click.echo(format_table(result))
