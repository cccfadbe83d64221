"""The generated parts of the docs: tables equal the code's tables, and every command has its page."""

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"
sys.path.insert(0, str(DOCS / "_ext"))

import keyrotation_docs  # noqa: E402

from keyrotation import conf  # noqa: E402
from keyrotation.engine.runs import RUN_TRANSITIONS  # noqa: E402
from keyrotation.lifecycle import TRANSITIONS  # noqa: E402


def test_transition_tables_are_the_codes():
    assert [(None if f == "(none)" else f, t) for f, t, _ in keyrotation_docs.key_transition_rows()] == list(
        TRANSITIONS
    )
    assert [(f, t) for f, t, _ in keyrotation_docs.run_transition_rows()] == list(RUN_TRANSITIONS)
    assert "```{key-transitions}" in (DOCS / "concepts.md").read_text()
    assert "```{run-transitions}" in (DOCS / "operations.md").read_text()


def test_every_setting_is_in_the_settings_table():
    assert {row[0] for row in keyrotation_docs.settings_rows()} == set(conf.KNOWN_KEYS)
    assert all(row[2] for row in keyrotation_docs.settings_rows())
    assert "```{settings-table}" in (DOCS / "settings.md").read_text()


def test_every_command_has_its_generated_help():
    page = (DOCS / "commands.md").read_text()
    names = keyrotation_docs.command_names()
    assert {"rotatekeys", "reencrypt", "rotation_status", "audit_verify", "audit_export"} <= set(names)
    for name in names:
        assert f"```{{command-help}} {name}" in page, name
        assert keyrotation_docs.command_help(name).startswith(f"usage: manage.py {name}")
