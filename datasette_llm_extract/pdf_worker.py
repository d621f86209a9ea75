"""Reads one PDF's text layer in a child process (``documents.pdf_text`` runs this file).

Run as a script, not imported: the child loads only pypdf. The PDF comes on
stdin; argv[1] is the budget of decompressed page content in bytes, argv[2]
a memory cap in bytes. One JSON object goes to stdout:
``{"ok": true, "pages": [text, ...]}`` or ``{"ok": false, "error": kind, ...}``
with kind ``encrypted``, ``too_big`` or ``broken``. The parent kills the
child when it runs past its time budget.
"""

import io
import json
import sys


def main() -> None:
    budget = int(sys.argv[1])
    memory = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    if memory:
        try:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        except (ImportError, ValueError, OSError):
            pass
    data = sys.stdin.buffer.read()
    out = sys.stdout
    try:
        from pypdf import PdfReader

        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            try:
                reader.decrypt("")
            except Exception:  # noqa: BLE001
                json.dump({"ok": False, "error": "encrypted"}, out)
                return
        # Decompressing is fast; interpreting the content is what takes time,
        # so the whole document's size is checked before any text is extracted.
        total = 0
        for page in reader.pages:
            contents = page.get_contents()
            total += len(contents.get_data()) if contents is not None else 0
            if total > budget:
                json.dump({"ok": False, "error": "too_big"}, out)
                return
        pages = [page.extract_text() or "" for page in reader.pages]
    except MemoryError:
        json.dump({"ok": False, "error": "too_big"}, out)
        return
    except Exception as e:  # noqa: BLE001 - pypdf raises many kinds on broken files
        json.dump({"ok": False, "error": "broken", "detail": type(e).__name__}, out)
        return
    json.dump({"ok": True, "pages": pages}, out)


if __name__ == "__main__":
    main()
