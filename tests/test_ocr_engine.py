"""How the local OCR engine is set up (issue #15: <= 3 s a receipt page), and OCR's limits.

The engine is the real one (RapidOCR, PP-OCRv4 ONNX models); speed itself is measured by
``benchmarks/bench_ocr.py``, not here: these tests check that the settings it chose are the
ones the engine runs with, from the configuration to the model calls.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from datasette_llm_core.errors import ConfigError

from .test_extract_pages import copy_line, file_json, scan_pdf, scan_png, start

pytest.importorskip("rapidocr_onnxruntime")


def detection_input(settings, height: int, width: int) -> tuple[int, int]:
    """The size the engine's detector scales a page of this size to."""
    from datasette_llm_extract import ocr

    detector = ocr.engine(settings).text_det
    image = np.zeros((height, width, 3), dtype=np.uint8)
    return detector.get_preprocess(max(height, width))(image).shape[2:]


def test_detection_size_is_bounded_by_the_setting():
    from datasette_llm_extract import ocr

    # SROIE receipt scans 000 (463 x 1013) and 009 (604 x 1716), an A4 scan cut to the 2000 px cap
    assert max(detection_input(ocr.DEFAULT_SETTINGS, 1013, 463)) <= 960
    assert max(detection_input(ocr.DEFAULT_SETTINGS, 1716, 604)) <= 960
    assert max(detection_input(ocr.DEFAULT_SETTINGS, 2000, 1414)) <= 960
    # the settings before: RapidOCR ignores det_limit_side_len with limit_type "max" and
    # picks 960, 1500 or 2000 px by the page's size, so every page was detected at its own size
    assert max(detection_input(ocr.PREVIOUS_SETTINGS, 1716, 604)) == 1728
    assert max(detection_input(ocr.PREVIOUS_SETTINGS, 2000, 1414)) == 1984
    # a custom limit is obeyed
    custom = ocr.EngineSettings(detect_max_side=640)
    assert max(detection_input(custom, 2000, 1414)) <= 640


def test_engine_settings_reach_the_models_and_still_read_a_scan():
    from datasette_llm_extract import ocr

    settings = ocr.EngineSettings(detect_max_side=640, recognize_batch=2, threads=1)
    engine = ocr.engine(settings)
    assert engine is ocr.engine(settings)  # one engine per settings, reused
    assert engine.text_rec.rec_batch_num == 2 and engine.use_cls is False
    assert engine.text_det.postprocess_op.unclip_ratio == 1.8
    options = engine.text_rec.session.session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    layout, text = ocr.ocr_image(scan_png(), 0, settings)
    assert "4471" in text and "12.50" in text and len(layout.lines) == 4
    # the default engine: RapidOCR's batches of 6 were replaced, the classifier is off
    default = ocr.engine()
    assert default.text_rec.rec_batch_num == ocr.DEFAULT_SETTINGS.recognize_batch == 3
    assert default.use_cls is False


async def test_configured_ocr_settings_are_used_by_a_run(tmp_path, fake_models, scripted_model, monkeypatch):
    from datasette_llm_extract import ocr

    from .extract_web_helpers import make_ds

    configured = {"detect_max_side": 640, "detect_unclip": 2.0, "recognize_batch": 2, "threads": 1}
    ds = make_ds(tmp_path, extract={"ocr": configured})
    await ds.invoke_startup()
    used = []
    real = ocr.ocr_image

    def recording(source, page=0, settings=None):
        used.append(settings)
        return real(source, page, settings)

    monkeypatch.setattr(ocr, "ocr_image", recording)
    scripted_model.supports_images = scripted_model.supports_pdfs = False
    scripted_model.responder = copy_line("invoice")
    _, run = await start(ds, [file_json("scan.pdf", "application/pdf", scan_pdf(scan_png()))])
    assert run["status"] == "done", run
    assert used == [ocr.EngineSettings(**configured)]
    assert run["rows"][0]["values"]["total"] == 12.5


@pytest.mark.parametrize("bad", [{"recognize_batch": 0}, {"detect_max_side": -1}, {"threads": "many"},
                                 {"detect_unclip": 0.5}])
async def test_bad_ocr_engine_settings_are_refused_naming_the_key(tmp_path, bad):
    from datasette_llm_extract.settings import extract_settings

    from .extract_web_helpers import make_ds

    ds = make_ds(tmp_path, extract={"ocr": bad})
    with pytest.raises(ConfigError) as e:
        extract_settings(ds)
    assert f"ocr.{next(iter(bad))}" in str(e.value) and "extract" in str(e.value)


async def test_the_runs_ocr_time_limit_skips_the_remaining_pages_saying_so(monkeypatch):
    """``ocr: timeout`` (all pages of a run together), not only the per-page limit."""
    import time

    from datasette_llm_extract import ocr
    from datasette_llm_extract.documents import load_upload
    from datasette_llm_extract.pages import PAGE_BREAK, Line, PageLayout
    from datasette_llm_extract.reading import DocumentRead, OcrLimits, PageRead, read_documents

    def slow_ocr(source, page=0, settings=None):
        time.sleep(0.2 if page == 0 else 2.5)  # the first page is quick, the others slow
        text = f"page {page + 1}"
        return PageLayout(page=page, width=1, height=1, source="ocr",
                          lines=[Line(text, [0, 0, 1, 1], 0, len(text))]), text

    monkeypatch.setattr(ocr, "ocr_image", slow_ocr)
    pdf = io.BytesIO()
    pages = [Image.new("RGB", (60, 80), "white") for _ in range(3)]
    pages[0].save(pdf, "PDF", save_all=True, append_images=pages[1:])
    doc = load_upload("scan.pdf", "application/pdf", pdf.getvalue())
    started = time.monotonic()
    events = [e async for e in read_documents([doc], ["ocr"], OcrLimits(page_timeout=30, timeout=2))]
    assert time.monotonic() - started < 3.5  # stopped at the run's limit, not at 30 s a page
    reads = [e for e in events if isinstance(e, PageRead)]
    # progress: one event per page, in order, each saying what happened
    assert [(e.page, e.pages, e.source) for e in reads] == [(0, 3, "ocr"), (1, 3, "skipped"), (2, 3, "skipped")]
    for n, skipped in enumerate(reads[1:], 2):
        assert skipped.error == f"Page {n} was not read: OCR took longer than 2 seconds in all.", skipped.error
    done = events[-1]
    assert isinstance(done, DocumentRead) and done.skipped == [1, 2] and done.ocr_pages == 1
    assert doc.text == "page 1" + PAGE_BREAK + PAGE_BREAK  # the offsets of later pages hold


def test_the_command_line_uses_the_configured_ocr_settings(tmp_path, fake_models, scripted_model, monkeypatch):
    """`datasette llm-extract evaluate --ocr -c config` (and `run`) read scans as configured."""
    import json

    from click.testing import CliRunner
    from datasette.cli import cli

    from datasette_llm_extract import ocr

    from .test_extract_cli import SCHEMA, people_responder

    configured = {"detect_max_side": 640, "detect_unclip": 2.0, "recognize_batch": 2, "threads": 1}
    config = tmp_path / "datasette.yaml"
    config.write_text(json.dumps({"plugins": {"datasette-llm-newsroom": {
        "state_database": str(tmp_path / "state.db"), "defaults": {"extract": "scripted"},
        "extract": {"ocr": configured}}}}))
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    (tmp_path / "scans").mkdir()
    (tmp_path / "scans" / "ann.png").write_bytes(scan_png(["Ann is 40 years old"], size=(560, 120)))
    gold = tmp_path / "gold.jsonl"
    gold.write_text(json.dumps({"id": "ann", "image": "scans/ann.png", "text": "",
                                "gold": {"name": "Ann", "age": 40}}) + "\n")
    used = []
    real = ocr.ocr_image

    def recording(source, page=0, settings=None):
        used.append(settings)
        return real(source, page, settings)

    monkeypatch.setattr(ocr, "ocr_image", recording)
    scripted_model.supports_images = scripted_model.supports_pdfs = False
    scripted_model.responder = people_responder
    args = ["llm-extract", "evaluate", str(gold), "--schema", str(schema), "-c", str(config), "--ocr", "--json"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert used == [ocr.EngineSettings(**configured)]
    report = json.loads(result.output[result.output.index("{"):])
    assert report["fields"]["age"]["f1"] == 1.0, report

    used.clear()
    args = ["llm-extract", "run", str(tmp_path / "out.db"), "people", str(tmp_path / "scans"),
            "--schema", str(schema), "-c", str(config)]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert used == [ocr.EngineSettings(**configured)]
