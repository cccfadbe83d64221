"""Every command's exit codes, and every kind of bad input, on the real command line.

The commands run through ``execute_from_command_line`` as ``manage.py`` runs them (one helper
process for the whole module: ``tests/helpers/command_line.py``), against a SQLite file of their
own, in the order below: each step sees the state the previous ones left. The exit codes are the
ones ``docs/commands.md`` lists; ``test_the_documented_table_is_this_one`` keeps the two equal.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.command_line import REFUSAL

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ("rotatekeys", "reencrypt", "rotation_status", "audit_verify", "audit_export", "encryptcolumn")


@dataclass(frozen=True)
class Step:
    argv: tuple[str, ...]
    code: int
    says: str  # found in stdout + stderr

    @property
    def id(self) -> str:
        return " ".join(self.argv)


def step(*argv: str, code: int, says: str) -> Step:
    return Step(argv, code, says)


SETUP = [
    step("migrate", "--verbosity", "0", code=0, says=""),
    step("rotatekeys", "--init", code=0, says="created"),
]

# The documented exit codes, in an order where each step finds the state it needs.
EXIT_CODES = [
    step("reencrypt", "--no-progress", code=0, says="nothing to re-encrypt: every row of"),
    {"setup": "seed"},  # 50 people on v1; v2 of both keys active
    step("rotatekeys", "--list", code=0, says="default          encrypt  v2"),
    step("rotatekeys", "--retire", "2", "--purpose", "encrypt", code=1, says="rotate first"),
    step("rotation_status", code=0, says="v1: 50"),
    step("rotation_status", "--fail-if-incomplete", code=2, says="v1: 50"),
    step("rotation_status", "--fail-if-version", "1", code=2, says="v1: 50"),
    step("reencrypt", "--dry-run", code=0, says="50 row(s) pending"),
    step("reencrypt", "--verify", code=0, says="0 failure(s)"),
    step(
        "reencrypt",
        "--max-duration",
        "0.0001",
        "--no-progress",
        code=3,
        says="run `manage.py reencrypt` again",
    ),
    {"setup": "refuse"},  # a trigger makes the database refuse every batch
    step("reencrypt", "--no-progress", code=1, says="on database 'default': IntegrityError"),
    {"setup": "allow"},
    {"setup": "tamper"},  # one stored email no longer authenticates
    step("reencrypt", "--no-progress", code=1, says="authentication failed"),
    step("reencrypt", "--verify", code=1, says="1 failure(s)"),
    step("reencrypt", "--on-error", "quarantine", "--no-progress", code=1, says="1 value(s) quarantined"),
    step("reencrypt", "--resume", code=1, says="CommandError: no open re-encryption run"),
    step("audit_verify", code=0, says="OK:"),
    step("audit_verify", "--head", "0" * 64, code=1, says="FAILED: no row has row_hash"),
    step("audit_export", code=0, says='"action": "run_started"'),
    step("audit_export", "--since", "notadate", code=1, says="--since must be a date"),
    step(
        "encryptcolumn",
        "migrapp.Item.name",
        "--from",
        "plaintext",
        "--dry-run",
        code=0,
        says="StartAdoption(",
    ),
    step("encryptcolumn", "migrapp.Item.name", "--finish", code=1, says="no adoption in progress"),
    step("rotatekeys", "--if-due", code=1, says="CommandError: no rotation period is configured"),
    {"setup": "policy"},  # encrypt keys rotate every 30 days; default/encrypt v2 is 31 days old
    step("rotation_status", "--fail-if-due", code=2, says="overdue"),
    step("rotatekeys", "--if-due", "--dry-run", code=0, says="would rotate default/encrypt v2"),
    step("rotatekeys", "--if-due", code=3, says="rotated default/encrypt v2"),
    step("rotatekeys", "--if-due", code=0, says="nothing due; next: default/encrypt v3"),
    step("rotation_status", "--fail-if-due", code=0, says="default/encrypt v3"),
]

# A typo or an invalid value: one line saying what is wrong, exit 2 when the command line itself
# is malformed (before anything runs), 1 when it names something that does not exist.
BAD_INPUT = [
    step(
        "rotatekeys",
        "--retire",
        "abc",
        code=2,
        says="argument --retire: must be a whole number of at least 1",
    ),
    step("rotatekeys", "--retire", "0", "--purpose", "encrypt", code=2, says="argument --retire: must be"),
    step("rotatekeys", "--restore", "-1", "--purpose", "encrypt", code=2, says="argument --restore: must be"),
    step("rotatekeys", "--destroy", "x", "--purpose", "encrypt", code=2, says="argument --destroy: must be"),
    step("rotatekeys", "--purpose", "bogus", code=2, says="argument --purpose: invalid choice: 'bogus'"),
    step("rotatekeys", "--lst", code=2, says="unrecognized arguments: --lst"),
    step("rotatekeys", "--retire", "1", code=1, says="--retire needs --purpose encrypt or --purpose index"),
    step("rotatekeys", "--retire", "9", "--purpose", "encrypt", code=1, says="no such key version"),
    step(
        "rotatekeys",
        "--keyring",
        "defualt",
        "--retire",
        "1",
        "--purpose",
        "encrypt",
        code=1,
        says="no keyring 'defualt' (keyrings: _audit_chain, default); did you mean 'default'?",
    ),
    step(
        "rotatekeys",
        "--keyring",
        "billing",
        code=1,
        says="create it with `manage.py rotatekeys --init --keyring billing`",
    ),
    step("rotatekeys", "--rotate-kek", code=1, says="--rotate-kek goes with --rewrap"),
    step("rotatekeys", "--dry-run", code=1, says="--dry-run goes with --if-due"),
    step(
        "rotatekeys", "--if-due", "--list", code=2, says="argument --list: not allowed with argument --if-due"
    ),
    step("reencrypt", "--model", "nope", code=1, says="no encrypted or indexed column matches nope"),
    step(
        "reencrypt",
        "--model",
        "nope.Nope",
        "--dry-run",
        code=1,
        says="no encrypted or indexed column matches nope.Nope",
    ),
    step("reencrypt", "--on-error", "bogus", code=2, says="argument --on-error: invalid choice: 'bogus'"),
    step(
        "reencrypt",
        "--workers",
        "0",
        code=2,
        says="argument --workers: must be a whole number of at least 1, got 0",
    ),
    step(
        "reencrypt",
        "--rate",
        "fast",
        code=2,
        says="argument --rate: must be a number greater than 0, got 'fast'",
    ),
    step(
        "reencrypt",
        "--verify",
        "--dry-run",
        code=2,
        says="argument --dry-run: not allowed with argument --verify",
    ),
    step("reencrypt", "--run", "3", code=1, says="--run names the run for --pause, --resume or --abort"),
    step("reencrypt", "--abort", "--run", "999", code=1, says="no re-encryption run #999"),
    step("reencrypt", "--database", "nope", code=1, says="no database alias 'nope' in DATABASES"),
    step("reencrypt", "--workers", "2", code=1, says="sqlite has none: run one worker"),
    step("rotation_status", "--model", "nope.Nope", code=2, says="unrecognized arguments: --model nope.Nope"),
    step("rotation_status", "--fail-if-version", "abc", code=2, says="argument --fail-if-version: must be"),
    step("rotation_status", "--fail-if-version", "-1", code=2, says="argument --fail-if-version: must be"),
    step("rotation_status", "--purpose", "x", code=2, says="argument --purpose: invalid choice: 'x'"),
    step("rotation_status", "--database", "nope", code=1, says="no database alias 'nope' in DATABASES"),
    step("audit_verify", "--database", "nope", code=1, says="no database alias 'nope' in DATABASES"),
    step("audit_verify", "--hed", "abc", code=2, says="unrecognized arguments: --hed abc"),
    step("audit_export", "--database", "nope", code=1, says="no database alias 'nope' in DATABASES"),
    step("audit_export", "--format", "xml", code=2, says="argument --format: invalid choice: 'xml'"),
    step("audit_export", "--since", "2025-13-45", code=1, says="--since must be a date"),
    step("encryptcolumn", "migrapp.Nope.name", "--from", "plaintext", code=1, says="no model migrapp.Nope"),
    step(
        "encryptcolumn",
        "migrapp.Item.name",
        "--from",
        "bogus",
        code=2,
        says="argument --from: invalid choice",
    ),
    step("encryptcolumn", "--from", "plaintext", code=2, says="the following arguments are required"),
]

HELP = [step(name, "--help", code=0, says=f"usage: manage.py {name}") for name in COMMANDS]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Run every step in one helper process; ``{step id: result}`` (ids are unique per list)."""
    tmp = tmp_path_factory.mktemp("cli")
    steps = [*SETUP, *EXIT_CODES, *BAD_INPUT, *HELP]
    plan = [s if isinstance(s, dict) else {"argv": list(s.argv)} for s in steps]
    (tmp / "steps.json").write_text(json.dumps(plan))
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        KEYROTATION_TEST_SQLITE=str(tmp / "db.sqlite3"),
        PYTHONPATH=str(ROOT),
        COLUMNS="200",  # argparse wraps usage lines to the terminal width
    )
    proc = subprocess.run(
        [sys.executable, "-m", "tests.helpers.command_line", str(tmp / "steps.json"), str(tmp / "out.json")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads((tmp / "out.json").read_text())
    by_list: dict[str, dict] = {}
    for s, result in zip(steps, out, strict=True):
        if isinstance(s, Step):
            by_list.setdefault(s.id, []).append(result)
    return by_list


def _result(results, s: Step, index: int = 0) -> dict:
    return results[s.id][index]


def _occurrence(steps: list, s: Step) -> int:
    """Which run of the same command line ``s`` is (a command line may come twice)."""
    return [x for x in steps if isinstance(x, Step) and x.id == s.id].index(s)


def _check(result: dict, s: Step) -> None:
    text = result["stdout"] + result["stderr"]
    assert result["code"] == s.code, f"{s.id}: exit {result['code']}, expected {s.code}\n{text}"
    assert s.says in text, text
    assert "Traceback" not in text


def test_setup_steps_succeed(results):
    for s in SETUP:
        _check(_result(results, s), s)


@pytest.mark.parametrize("s", [s for s in EXIT_CODES if isinstance(s, Step)], ids=lambda s: s.id)
def test_exit_codes(results, s):
    _check(_result(results, s, _occurrence(EXIT_CODES, s)), s)


def test_a_database_error_is_one_line_without_the_database_message(results):
    """The run's database error is reported by where and the driver's code; the database's own
    text, which may quote values, is printed nowhere."""
    (result,) = [r for r in results["reencrypt --no-progress"] if "database error" in r["stdout"]]
    errors = [line for line in result["stdout"].splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "database error in batch of testapp.Person" in errors[0], errors
    assert REFUSAL not in result["stdout"] + result["stderr"]


@pytest.mark.parametrize("s", BAD_INPUT, ids=lambda s: s.id)
def test_bad_input_is_one_clear_line_and_no_traceback(results, s):
    result = _result(results, s)
    _check(result, s)
    errors = result["stderr"].splitlines()
    if s.code == 2:  # argparse: the usage, then one line naming the option
        assert errors[-1].startswith(f"manage.py {s.argv[0]}: error: ") or re.search(r": error: ", errors[-1])
        assert s.says in errors[-1]
    else:  # a refusal: one line
        assert errors == [f"CommandError: {errors[0].removeprefix('CommandError: ')}"], errors


@pytest.mark.parametrize("s", HELP, ids=lambda s: s.id)
def test_help_of_every_command(results, s):
    _check(_result(results, s), s)


def test_every_flag_of_every_command_has_help():
    from django.core.management import load_command_class

    for name in COMMANDS:
        parser = load_command_class("keyrotation", name).create_parser("manage.py", name)
        for action in parser._actions:
            if action.option_strings and action.dest not in {"help", "version"}:
                assert action.help, (name, action.option_strings)


def documented_exit_codes() -> set[tuple[str, int]]:
    """(command, code) pairs of the exit code table in docs/commands.md."""
    page = (ROOT / "docs" / "commands.md").read_text()
    table = page.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    pairs = set()
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`") and cells[1].isdigit():
            pairs.add((cells[0].strip("`"), int(cells[1])))
    return pairs


def test_the_documented_table_is_this_one():
    tested = {(s.argv[0], s.code) for s in [*EXIT_CODES, *BAD_INPUT] if isinstance(s, Step)}
    assert documented_exit_codes() == tested
