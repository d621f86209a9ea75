"""Every SQL identifier the suite builds passes through ``quote_identifier``.

A static check over the three packages: in every f-string that is SQL (starts
with a statement keyword, or is a ``name = ?`` fragment), each interpolated
expression must be a ``quote_identifier``/``quote_identifiers`` call, a
literal (``?`` placeholders, keywords), a number, an upper-case module constant, or a local name
whose every assignment in the same function is itself safe by these rules.
The end-to-end tests with hostile names live in test_bad_inputs.py and
test_properties.py; this one catches a new unquoted name at review time.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["datasette_llm_core", "datasette_llm_extract", "datasette_llm_rag"]
SQL_START = re.compile(r"(?is)^\s*(select|insert|update|delete|create|alter|drop|pragma|with|replace)\s")
FRAGMENT = re.compile(r"(=|<|>|like|in)\s*\(?\s*\?")
QUOTERS = {"quote_identifier", "quote_identifiers"}
SAFE_CALLS = {"int", "len", "float"}

#: (module path, expression source): internal names fixed in code, with the reason.
ALLOWED: dict[tuple[str, str], str] = {
    ("datasette_llm_extract/runs.py", "', '.join(cols)"):
        "keys of the run dict built by the suite itself (fixed column names of llm_extract_runs)",
    ("datasette_llm_extract/runs.py", "k"):
        "run field names checked against the fixed _RUN_FIELDS set before use",
    ("datasette_llm_extract/cli.py", "t"):
        "SQLite column types from schema.SQLITE_TYPES (a fixed map), not names",
    ("datasette_llm_extract/enrich_writer.py", "SQLITE_TYPES[column.type]"):
        "SQLite column types from schema.SQLITE_TYPES (a fixed map), not names",
    ("datasette_llm_extract/enrich_jobs.py", "where"):
        "the table page's filter: Datasette's own Filters (quoted names, bound values) plus _where SQL, "
        "accepted only from actors allowed execute-sql (as on the table page), run on a read connection",
}


def _const_text(node: ast.JoinedStr) -> str:
    return "".join(v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str))


def _is_sql(node: ast.JoinedStr) -> bool:
    text = _const_text(node)
    return bool(SQL_START.match(text) or FRAGMENT.search(text))


class Checker:
    def __init__(self, path: str, tree: ast.AST):
        self.path = path
        self.problems: list[str] = []
        self.assignments: dict[ast.AST, dict[str, list[ast.AST]]] = {}
        for func in ast.walk(tree):
            if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Module)):
                names: dict[str, list[ast.AST]] = {}
                for node in ast.walk(func):
                    if isinstance(node, ast.For) and isinstance(node.iter, ast.Call):
                        # Counters: ``for i in range(...)``, ``for i, x in enumerate(...)``.
                        called = getattr(node.iter.func, "id", "")
                        target = node.target
                        if called == "enumerate" and isinstance(target, ast.Tuple):
                            target = target.elts[0]
                        if called in ("range", "enumerate") and isinstance(target, ast.Name):
                            names.setdefault(target.id, []).append(ast.Constant(0))
                    if (  # defs.append(...) adds to what ``defs`` may hold
                        isinstance(node, ast.Call)
                        and isinstance(node.func, ast.Attribute)
                        and node.func.attr in ("append", "extend", "insert")
                        and isinstance(node.func.value, ast.Name)
                        and node.args
                    ):
                        names.setdefault(node.func.value.id, []).append(node.args[-1])
                    if isinstance(node, ast.Assign):
                        for target in node.targets:
                            if isinstance(target, ast.Name):
                                names.setdefault(target.id, []).append(node.value)
                self.assignments[func] = names

    def _scopes(self, func_stack):
        return [self.assignments.get(f, {}) for f in reversed(func_stack)]

    def safe(self, expr: ast.AST, scopes, seen=frozenset()) -> bool:
        if isinstance(expr, ast.Constant):  # literals are code, not runtime names
            return True
        if isinstance(expr, ast.IfExp):
            return self.safe(expr.body, scopes, seen) and self.safe(expr.orelse, scopes, seen)
        if isinstance(expr, ast.JoinedStr):
            return all(self.safe(v.value, scopes, seen) for v in expr.values if isinstance(v, ast.FormattedValue))
        if isinstance(expr, ast.BinOp):  # "?" * n, ", ".join(...) + ...
            return self.safe(expr.left, scopes, seen) and self.safe(expr.right, scopes, seen)
        if isinstance(expr, ast.Call):
            func = expr.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name in QUOTERS or name in SAFE_CALLS:
                return True
            if name == "join" and len(expr.args) == 1:
                arg = expr.args[0]
                if isinstance(arg, (ast.GeneratorExp, ast.ListComp)):
                    return self.safe(arg.elt, scopes, seen)
                return self.safe(arg, scopes, seen)
            return False
        if isinstance(expr, (ast.ListComp, ast.GeneratorExp)):
            return self.safe(expr.elt, scopes, seen)
        if isinstance(expr, (ast.List, ast.Tuple)):
            return all(self.safe(e, scopes, seen) for e in expr.elts)
        if isinstance(expr, ast.Name):
            if expr.id.isupper() or (self.path, expr.id) in ALLOWED:
                return True
            if expr.id in seen:
                return False
            for scope in scopes:
                if expr.id in scope:
                    return all(self.safe(v, scopes, seen | {expr.id}) for v in scope[expr.id])
            return False
        return False

    def visit(self, node, func_stack):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            func_stack = func_stack + [node]
        if isinstance(node, ast.JoinedStr) and _is_sql(node):
            for value in node.values:
                if isinstance(value, ast.FormattedValue):
                    source = ast.unparse(value.value)
                    if (self.path, source) in ALLOWED:
                        continue
                    if not self.safe(value.value, self._scopes(func_stack)):
                        self.problems.append(f"{self.path}:{node.lineno}: {{{source}}} in {_const_text(node)[:60]!r}")
            return  # nested f-strings were checked through safe()
        for child in ast.iter_child_nodes(node):
            self.visit(child, func_stack)


def scan() -> tuple[int, list[str]]:
    problems: list[str] = []
    checked = 0
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            tree = ast.parse(path.read_text(encoding="utf-8"))
            checker = Checker(rel, tree)
            checker.visit(tree, [tree])
            checked += sum(1 for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) and _is_sql(n))
            problems += checker.problems
    return checked, problems


def test_every_sql_identifier_is_quoted():
    checked, problems = scan()
    assert checked > 0
    assert not problems, (
        "SQL built with an unquoted name: wrap identifiers in "
        "datasette_llm_core.sql.quote_identifier() and bind values as ? parameters:\n"
        + "\n".join(problems)
    )


def test_checker_flags_an_unquoted_name():
    src = (
        "def f(conn, table, col):\n"
        "    where = f'{col} = ?'\n"
        "    conn.execute(f'select * from {table} where {where}')\n"
        "def g(conn, table):\n"
        "    conn.execute(f'select * from {quote_identifier(table)} where a in ({\", \".join(\"?\" for _ in x)})')\n"
    )
    tree = ast.parse(src)
    checker = Checker("example.py", tree)
    checker.visit(tree, [tree])
    flagged = " ".join(checker.problems)
    assert "{table}" in flagged and "{where}" in flagged and "{col}" in flagged
    assert "example.py:5" not in flagged
