"""Local OCR: text and line boxes of a scanned page, with no key and no network.

The engine is RapidOCR (``rapidocr-onnxruntime``, Apache-2.0) with the PP-OCRv4
detection and recognition models it ships inside its wheel (PaddleOCR,
Apache-2.0), run by onnxruntime on the CPU. Nothing is downloaded. One engine
is loaded per process on first use and calls are serialised (onnxruntime
already uses every core). Call ``ocr_image`` from a worker thread, never from
the event loop. No Datasette imports here.

How the engine is set up (``EngineSettings``, configurable under ``extract: ocr:``)
decides most of its speed; the defaults were chosen with ``benchmarks/bench_ocr.py``
on the shared receipt scans (docs/ocr-benchmark.md).
"""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass

from .pages import Line, PageLayout, box_from_points

INSTALL = 'pip install "rapidocr-onnxruntime==1.4.4"'
#: Longest side, in pixels, an image is scaled down to before OCR.
MAX_SIDE = 2000


@dataclass(frozen=True)
class EngineSettings:
    """How the OCR engine is set up. One engine per distinct settings, per process."""

    #: Detection runs on the page scaled down to at most this many pixels on its longest
    #: side (recognition still crops the lines from the full page). 0 leaves the size to
    #: RapidOCR, which, whatever ``det_limit_side_len`` says, caps a page at 960, 1500 or
    #: 2000 px by its size: a 604 x 1716 receipt was detected whole, at 1728 px.
    detect_max_side: int = 960
    #: How far each detected line's box is grown before the line is cropped for reading
    #: (RapidOCR's default 1.6 cut the decimal point of "14.10" on a receipt detected at 960 px).
    detect_unclip: float = 1.8
    #: Text lines recognised per onnxruntime call. Lines are sorted by width and each
    #: batch is padded to its widest, so small batches waste less (RapidOCR's default: 6).
    recognize_batch: int = 3
    #: onnxruntime threads per model call; 0: its default (one per core).
    threads: int = 0
    #: RapidOCR's 180-degree line classifier: scans come upright, it costs a fifth of the time.
    angle_classifier: bool = False


#: The product default (see EngineSettings).
DEFAULT_SETTINGS = EngineSettings()
#: The settings used before the benchmark tuned them (RapidOCR's sizing, batches of 6);
#: ``benchmarks/bench_ocr.py`` measures them beside the default in the same run.
PREVIOUS_SETTINGS = EngineSettings(detect_max_side=0, detect_unclip=1.6, recognize_batch=6)

_engines: dict[EngineSettings, object] = {}
_engine_lock = threading.Lock()
OCR_LOCK = threading.Lock()


class OcrUnavailable(RuntimeError):
    """The OCR engine cannot be loaded; the message has the install command."""


def available() -> bool:
    try:
        import rapidocr_onnxruntime  # noqa: F401
    except Exception:
        return False
    return True


def engine(settings: EngineSettings | None = None):
    settings = settings or DEFAULT_SETTINGS
    with _engine_lock:
        if settings not in _engines:
            _engines[settings] = _load(settings)
        return _engines[settings]


def _load(settings: EngineSettings):
    try:
        from rapidocr_onnxruntime import RapidOCR
        from rapidocr_onnxruntime.ch_ppocr_det.utils import DetPreProcess
        from rapidocr_onnxruntime.utils import infer_engine
    except Exception as e:
        raise OcrUnavailable(f"Local OCR is not installed ({type(e).__name__}): {INSTALL}") from None
    # onnxruntime's worker threads spin while waiting by default: on a server that
    # shares its cores with Datasette that burns CPU the web requests need
    sessions = infer_engine.OrtInferSession
    original = sessions.__dict__["_init_sess_opts"]

    def no_spinning(config):
        options = original.__func__(config)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        return options

    options = {"use_cls": settings.angle_classifier, "rec_batch_num": settings.recognize_batch,
               "det_limit_type": "max", "det_unclip_ratio": settings.detect_unclip}
    if settings.threads:
        options["intra_op_num_threads"] = settings.threads
    sessions._init_sess_opts = staticmethod(no_spinning)
    try:
        loaded = RapidOCR(print_verbose=False, **options)
    finally:
        sessions._init_sess_opts = original
    if settings.detect_max_side:
        detector = loaded.text_det
        side = settings.detect_max_side
        # RapidOCR picks the detection size per page (TextDetector.get_preprocess); this
        # one engine's detector uses one limit instead
        detector.get_preprocess = lambda _longest: DetPreProcess(side, "max", detector.mean, detector.std)
    return loaded


def _as_image(source):
    from PIL import Image

    if isinstance(source, (bytes, bytearray)):
        image = Image.open(io.BytesIO(source))
        image.load()
    else:
        image = source
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)  # an animated GIF: its first frame
    image = image.convert("RGB")
    longest = max(image.size)
    if longest > MAX_SIDE:
        ratio = MAX_SIDE / longest
        image = image.resize((max(1, round(image.width * ratio)), max(1, round(image.height * ratio))))
    return image


def ocr_image(source, page: int = 0, settings: EngineSettings | None = None) -> tuple[PageLayout, str]:
    """OCR one page (image bytes or a PIL image): its layout and its text.

    Items on the same visual row (a receipt's "TOTAL" and "9.00") go on one
    text line, joined by a space; each item keeps its own box, and
    ``Line.start``/``end`` are its offsets in the returned page text.
    """
    image = _as_image(source)
    width, height = image.size
    started = time.perf_counter()
    with OCR_LOCK:
        result, _ = engine(settings)(image)
    items = []
    for points, text, _score in result or []:
        text = (text or "").strip()
        if text:
            ys = [p[1] for p in points]
            items.append((min(ys), max(ys), min(p[0] for p in points), text, points))
    rows: list[list[tuple]] = []
    for item in sorted(items, key=lambda i: ((i[0] + i[1]) / 2, i[2])):
        centre = (item[0] + item[1]) / 2
        if rows:
            last = rows[-1]
            top = sum(i[0] for i in last) / len(last)
            bottom = sum(i[1] for i in last) / len(last)
            if top <= centre <= bottom:
                last.append(item)
                continue
        rows.append([item])
    lines: list[Line] = []
    parts: list[str] = []
    offset = 0
    for r, row in enumerate(rows):
        if r:
            parts.append("\n")
            offset += 1
        for n, (_, _, _, text, points) in enumerate(sorted(row, key=lambda i: i[2])):
            if n:
                parts.append(" ")
                offset += 1
            lines.append(Line(text, box_from_points(points, width, height), offset, offset + len(text)))
            parts.append(text)
            offset += len(text)
    layout = PageLayout(page=page, width=float(width), height=float(height), source="ocr" if lines else "none",
                        lines=lines, seconds=round(time.perf_counter() - started, 3))
    return layout, "".join(parts)
