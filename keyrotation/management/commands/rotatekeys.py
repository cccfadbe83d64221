"""``manage.py rotatekeys``: create, rotate, roll back, retire, destroy and re-wrap data keys.

A thin shell over :mod:`keyrotation.lifecycle` (and :mod:`keyrotation.policy` for ``--if-due``).
Every refusal is a clear message and exit code 1; ``--if-due`` exits 3 when it rotated something.
"""

from __future__ import annotations

import difflib
import json
import sys

from django.core.management.base import BaseCommand, CommandError

from ... import crypto, lifecycle, policy, reporting, schema_state, wrapping
from ...exceptions import KeyRotationError
from ...keyring import kek_backend
from ..options import positive_int

ROTATED_EXIT = 3  # --if-due rotated something: new versions to re-encrypt to


class Command(BaseCommand):
    help = (
        "Manage data keys. Without an action flag: generate a new version of each purpose (or of "
        "--purpose) and make it active; the previous version stays readable (decrypt-only) until "
        "`reencrypt` has moved every row and it is retired."
    )

    def add_arguments(self, parser):
        action = parser.add_mutually_exclusive_group()
        action.add_argument(
            "--init", action="store_true", help="Create version 1 of each purpose if missing."
        )
        action.add_argument(
            "--rollback",
            action="store_true",
            help="Re-activate the previous version; the current one becomes decrypt-only.",
        )
        action.add_argument(
            "--retire",
            type=positive_int,
            metavar="N",
            help="Retire version N: refused while the census finds any row under it.",
        )
        action.add_argument(
            "--restore",
            type=positive_int,
            metavar="N",
            help="Disaster recovery: make retired version N decrypt-only again.",
        )
        action.add_argument(
            "--destroy",
            type=positive_int,
            metavar="N",
            help="Erase the wrapped material of retired version N (irreversible).",
        )
        action.add_argument(
            "--rewrap",
            action="store_true",
            help="Re-wrap every data key not yet wrapped by the current KEK version under it (those "
            'that KEYROTATION["KEK"]["PREVIOUS"] wrapped too); keys already under it are left alone. '
            "No user data is touched; all keys or none change.",
        )
        action.add_argument(
            "--if-due",
            action="store_true",
            help='Rotate only the keys past their KEYROTATION["ROTATION_PERIOD"] (every keyring and '
            "purpose, or --keyring/--purpose); safe from several hosts at once. Exit 0: nothing due; "
            "3: rotated (run `reencrypt` next).",
        )
        action.add_argument(
            "--list",
            action="store_true",
            help="List key versions, states, KEK ids and which configured KEK wraps each (current, "
            "previous, or unknown: neither); never key bytes.",
        )
        action.add_argument(
            "--accept-state",
            action="store_true",
            help="Authenticate the stored states of --keyring/--purpose as they are (after a refusal "
            "'key state ... is not authenticated', once they have been checked and put right).",
        )
        parser.add_argument(
            "--rotate-kek",
            action="store_true",
            help="With --rewrap on Vault/OpenBao: rotate the Transit key first, then re-wrap.",
        )
        parser.add_argument(
            "--keyring",
            default=None,
            help="Keyring name (default: the DEFAULT_KEYRING setting; with --if-due: every keyring).",
        )
        parser.add_argument(
            "--purpose",
            choices=crypto.PURPOSES,
            default=None,
            help=(
                "encrypt or index (default: both for --init, rotation and --if-due; "
                "required for --retire, --destroy, --restore, --rollback and --accept-state)."
            ),
        )
        parser.add_argument(
            "--actor", default=None, help="Who is acting, for the audit trail (default: the OS user)."
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="With --if-due: print what is due and would rotate, change nothing (exit 0).",
        )
        parser.add_argument("--json", action="store_true", help="Print a JSON document instead of text.")

    def handle(self, *args, **opts):
        try:
            result = self._dispatch(opts)
        except KeyRotationError as exc:
            raise CommandError(str(exc)) from None
        if opts["json"]:
            self.stdout.write(json.dumps(result, indent=2, default=str))
        else:
            for line in result.get("lines", []):
                self.stdout.write(line)
        if result.get("rotated") and opts["if_due"]:
            sys.exit(ROTATED_EXIT)

    def _purposes(self, opts):
        return (opts["purpose"],) if opts["purpose"] else crypto.PURPOSES

    def _unknown_keyring(self, ring: str, *, init_hint: bool = False) -> None:
        """Raise a one-line error for a keyring no key has, naming the ones that exist (and,
        with ``init_hint``, how to create it)."""
        known = sorted({k.keyring for k in lifecycle.keys()})
        if not known or ring in known:
            return  # nothing exists yet: the listing says to run --init
        close = difflib.get_close_matches(ring, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        if init_hint and not close:
            hint = f"; create it with `manage.py rotatekeys --init --keyring {ring}`"
        raise CommandError(f"no keyring {ring!r} (keyrings: {', '.join(known)}){hint}")

    def _need_purpose(self, opts, flag):
        if not opts["purpose"]:
            raise CommandError(f"{flag} needs --purpose encrypt or --purpose index")
        return opts["purpose"]

    def _check_flags(self, opts) -> None:
        """Refuse a combination of flags that cannot work, before any database is read."""
        if opts["dry_run"] and not opts["if_due"]:
            raise CommandError("--dry-run goes with --if-due")
        if opts["rotate_kek"] and not opts["rewrap"]:
            raise CommandError("--rotate-kek goes with --rewrap")
        for flag in ("rollback", "accept_state"):
            if opts[flag]:
                self._need_purpose(opts, "--" + flag.replace("_", "-"))
        for flag in ("retire", "restore", "destroy"):
            if opts[flag] is not None:
                self._need_purpose(opts, f"--{flag}")

    def _dispatch(self, opts):
        ring, actor = opts["keyring"], opts["actor"]
        self._check_flags(opts)
        schema_state.require_migrated()
        if opts["list"]:
            keys = lifecycle.keys(ring, opts["purpose"])
            if ring and not keys:
                self._unknown_keyring(ring)
            rows = [
                {**_key_dict(k), "wrapped_by": w.as_dict()["wrapped_by"]}
                for k, w in zip(keys, wrapping.classify(keys), strict=True)
            ]
            lines = [
                f"{r['keyring']:<16} {r['purpose']:<8} v{r['version']:<4} {r['state']:<13} "
                f"{r['wrapped_by'] or '-':<19} {r['kek_id']}"
                for r in rows
            ] or ["no keys; run `manage.py rotatekeys --init`"]
            return {"keys": rows, "lines": lines}
        if ring and not opts["init"] and not opts["rewrap"]:
            self._unknown_keyring(ring, init_hint=True)  # a misspelt --keyring: name the real ones
        if opts["init"]:
            created = lifecycle.init(ring, purposes=self._purposes(opts), actor=actor)
            lines = [f"created {k}" for k in created] or ["keys already exist; nothing to do"]
            return {"created": [_key_dict(k) for k in created], "lines": lines}
        if opts["rollback"]:
            key = lifecycle.rollback(ring, self._need_purpose(opts, "--rollback"), actor=actor)
            return {"active": _key_dict(key), "lines": [f"rolled back: {key} is active again"]}
        if opts["accept_state"]:
            accepted = lifecycle.accept_state(ring, self._need_purpose(opts, "--accept-state"), actor=actor)
            return {
                "accepted": [_key_dict(k) for k in accepted],
                "lines": [f"state authenticated: {k}" for k in accepted],
            }
        for flag, fn, verb in (
            ("retire", lifecycle.retire, "retired"),
            ("restore", lifecycle.restore, "restored"),
            ("destroy", lifecycle.destroy, "destroyed"),
        ):
            if opts[flag] is not None:
                key = fn(ring, self._need_purpose(opts, f"--{flag}"), opts[flag], actor=actor)
                return {verb: _key_dict(key), "lines": [f"{verb} {key}"]}
        if opts["rewrap"]:
            backend = kek_backend()
            if opts["rotate_kek"]:
                backend.rotate()
            report = lifecycle.rewrap_keys(actor=actor)
            if report.rewrapped:
                moved = ", ".join(f"{n} from {kek or 'an unrecorded KEK'}" for kek, n in report.moved.items())
                line = f"re-wrapped {report.rewrapped} data key(s) under {report.kek_to} ({moved})"
            else:
                line = (
                    f"nothing to re-wrap: all {report.unchanged} data key(s) are wrapped by {report.kek_to}"
                )
            return {
                "rewrapped": report.rewrapped,
                "unchanged": report.unchanged,
                "moved": report.moved,
                "kek": report.kek_to,
                "lines": [line],
            }
        if opts["if_due"]:
            return self._if_due(opts)
        rotated = [lifecycle.rotate(ring, p, actor=actor) for p in self._purposes(opts)]
        return {
            "rotated": [_key_dict(k) for k in rotated],
            "lines": [f"new active key {k}" for k in rotated]
            + ["run `manage.py reencrypt` to move existing rows to the new version"],
        }

    def _if_due(self, opts):
        if not policy.configured():
            raise CommandError(
                'no rotation period is configured (KEYROTATION["ROTATION_PERIOD"]), so nothing is ever '
                "due; set one (see docs/policy.md) or rotate with `rotatekeys`"
            )
        scope = {"keyring": opts["keyring"], "purpose": opts["purpose"]}
        ages = policy.status(**scope)
        due = [a for a in ages if a.is_due]
        result = {"dry_run": opts["dry_run"], "due": [a.as_dict() for a in due], "rotated": [], "skipped": []}
        if opts["dry_run"] or not due:
            lines = [f"would rotate {reporting.age_text(a)}" for a in due] or [_nothing_due(ages)]
            return {**result, "lines": lines}
        report = policy.rotate_due(**scope, actor=opts["actor"])
        lines = [f"rotated {reporting.age_text(r.was)}: v{r.new_version} is active" for r in report.rotated]
        lines += [f"skipped {a.name}: another process rotated it first" for a in report.skipped]
        if report.rotated:
            lines.append("run `manage.py reencrypt` to move existing rows to the new version")
        return {**result, **report.as_dict(), "lines": lines}


def _nothing_due(ages: list[policy.KeyAge]) -> str:
    dated = sorted((a for a in ages if a.due_at is not None), key=lambda a: a.due_at)
    if not dated:
        return "nothing due: no active key has a rotation period"
    first = dated[0]
    return f"nothing due; next: {first.name} on {reporting.moment(first.due_at)}"


def _key_dict(key):
    return {
        "keyring": key.keyring,
        "purpose": key.purpose,
        "version": key.version,
        "state": key.state,
        "kek_id": key.kek_id,
        "created_at": key.created_at,
        "activated_at": key.activated_at,
        "retired_at": key.retired_at,
        "destroyed_at": key.destroyed_at,
    }
