"""The audit trail: append-only model, keyed hash chain, verification and export (both backends)."""

import csv
import hmac
import json
import threading
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from hashlib import sha256
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from keyrotation import audit, audit_chain, lifecycle
from keyrotation.models import AppendOnlyError, DataKey, KeyRotationAudit

pytestmark = pytest.mark.django_db
TABLE = KeyRotationAudit._meta.db_table
STATES_OK = "key states: every key's state is authenticated"


def rows(n=3, **kwargs):
    return [audit.record(f"test_{i}", actor="t", details={"i": i}, **kwargs) for i in range(n)]


def sql(statement, params=()):
    with connection.cursor() as cur:
        cur.execute(statement.replace("{table}", connection.ops.quote_name(TABLE)), params)


def verify_cmd(*args):
    out, err = StringIO(), StringIO()
    try:
        call_command("audit_verify", *args, stdout=out, stderr=err)
    except SystemExit as exc:
        return exc.code, out.getvalue() + err.getvalue()
    return 0, out.getvalue() + err.getvalue()


# -- the chain ----------------------------------------------------------------------------------


def test_rows_are_chained_and_verify():
    a, b, c = rows()
    assert a.prev_hash == "" and b.prev_hash == a.row_hash and c.prev_hash == b.row_hash
    assert len({a.row_hash, b.row_hash, c.row_hash}) == 3
    assert all(len(r.row_hash) == 64 for r in (a, b, c))
    report = audit_chain.verify()
    assert report.ok and report.rows == 3 and report.head == c.row_hash
    assert str(report) == "chain verified: 3 rows"
    assert verify_cmd() == (0, f"OK: 3 rows, head {c.row_hash}\n{STATES_OK}\n")


def test_empty_trail_verifies():
    assert verify_cmd() == (0, f"OK: 0 rows, head -\n{STATES_OK}\n")


def test_lifecycle_rows_are_chained(keys):
    lifecycle.rotate("default", "encrypt", actor="ops")
    report = audit_chain.verify()
    assert report.ok and report.rows == KeyRotationAudit.objects.count() == 3


def test_hash_is_keyed_by_a_wrapped_chain_key():
    (row,) = rows(1)
    key = DataKey.objects.get(keyring=audit_chain.AUDIT_KEYRING)
    assert key.purpose == "index" and key.state == "active" and row.chain_key_version == 1
    values = KeyRotationAudit.objects.values(*audit_chain.HASHED_FIELDS).get(pk=row.pk)
    # Not a plain hash: someone with database access only cannot recompute it.
    assert row.row_hash != sha256(audit_chain.canonical(values)).hexdigest()
    version, chain_key = audit_chain.active_chain_key()
    assert hmac.compare_digest(audit_chain.row_hash(chain_key, "", values), row.row_hash)


def test_canonical_form_is_utc_with_microseconds_whatever_the_zone():
    moment = datetime(2025, 1, 31, 6, 0, 0, 5, tzinfo=dt_timezone(timedelta(hours=-6)))
    doc = json.loads(audit_chain.canonical({"created_at": moment, "details": {"b": 2.0, "a": [1e20, 0.5]}}))
    assert doc["created_at"] == "2025-01-31T12:00:00.000005Z"
    assert doc["details"] == {"a": [10**20, 0.5], "b": 2}
    assert list(doc) == sorted(doc)


def test_values_read_back_from_the_database_hash_the_same():
    # jsonb turns 1e20 into 100000000000000000000 and may drop ".0": the canonical form absorbs it.
    audit.record(
        "numbers", details={"big": 1e20, "whole": 2.0, "small": 1.5e-7, "neg": -0.1, "s": "é ✓", "n": None}
    )
    assert audit_chain.verify().ok


def test_record_rolls_back_with_the_callers_transaction():
    (first,) = rows(1)
    with pytest.raises(RuntimeError), transaction.atomic():
        audit.record("doomed")
        raise RuntimeError
    after = audit.record("after")
    assert after.prev_hash == first.row_hash
    assert audit_chain.verify().ok


def test_details_reject_non_json_numbers():
    with pytest.raises(ValueError, match="details.rate must be a finite number"):
        audit.record("x", details={"rate": float("nan")})
    with pytest.raises(TypeError, match="details.k must hold only JSON scalars"):
        audit.record("x", details={"k": b"\x00" * 32})


def test_kek_rewrap_keeps_the_chain_verifiable(settings, keys, master_key):
    rows(2)
    old = settings.KEYROTATION["KEK"]["KEYS"][0]
    settings.KEYROTATION = {**settings.KEYROTATION, "KEK": {"BACKEND": "local", "KEYS": [master_key, old]}}
    lifecycle.keyring.clear_cache()
    assert lifecycle.rewrap(actor="ops") == 3
    settings.KEYROTATION = {**settings.KEYROTATION, "KEK": {"BACKEND": "local", "KEYS": [master_key]}}
    audit_chain.clear_cache()
    lifecycle.keyring.clear_cache()
    audit.record("after_rewrap")
    assert audit_chain.verify().ok


def test_a_rotated_chain_key_seals_new_rows_and_old_rows_still_verify():
    rows(2)
    lifecycle.rotate(audit_chain.AUDIT_KEYRING, "index", actor="ops")
    new = audit.record("after")
    assert new.chain_key_version == 2
    assert audit_chain.verify().ok


# -- append-only --------------------------------------------------------------------------------


def test_orm_refuses_update_and_delete():
    (row,) = rows(1)
    row.actor = "mallory"
    with pytest.raises(AppendOnlyError, match="append-only: rows cannot be updated"):
        row.save()
    with pytest.raises(AppendOnlyError, match="cannot be deleted"):
        row.delete()
    with pytest.raises(AppendOnlyError, match="cannot be updated"):
        KeyRotationAudit.objects.filter(pk=row.pk).update(actor="mallory")
    with pytest.raises(AppendOnlyError, match="cannot be deleted"):
        KeyRotationAudit.objects.all().delete()
    with pytest.raises(AppendOnlyError, match="cannot be updated"):
        KeyRotationAudit.objects.bulk_update([row], ["actor"])
    with pytest.raises(AppendOnlyError, match="bulk-created"):
        KeyRotationAudit.objects.bulk_create([KeyRotationAudit(action="x")])
    with pytest.raises(AppendOnlyError, match=r"written by keyrotation.audit.record\(\)"):
        KeyRotationAudit.objects.create(action="forged")
    assert KeyRotationAudit.objects.get().actor == "t"


def test_a_fork_is_refused_by_the_database():
    a, b = rows(2)
    with pytest.raises(IntegrityError), transaction.atomic():
        sql(
            "INSERT INTO {table} (created_at, action, status, actor, host, keyring, purpose, details, "
            "prev_hash, row_hash) VALUES (%s, 'fork', 'ok', '', '', '', '', '{}', %s, %s)",
            [timezone.now(), a.row_hash, "f" * 64],
        )


# -- tampering is detected ----------------------------------------------------------------------


def test_edited_row_is_named(capsys):
    a, b, c = rows()
    sql("UPDATE {table} SET actor = 'someone else' WHERE id = %s", [b.pk])
    code, out = verify_cmd()
    assert code == 1
    stamp = audit_chain.utc_text(b.created_at)
    assert f"chain broken at row #{b.pk} (test_1, {stamp})" in out
    assert "row_hash does not match its content (the row was edited)" in out


def test_edit_with_a_recomputed_plain_hash_is_still_detected():
    a, b = rows(2)
    values = KeyRotationAudit.objects.values(*audit_chain.HASHED_FIELDS).get(pk=b.pk)
    values["rows_processed"] = 0
    forged = hmac.new(b"\x00" * 32, a.row_hash.encode() + audit_chain.canonical(values), sha256).hexdigest()
    sql("UPDATE {table} SET rows_processed = 0, row_hash = %s WHERE id = %s", [forged, b.pk])
    report = audit_chain.verify()
    assert not report.ok and report.broken_id == b.pk


def test_deleted_row_is_named_by_its_successor():
    a, b, c = rows()
    sql("DELETE FROM {table} WHERE id = %s", [b.pk])
    code, out = verify_cmd()
    assert code == 1
    assert f"chain broken at row #{c.pk} (test_2," in out
    assert "prev_hash does not match the previous row" in out


def test_deleted_first_row_is_detected():
    a, b = rows(2)
    sql("DELETE FROM {table} WHERE id = %s", [a.pk])
    assert audit_chain.verify().broken_id == b.pk


def test_deleted_newest_rows_are_caught_with_a_recorded_head():
    a, b, c = rows()
    head = c.row_hash
    sql("DELETE FROM {table} WHERE id = %s", [c.pk])
    assert verify_cmd()[0] == 0  # a chain alone cannot see its own tail cut off ...
    code, out = verify_cmd("--head", head)  # ... a head recorded earlier can
    assert code == 1 and f"no row has row_hash {head}" in out
    assert verify_cmd("--head", b.row_hash)[0] == 0


def test_destroyed_chain_key_is_reported():
    rows(1)
    DataKey.objects.filter(keyring=audit_chain.AUDIT_KEYRING).update(wrapped_key=None, state="destroyed")
    report = audit_chain.verify()
    assert not report.ok and "chain key version 1 is missing or not usable" in report.reason


def test_seal_legacy_rows():
    # Rows written before migration 0003 had no hashes; the migration seals them in id order.
    for i in range(3):
        sql(
            "INSERT INTO {table} (created_at, action, status, actor, host, keyring, purpose, details, "
            "prev_hash, row_hash) VALUES (%s, %s, 'ok', '', '', '', '', '{}', %s, '')",
            [timezone.now(), f"legacy_{i}", f"placeholder-{i}"],
        )
    assert audit_chain.verify().reason == "row is not sealed (no row_hash)"

    class Historical:  # what the migration passes: a model whose plain manager may update
        objects = KeyRotationAudit._base_manager

    assert audit_chain.seal_legacy(Historical, DataKey, "default") == 3
    head = audit_chain.verify().head
    assert audit_chain.verify().rows == 3
    assert audit.record("next").prev_hash == head
    assert audit_chain.verify().ok


# -- export -------------------------------------------------------------------------------------


def export(*args):
    out = StringIO()
    call_command("audit_export", *args, stdout=out)
    return out.getvalue()


def test_export_jsonl_carries_the_chain():
    made = rows()
    lines = [json.loads(line) for line in export("--format", "jsonl").splitlines()]
    assert [r["id"] for r in lines] == [r.pk for r in made]
    assert [r["row_hash"] for r in lines] == [r.row_hash for r in made]
    assert lines[1]["prev_hash"] == lines[0]["row_hash"]
    assert lines[0]["created_at"].endswith("Z") and lines[0]["details"] == {"i": 0}
    # Offline check with the chain key: the exported fields are exactly what was hashed.
    _, key = audit_chain.active_chain_key()
    prev = ""
    for line in lines:
        line["created_at"] = datetime.fromisoformat(line["created_at"].replace("Z", "+00:00"))
        assert audit_chain.row_hash(key, prev, line) == line["row_hash"]
        prev = line["row_hash"]


def test_export_csv_and_since():
    old = rows(1)[0]
    sql("UPDATE {table} SET created_at = %s WHERE id = %s", [timezone.now() - timedelta(days=10), old.pk])
    rows(2)
    parsed = list(csv.DictReader(StringIO(export("--format", "csv"))))
    assert len(parsed) == 3 and set(parsed[0]) >= {"prev_hash", "row_hash", "details"}
    assert json.loads(parsed[1]["details"]) == {"i": 0}
    since = (timezone.localdate() - timedelta(days=1)).isoformat()
    assert len(list(csv.DictReader(StringIO(export("--format", "csv", "--since", since))))) == 2


def test_export_rejects_a_bad_date():
    from django.core.management import CommandError

    with pytest.raises(CommandError, match="--since must be a date"):
        export("--since", "yesterday")


# -- concurrency --------------------------------------------------------------------------------


@pytest.mark.server
@pytest.mark.django_db(transaction=True)
def test_concurrent_appends_from_many_connections_do_not_fork():
    audit.record("genesis")  # creates the chain key before the race
    errors = []

    def append(worker):
        try:
            for i in range(15):
                with transaction.atomic():
                    audit.record("concurrent", details={"worker": worker, "i": i})
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=append, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    report = audit_chain.verify()
    assert report.ok and report.rows == 1 + 6 * 15


# -- the external anchor of the head ------------------------------------------------------------


class MemoryAnchor:
    """An anchor kept in memory (stands for a write-once store outside the database)."""

    heads: list = []

    def write(self, head):
        MemoryAnchor.heads.append(head)

    def read(self):
        return MemoryAnchor.heads[-1] if MemoryAnchor.heads else None


@pytest.fixture
def anchor_file(settings, tmp_path):
    path = tmp_path / "audit-head.json"
    settings.KEYROTATION = {**settings.KEYROTATION, "AUDIT_ANCHOR": str(path)}
    return path


def committed_rows(capture, n=3):
    """Rows appended as if committed: the anchor is written by on-commit hooks."""
    with capture(execute=True):
        return rows(n)


def test_every_committed_append_writes_the_head_to_the_anchor(
    anchor_file, django_capture_on_commit_callbacks
):
    a, b, c = committed_rows(django_capture_on_commit_callbacks)
    assert json.loads(anchor_file.read_text()) == {"id": c.pk, "row_hash": c.row_hash}
    code, out = verify_cmd()
    assert code == 0 and f"anchor: row #{c.pk} is in the chain" in out


def test_a_rolled_back_append_leaves_the_anchor_alone(anchor_file, django_capture_on_commit_callbacks):
    (first,) = committed_rows(django_capture_on_commit_callbacks, 1)
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(RuntimeError), transaction.atomic():
        audit.record("doomed")
        raise RuntimeError
    assert json.loads(anchor_file.read_text())["id"] == first.pk
    assert verify_cmd()[0] == 0


def test_the_anchor_never_moves_backwards(anchor_file):
    from keyrotation.audit_anchor import ChainHead, FileAnchor

    anchor = FileAnchor(str(anchor_file))
    anchor.write(ChainHead(5, "b" * 64))
    anchor.write(ChainHead(4, "a" * 64))  # an on-commit hook that ran late
    assert anchor.read() == ChainHead(5, "b" * 64)


def test_deleting_the_newest_rows_fails_against_the_anchor(anchor_file, django_capture_on_commit_callbacks):
    a, b, c = committed_rows(django_capture_on_commit_callbacks)
    sql("DELETE FROM {table} WHERE id >= %s", [b.pk])
    assert audit_chain.verify().ok  # the shorter chain is sound on its own ...
    code, out = verify_cmd()  # ... the anchor knows better
    assert code == 1
    assert (
        f"FAILED: audit anchor: the anchor names row #{c.pk} but the chain ends at row #{a.pk} "
        "(the newest rows were deleted)" in out
    )


def test_deleting_every_row_fails_against_the_anchor(anchor_file, django_capture_on_commit_callbacks):
    (_, _, c) = committed_rows(django_capture_on_commit_callbacks)
    sql("DELETE FROM {table}")
    code, out = verify_cmd()
    assert code == 1
    assert f"the anchor names row #{c.pk} but the audit trail is empty (every row deleted)" in out


def test_a_row_replaced_at_the_anchored_position_fails(anchor_file, django_capture_on_commit_callbacks):
    a, b = committed_rows(django_capture_on_commit_callbacks, 2)
    anchor_file.write_text(json.dumps({"id": b.pk, "row_hash": "0" * 64}))
    code, out = verify_cmd()
    assert code == 1 and f"row #{b.pk} is not the row the anchor recorded" in out


def test_an_anchor_can_be_a_dotted_callable(settings, django_capture_on_commit_callbacks):
    MemoryAnchor.heads = []
    settings.KEYROTATION = {**settings.KEYROTATION, "AUDIT_ANCHOR": "tests.test_audit.MemoryAnchor"}
    a, b = committed_rows(django_capture_on_commit_callbacks, 2)
    assert [h.id for h in MemoryAnchor.heads] == [a.pk, b.pk]
    sql("DELETE FROM {table} WHERE id = %s", [b.pk])
    assert verify_cmd()[0] == 1


def test_a_failing_anchor_is_logged_and_the_append_stands(
    settings, django_capture_on_commit_callbacks, caplog
):
    settings.KEYROTATION = {**settings.KEYROTATION, "AUDIT_ANCHOR": "/nonexistent-dir/head.json"}
    with caplog.at_level("ERROR", logger="keyrotation.audit"):
        (row,) = committed_rows(django_capture_on_commit_callbacks, 1)
    assert KeyRotationAudit.objects.filter(pk=row.pk).exists()
    assert f"audit anchor not updated to row #{row.pk}: FileNotFoundError" in caplog.text


@pytest.mark.parametrize("value", ["relative/head.json", "nodots", 42])
def test_a_malformed_anchor_setting_is_a_settings_error(settings, value):
    from keyrotation.checks import check_settings

    settings.KEYROTATION = {**settings.KEYROTATION, "AUDIT_ANCHOR": value}
    errors = check_settings()
    assert [e.id for e in errors] == ["keyrotation.E001"] and "AUDIT_ANCHOR" in errors[0].msg


# -- a missing or replaced chain key ------------------------------------------------------------


def delete_chain_key():
    with connection.cursor() as cur:
        table = connection.ops.quote_name(DataKey._meta.db_table)
        cur.execute(f"DELETE FROM {table} WHERE keyring = %s", [audit_chain.AUDIT_KEYRING])


def test_a_missing_chain_key_is_a_check_error_and_no_new_key_is_made(keys):
    from keyrotation.checks import check_audit_chain_key
    from keyrotation.exceptions import KeyStateError

    assert check_audit_chain_key(databases=["default"]) == []
    delete_chain_key()
    errors = check_audit_chain_key(databases=["default"])
    assert [e.id for e in errors] == ["keyrotation.E005"]
    assert "audit chain key is missing while audit rows exist" in errors[0].msg
    with pytest.raises(KeyStateError) as info:
        audit.record("after")
    assert str(info.value) == (
        "the audit chain key is missing while audit rows exist; refusing to make a new one (every "
        "existing row would stop verifying): restore its DataKey row from a backup "
        "[keyring='_audit_chain' purpose='index']"
    )
    with pytest.raises(KeyStateError, match="audit chain key is missing"):
        lifecycle.init("another")
    assert not DataKey.objects.filter(keyring=audit_chain.AUDIT_KEYRING).exists()


def test_a_replaced_chain_key_is_named_as_such(keys):
    delete_chain_key()
    audit_chain.create_chain_key()  # as a version that made one silently would have
    code, out = verify_cmd()
    assert code == 1
    assert "chain key replaced: chain key version 1 was created after this row was sealed" in out
    assert "the row was edited" not in out
