"""Sphinx directives that render tables and command help from the code, so the docs cannot drift.

* ``key-transitions``: :data:`keyrotation.lifecycle.TRANSITIONS`, one row per legal edge.
* ``run-transitions``: :data:`keyrotation.engine.runs.RUN_TRANSITIONS`.
* ``settings-table``: every key of :data:`keyrotation.conf.KNOWN_KEYS` with its accessor's docstring.
* ``command-help <name>``: ``manage.py <name> --help`` exactly as argparse prints it (no database).

The row builders are plain functions, also used by ``tests/test_docs.py``.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import Directive, directives

HELP_COLUMNS = "100"


def key_transition_rows() -> list[tuple[str, str, str]]:
    from keyrotation.lifecycle import TRANSITIONS

    return [(frm or "(none)", to, why) for (frm, to), why in TRANSITIONS.items()]


def run_transition_rows() -> list[tuple[str, str, str]]:
    from keyrotation.engine.runs import RUN_TRANSITIONS

    return [(frm, to, why) for (frm, to), why in RUN_TRANSITIONS.items()]


def settings_rows() -> list[tuple[str, str, str]]:
    from keyrotation import conf

    rows = []
    for key in sorted(conf.KNOWN_KEYS, key=lambda k: (k != "KEK", k)):
        accessor = getattr(conf, key.lower())
        doc = " ".join(inspect.getdoc(accessor).split("\n\n")[0].split())
        doc = doc.replace(f'``KEYROTATION["{key}"]``', "").lstrip(" :").replace("``", "")
        rows.append((key, f"conf.{accessor.__name__}()", doc))
    return rows


def command_names() -> list[str]:
    from django.core.management import find_commands

    import keyrotation

    return sorted(find_commands(str(Path(keyrotation.__file__).parent / "management")))


def command_help(name: str) -> str:
    from django.core.management import load_command_class

    os.environ["COLUMNS"] = HELP_COLUMNS  # argparse wraps to the terminal; pin it for the docs
    command = load_command_class("keyrotation", name)
    return command.create_parser("manage.py", name).format_help()


def _table(headers: tuple[str, ...], rows, code_columns: tuple[int, ...]) -> nodes.table:
    table = nodes.table()
    group = nodes.tgroup(cols=len(headers))
    table += group
    for _ in headers:
        group += nodes.colspec(colwidth=1)

    def row_node(cells, header=False):
        row = nodes.row()
        for i, text in enumerate(cells):
            para = nodes.paragraph()
            para += nodes.literal(text=text) if (i in code_columns and not header) else nodes.Text(text)
            row += nodes.entry("", para)
        return row

    thead = nodes.thead()
    thead += row_node(headers, header=True)
    group += thead
    body = nodes.tbody()
    for cells in rows:
        body += row_node(cells)
    group += body
    return table


class _TableDirective(Directive):
    headers: tuple[str, ...] = ()
    code_columns: tuple[int, ...] = ()

    def rows(self):  # pragma: no cover - overridden
        raise NotImplementedError

    def run(self):
        return [_table(self.headers, self.rows(), self.code_columns)]


class KeyTransitions(_TableDirective):
    headers = ("from", "to", "why the edge exists")
    code_columns = (0, 1)

    def rows(self):
        return key_transition_rows()


class RunTransitions(_TableDirective):
    headers = ("from", "to", "when")
    code_columns = (0, 1)

    def rows(self):
        return run_transition_rows()


class SettingsTable(_TableDirective):
    headers = ("key", "accessor", "default and meaning (from the accessor's docstring)")
    code_columns = (0, 1)

    def rows(self):
        return settings_rows()


class CommandHelp(Directive):
    required_arguments = 1
    has_content = False
    option_spec = {"name": directives.unchanged}

    def run(self):
        text = command_help(self.arguments[0])
        block = nodes.literal_block(text, text)
        block["language"] = "text"
        return [block]


def setup(app):
    app.add_directive("key-transitions", KeyTransitions)
    app.add_directive("run-transitions", RunTransitions)
    app.add_directive("settings-table", SettingsTable)
    app.add_directive("command-help", CommandHelp)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
