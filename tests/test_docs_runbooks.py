"""Every shell command shown in the runbooks runs, in order, against a copy of the example project.

A page's ```` ```console ```` blocks are read top to bottom:

* ``$ <command>`` runs with bash in a fresh copy of ``example_project/`` (``python`` is this
  interpreter). It must exit 0 unless the next command is ``$ echo $?``, whose output line is the
  exit status the previous command must have had.
* ``$ export NAME=VALUE`` and ``$ unset NAME`` change the environment of the following commands
  (``VALUE`` is expanded by bash, so ``$(python -m keyrotation.kek.local)`` works).
* The lines after a command are its expected output: each must appear, in this order, among the
  lines the command printed (stdout and stderr together); other lines may come between them. In a
  line, ``...`` stands for any text (timestamps, rates); a line that is only ``...`` is a reminder
  that output was left out.

The environment is the one the runbooks state: ``KEYROTATION_MASTER_KEY`` set to a fresh key and
``KEYROTATION_CACHE_SECONDS=0`` (so a retired key need not wait out the cache; the pages say so).

Run ``python tests/test_docs_runbooks.py docs/runbook-routine.md`` to print what each command
really prints, when writing or updating a page.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "example_project"
PAGES = ["runbook-routine.md", "runbook-emergency.md", "operations.md", "policy.md"]
FENCE = re.compile(r"^```console\n(.*?)^```", re.S | re.M)


@dataclass
class Step:
    command: str
    expected: list[str] = field(default_factory=list)


def parse(page: Path) -> list[Step]:
    """The ``$`` commands of a page's console blocks, with their expected output lines."""
    steps: list[Step] = []
    for block in FENCE.findall(page.read_text()):
        lines = block.splitlines()
        i = 0
        while i < len(lines):
            line = lines[i]
            if line.startswith("$ "):
                command = line[2:]
                while command.endswith("\\") and i + 1 < len(lines):
                    i += 1
                    command = command[:-1] + lines[i].strip()
                steps.append(Step(command.strip()))
            elif steps and line.strip():
                steps[-1].expected.append(line.rstrip())
            i += 1
    return steps


def _pattern(line: str) -> re.Pattern:
    return re.compile("^" + ".*".join(re.escape(part) for part in line.split("...")) + "$")


def missing_lines(expected: list[str], output: str) -> list[str]:
    """Expected lines not found, in order, in ``output`` (``...`` is a wildcard)."""
    got = [line.rstrip() for line in output.splitlines()]
    pos, missing = 0, []
    for line in expected:
        if line.strip() == "...":
            continue
        pattern = _pattern(line)
        for j in range(pos, len(got)):
            if pattern.match(got[j]):
                pos = j + 1
                break
        else:
            missing.append(line)
    return missing


def environment() -> dict[str, str]:
    drop = ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "KEYROTATION_PREVIOUS_MASTER_KEYS")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # This checkout's keyrotation, even when the interpreter has another one installed.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["KEYROTATION_MASTER_KEY"] = base64.b64encode(os.urandom(32)).decode()
    env["KEYROTATION_CACHE_SECONDS"] = "0"
    env["COLUMNS"] = "100"
    return env


def copy_example(dest: Path) -> Path:
    ignore = shutil.ignore_patterns("db.sqlite3", ".master_key", "__pycache__", "*.sqlite3")
    shutil.copytree(EXAMPLE, dest, ignore=ignore)
    return dest


def execute(steps: list[Step], cwd: Path, env: dict[str, str], echo=None):
    """Run the steps; yield (step, exit status, output, problems) for each."""
    last_status = 0
    for n, step in enumerate(steps):
        cmd = step.command
        shell = ["bash", "-o", "pipefail", "-c"]
        if cmd.startswith("export "):
            name, _, value = cmd[len("export ") :].partition("=")
            out = subprocess.run(
                [*shell, f'printf %s "{value}"'], cwd=cwd, env=env, capture_output=True, text=True
            )
            env[name] = out.stdout
            yield step, 0, "", []
            continue
        if cmd.startswith("unset "):
            env.pop(cmd.split()[1], None)
            yield step, 0, "", []
            continue
        if cmd == "echo $?":
            problems = [] if step.expected == [str(last_status)] else [f"exit status {last_status}"]
            yield step, 0, str(last_status), problems
            last_status = 0
            continue
        proc = subprocess.run(
            [*shell, cmd],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=300,
        )
        last_status = proc.returncode
        checked = n + 1 < len(steps) and steps[n + 1].command == "echo $?"
        problems = missing_lines(step.expected, proc.stdout)
        if proc.returncode and not checked:
            problems.append(f"exit status {proc.returncode}")
        yield step, proc.returncode, proc.stdout, problems


def _on_sqlite_run() -> bool:
    from django.conf import settings

    return settings.DATABASES["default"]["ENGINE"].endswith("sqlite3")


@pytest.mark.parametrize("page", PAGES)
def test_runbook_commands_run_as_shown(page, tmp_path):
    if not _on_sqlite_run():
        pytest.skip("the example project runs on SQLite; its runbooks run once, in the SQLite run")
    steps = parse(ROOT / "docs" / page)
    assert len([s for s in steps if s.command.startswith("python")]) >= 5, f"{page}: no commands found"
    cwd = copy_example(tmp_path / "example_project")
    env = environment()
    for step, _status, output, problems in execute(steps, cwd, env):
        assert not problems, f"{page}: `$ {step.command}`: {problems}\n--- output ---\n{output[-4000:]}"


def test_parse_and_match_rules():
    page = ROOT / "docs" / "runbook-routine.md"
    steps = parse(page)
    assert steps[0].command.startswith("python manage.py migrate")
    assert missing_lines(["a ... c", "...", "e"], "x\na b c\nd\ne\n") == []
    assert missing_lines(["e", "a b c"], "a b c\ne\n") == ["a b c"]


if __name__ == "__main__":  # pragma: no cover - a helper for writing the pages
    import tempfile

    for arg in sys.argv[1:]:
        with tempfile.TemporaryDirectory() as tmp:
            cwd = copy_example(Path(tmp) / "example_project")
            for step, status, output, problems in execute(parse(Path(arg)), cwd, environment()):
                print(
                    f"$ {step.command}\n{output.rstrip()}\n[exit {status}] {'PROBLEMS: ' if problems else ''}"
                    f"{problems or ''}\n"
                )
