"""Table specs: what the journalist wants extracted, validated and turned into models.

A ``TableSpec`` lists the columns (name, type, nullable, description, choices)
and the natural key. From it we derive the pydantic model that validates each
extracted row, the JSON schema sent to the model as structured output, and the
SQLite column types of the target table. No Datasette imports here.
"""

from __future__ import annotations

import datetime as _dt
import re
import unicodedata
from typing import Any, Literal, Optional

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
)
from typing_extensions import Annotated

ColumnType = Literal["text", "integer", "number", "date", "boolean", "choice"]
COLUMN_TYPES: tuple[str, ...] = ("text", "integer", "number", "date", "boolean", "choice")
MAX_NAME_LENGTH = 64
MAX_COLUMNS = 100
#: Longest text value accepted from the model for one cell.
MAX_TEXT_VALUE = 20_000
RESERVED_PREFIXES = ("_llm", "rowid")
QUOTE_FIELD = "source_quote"
#: In a re-ask answer: the id of the row a corrected row replaces (no column may be named so:
#: names starting with "_llm" are reserved).
ROW_ID_FIELD = "_llm_row_id"

SQLITE_TYPES = {
    "text": "TEXT",
    "integer": "INTEGER",
    "number": "REAL",
    "date": "TEXT",
    "boolean": "INTEGER",
    "choice": "TEXT",
}


class SchemaError(ValueError):
    """The table spec is not usable; the message says what to fix."""


class ColumnSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    type: ColumnType = "text"
    nullable: bool = True
    description: str = ""
    choices: list[str] = []


class TableSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    columns: list[ColumnSpec]
    #: Natural key: rows with equal values here are the same record.
    key_columns: list[str] = []
    #: Whether the key becomes the SQLite primary key of a new table.
    primary_key: bool = False

    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> ColumnSpec:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)


# --- validation of the spec itself ------------------------------------------

def _name_problem(name: Any) -> str | None:
    if not isinstance(name, str) or not name:
        return "a column has no name: give every column a name"
    if name != name.strip():
        return f"column name {name!r} starts or ends with a space: remove it"
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in name):
        return f"column name {name!r} contains control characters: use letters, digits, spaces or _"
    if len(name) > MAX_NAME_LENGTH:
        return f"column name {name[:20]!r}... is longer than {MAX_NAME_LENGTH} characters: shorten it"
    lowered = name.lower()
    for prefix in RESERVED_PREFIXES:
        if lowered.startswith(prefix):
            return f"column name {name!r} is reserved (names starting with {prefix!r} are used internally): rename it"
    if lowered == QUOTE_FIELD:
        return f"column name {name!r} is reserved for the supporting quote: rename it"
    return None


def validate_table_spec(data: Any) -> TableSpec:
    """Parse and check a table spec (dict, JSON-like or ``TableSpec``).

    Raises ``SchemaError`` with every problem found, each saying what to fix.
    """
    if isinstance(data, TableSpec):
        data = data.model_dump()
    if isinstance(data, list):  # a bare list of columns
        data = {"columns": data}
    if not isinstance(data, dict):
        raise SchemaError("The schema must be an object with a \"columns\" list.")
    problems: list[str] = []
    columns = data.get("columns")
    if not isinstance(columns, list) or not columns:
        raise SchemaError("The schema has no columns: add at least one column.")
    if len(columns) > MAX_COLUMNS:
        raise SchemaError(f"The schema has {len(columns)} columns; the limit is {MAX_COLUMNS}.")
    seen: dict[str, str] = {}
    cleaned = []
    for i, col in enumerate(columns, 1):
        if isinstance(col, str):
            col = {"name": col}
        if not isinstance(col, dict):
            problems.append(f"column {i} is not an object with a name and type")
            continue
        name = col.get("name")
        problem = _name_problem(name)
        if problem:
            problems.append(problem)
            continue
        folded = name.casefold()
        if folded in seen:
            problems.append(
                f"column name {name!r} is used twice (names are compared ignoring case, "
                f"it clashes with {seen[folded]!r}): rename one of them"
            )
            continue
        seen[folded] = name
        ctype = col.get("type", "text") or "text"
        if ctype not in COLUMN_TYPES:
            problems.append(
                f"column {name!r} has unknown type {ctype!r}: use one of {', '.join(COLUMN_TYPES)}"
            )
            continue
        choices = col.get("choices") or []
        if isinstance(choices, str):
            choices = [c.strip() for c in choices.split(",")]
        choices = [str(c).strip() for c in choices if str(c).strip()]
        if ctype == "choice" and not choices:
            problems.append(f"column {name!r} is a choice column without choices: list the allowed values")
            continue
        if len(set(choices)) != len(choices):
            problems.append(f"column {name!r} lists the same choice twice: remove the duplicate")
            continue
        try:
            cleaned.append(
                ColumnSpec(
                    name=name,
                    type=ctype,
                    nullable=bool(col.get("nullable", True)),
                    description=str(col.get("description") or ""),
                    choices=choices if ctype == "choice" else [],
                )
            )
        except ValidationError as e:
            problems.append(f"column {name!r}: {e.errors()[0]['msg']}")
    names = {c.name for c in cleaned}
    keys = data.get("key_columns") or []
    if isinstance(keys, str):
        keys = [keys]
    for key in keys:
        if key not in names and not any(p.startswith(f"column name {key!r}") for p in problems):
            problems.append(f"key column {key!r} is not one of the columns: pick key columns from the list")
    unknown = set(data) - {"columns", "key_columns", "primary_key"}
    if unknown:
        problems.append(f"unknown schema fields {', '.join(sorted(unknown))}: remove them")
    if problems:
        raise SchemaError("Please fix the schema: " + "; ".join(problems) + ".")
    return TableSpec(
        columns=cleaned,
        key_columns=list(keys),
        primary_key=bool(data.get("primary_key", False)) and bool(keys),
    )


# --- value normalisation ------------------------------------------------------

_CURRENCY = re.compile(r"^(?:[A-Z][A-Za-z]{0,2}\.?\s*)?[$€£¥₹]?\s*")
_TRAIL_CURRENCY = re.compile(r"\s*[$€£¥₹]$|\s+[A-Z]{3}$")
_EURO = re.compile(r"^-?\d{1,3}(\.\d{3})+,\d+$")
_MONTHS = {
    m: i
    for i, names in enumerate(
        [
            ("jan", "january"), ("feb", "february"), ("mar", "march"), ("apr", "april"),
            ("may",), ("jun", "june"), ("jul", "july"), ("aug", "august"),
            ("sep", "sept", "september"), ("oct", "october"), ("nov", "november"),
            ("dec", "december"),
        ],
        1,
    )
    for m in names
}


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def parse_number(value: Any) -> float:
    """``"$1,234.50"``, ``"RM 9.00"``, ``"(12)"``, ``"12%"`` -> float; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("expected a number, got true/false")
    if isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a number, got {type(value).__name__}")
    s = value.strip().replace("\u2212", "-")
    negative = False
    if s.startswith("(") and s.endswith(")"):
        negative, s = True, s[1:-1].strip()
    if s.startswith("-"):
        negative, s = not negative, s[1:].strip()
    s = _CURRENCY.sub("", s, count=1)
    s = s.rstrip("%").strip()
    s = _TRAIL_CURRENCY.sub("", s)
    if s.startswith("-"):
        negative, s = not negative, s[1:]
    if _EURO.match(s):
        s = s.replace(".", "").replace(",", ".")
    else:
        s = re.sub(r"(?<=\d)[,\s_'](?=\d{3}\b)", "", s)
    if not re.fullmatch(r"\d+(\.\d*)?|\.\d+", s):
        raise ValueError(f"{value!r} is not a number")
    number = float(s)
    return -number if negative else number


def _to_integer(value: Any) -> Any:
    if _blank(value):
        return None
    number = parse_number(value)
    if number != int(number):
        raise ValueError(f"{value!r} is not a whole number")
    return int(number)


def _to_number(value: Any) -> Any:
    if _blank(value):
        return None
    number = parse_number(value)
    return number


def parse_date(value: Any) -> str:
    """Return ISO ``YYYY-MM-DD``; accepts ISO dates/datetimes and unambiguous written dates."""
    if isinstance(value, _dt.datetime):
        return value.date().isoformat()
    if isinstance(value, _dt.date):
        return value.isoformat()
    if not isinstance(value, str):
        raise ValueError("expected a date as YYYY-MM-DD")
    s = value.strip()
    m = re.match(r"^(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})(?:[T ].*)?$", s)
    if m:
        y, mo, d = (int(g) for g in m.groups())
        return _dt.date(y, mo, d).isoformat()
    m = re.match(r"^(\d{1,2})[/.-](\d{1,2})[/.-](\d{4})(?:\s.*)?$", s)
    if m:
        a, b, y = (int(g) for g in m.groups())
        if a > 12 and b <= 12:
            return _dt.date(y, b, a).isoformat()
        if b > 12 and a <= 12:
            return _dt.date(y, a, b).isoformat()
        if a == b:
            return _dt.date(y, a, b).isoformat()
        raise ValueError(f"{value!r} is ambiguous (day/month or month/day?): write it as YYYY-MM-DD")
    words = re.findall(r"[A-Za-z]+|\d+", s)
    month = [w for w in words if w.lower() in _MONTHS]
    nums = [int(w) for w in words if w.isdigit()]
    if len(month) == 1 and len(nums) == 2:
        mo = _MONTHS[month[0].lower()]
        year = [n for n in nums if n > 31]
        day = [n for n in nums if n <= 31]
        if len(year) == 1 and len(day) == 1:
            return _dt.date(year[0], mo, day[0]).isoformat()
    raise ValueError(f"{value!r} is not a date: write it as YYYY-MM-DD")


def _to_date(value: Any) -> Any:
    if _blank(value):
        return None
    return parse_date(value)


_TRUE = {"true", "yes", "y", "1", "t"}
_FALSE = {"false", "no", "n", "0", "f"}


def _to_boolean(value: Any) -> Any:
    if _blank(value):
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
    raise ValueError(f"{value!r} is not true or false")


def _to_text(value: Any) -> Any:
    if _blank(value):
        return None
    if isinstance(value, (dict, list)):
        raise ValueError("expected text, got a nested object")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    text = str(value).strip()
    if len(text) > MAX_TEXT_VALUE:
        raise ValueError(f"the value is {len(text):,} characters long; the limit is {MAX_TEXT_VALUE:,}")
    return text


def _choice_normaliser(choices: list[str]):
    lookup = {c.casefold(): c for c in choices}

    def normalise(value: Any) -> Any:
        if _blank(value):
            return None
        if isinstance(value, str):
            return lookup.get(value.strip().casefold(), value)
        return value

    return normalise


def _field_type(column: ColumnSpec):
    if column.type == "choice":
        base: Any = Literal[tuple(column.choices)]  # type: ignore[valid-type]
        normaliser = _choice_normaliser(column.choices)
    else:
        base, normaliser = {
            "text": (str, _to_text),
            "integer": (int, _to_integer),
            "number": (float, _to_number),
            "date": (str, _to_date),
            "boolean": (bool, _to_boolean),
        }[column.type]
        if column.type == "number":
            base = float
    if column.nullable:
        return Annotated[Optional[base], BeforeValidator(normaliser)], Field(default=None, alias=column.name)
    return Annotated[base, BeforeValidator(normaliser)], Field(..., alias=column.name)


class RowBase(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, strict=False)


def row_model(spec: TableSpec) -> type[BaseModel]:
    """A pydantic model validating one extracted row of ``spec``.

    Fields carry the column names as aliases (column names need not be Python
    identifiers): validate with ``model.model_validate(values)`` and read back
    with ``instance.model_dump(by_alias=True)``. Nullable columns default to
    None so the model is never pushed to invent a value; unknown keys are
    ignored.
    """
    fields = {f"f{i}": _field_type(col) for i, col in enumerate(spec.columns)}
    return create_model("ExtractedRow", __base__=RowBase, **fields)  # type: ignore[call-overload]


def _loose(name: str) -> str:
    return re.sub(r"[\s_-]+", " ", str(name)).strip().casefold()


def _align_keys(model: type[BaseModel], values: dict) -> dict:
    """Map keys the model spelled differently ("Total Amount" for "total_amount") to the columns."""
    names = [f.alias for f in model.model_fields.values()]
    missing = [n for n in names if n not in values]
    if not missing:
        return values
    loose = {_loose(k): k for k in values if k not in names}
    aligned = dict(values)
    for name in missing:
        key = loose.get(_loose(name))
        if key is not None:
            aligned[name] = values[key]
    return aligned


def validate_row(model: type[BaseModel], values: dict) -> tuple[dict, list[str]]:
    """Validate ``values``: (cleaned values, []) or (raw values per column, error messages)."""
    values = _align_keys(model, values)
    try:
        return model.model_validate(values).model_dump(by_alias=True), []
    except ValidationError as e:
        aliases = {name: f.alias for name, f in model.model_fields.items()}
        errors = []
        for err in e.errors():
            loc = ".".join(str(aliases.get(p, p)) for p in err["loc"]) or "(row)"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "missing" or _blank(err.get("input")):
                msg = "a value is required"
            elif err["type"] == "literal_error":
                msg = f"{err.get('input')!r} is not one of the allowed choices"
            errors.append(f"{loc}: {msg}")
        names = [f.alias for f in model.model_fields.values()]
        return {n: values.get(n) for n in names}, errors


# --- derived schemas ---------------------------------------------------------

def _column_json_schema(column: ColumnSpec) -> dict:
    nullable = column.nullable
    if column.type == "choice":
        schema: dict = {"type": ["string", "null"] if nullable else "string",
                        "enum": list(column.choices) + ([None] if nullable else [])}
    else:
        json_type = {"text": "string", "integer": "integer", "number": "number",
                     "date": "string", "boolean": "boolean"}[column.type]
        schema = {"type": [json_type, "null"] if nullable else json_type}
    description = column.description
    if column.type == "date":
        description = (description + " " if description else "") + "(date as YYYY-MM-DD)"
    if description:
        schema["description"] = description
    return schema


def output_json_schema(spec: TableSpec, row_ids: list[str] | None = None) -> dict:
    """Structured-output schema: ``{"rows": [{<columns>, "source_quote": str}]}``.

    Every property is listed in ``required`` (OpenAI strict mode needs that);
    nullable columns allow null so the model can say "not in the document".
    With ``row_ids`` (a re-ask) each row must also echo the id of the row it
    corrects in ``ROW_ID_FIELD``.
    """
    properties = {c.name: _column_json_schema(c) for c in spec.columns}
    properties[QUOTE_FIELD] = {
        "type": "string",
        "description": "Exact text copied from the document that supports this row",
    }
    if row_ids:
        properties = {ROW_ID_FIELD: {"type": "string", "enum": list(row_ids),
                                     "description": "Id of the row this row corrects"}, **properties}
    return {
        "type": "object",
        "properties": {
            "rows": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": properties,
                    "required": list(properties),
                    "additionalProperties": False,
                },
            }
        },
        "required": ["rows"],
        "additionalProperties": False,
    }


def sqlite_columns(spec: TableSpec) -> dict[str, str]:
    """Column name -> SQLite type for creating the target table."""
    return {c.name: SQLITE_TYPES[c.type] for c in spec.columns}


def _row_get(row: Any, key: str, index: int) -> Any:
    if isinstance(row, dict):
        return row.get(key)
    try:
        return row[key]
    except (TypeError, IndexError, KeyError):
        return row[index]


def spec_from_table(columns_info: list, descriptions: dict[str, Any] | None = None) -> TableSpec:
    """Build a spec from ``PRAGMA table_info`` rows of an existing table.

    ``descriptions`` maps column name to a description string or to a stored
    column dict (``{"type": "date", "description": ..., "choices": [...]}``)
    that restores types SQLite cannot express. Internal ``_llm*`` and rowid
    columns are skipped.
    """
    descriptions = descriptions or {}
    columns = []
    keys: list[tuple[int, str]] = []
    for row in columns_info:
        name = _row_get(row, "name", 1)
        declared = (_row_get(row, "type", 2) or "").upper()
        notnull = bool(_row_get(row, "notnull", 3))
        pk = int(_row_get(row, "pk", 5) or 0)
        if _name_problem(name):
            continue
        if "INT" in declared:
            ctype = "integer"
        elif any(t in declared for t in ("REAL", "FLOA", "DOUB", "NUMERIC", "DECIMAL")):
            ctype = "number"
        else:
            ctype = "text"
        column = {"name": name, "type": ctype, "nullable": not notnull and not pk}
        stored = descriptions.get(name)
        if isinstance(stored, str):
            column["description"] = stored
        elif isinstance(stored, dict):
            for k in ("type", "description", "choices", "nullable"):
                if k in stored:
                    column[k] = stored[k]
        columns.append(column)
        if pk:
            keys.append((pk, name))
    key_columns = [name for _, name in sorted(keys)]
    return validate_table_spec(
        {"columns": columns, "key_columns": key_columns, "primary_key": bool(key_columns)}
    )
