"""The README's extraction section matches the code: config keys parse, routes exist."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from datasette_llm_extract.settings import ExtractSettings
from datasette_llm_extract.views import routes

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
SECTION = README.split("## Extracting data into tables", 1)[1].split("\n## ", 1)[0]


def test_documented_extract_keys_are_the_defaults():
    m = re.search(r"<!-- docs-test: extract-web-config -->\s*\n```yaml\n(.*?)\n```", SECTION, re.S)
    assert m, "README has no extract-web-config block"
    extract = yaml.safe_load(m.group(1))["plugins"]["datasette-llm-newsroom"]["extract"]
    parsed = ExtractSettings.model_validate(extract)
    assert set(extract) == set(ExtractSettings.model_fields)  # every key documented, none invented
    defaults = ExtractSettings()
    for key, value in extract.items():
        if key != "templates":
            default = getattr(defaults, key)
            default = default.model_dump() if hasattr(default, "model_dump") else default  # ocr: {...}
            assert default == value, key
    assert parsed.templates[0].name == "Court filings"


def test_documented_routes_exist():
    paths = re.findall(r"`(?:GET |POST )?(/-/[^` ?(]+)", SECTION)
    assert len(paths) >= 10
    compiled = [re.compile(pattern) for pattern, _view in routes()]
    examples = {"<db>": "news", "<table>": "donors", "<run>": "0123456789abcdef", "<id>": "12"}
    for path in paths:
        for key, value in examples.items():
            path = path.replace(key, value)
        assert any(r.match(path.strip()) for r in compiled), path
