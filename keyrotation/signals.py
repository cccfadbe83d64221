"""Signals sent by the engine. Payloads carry ids, labels and counts, never values.

``batch_completed(sender=ReencryptionRun, run_id, model, rows, seconds)``: after each committed batch.
``run_finished(sender=ReencryptionRun, run_id, status, rows_done, rows_failed)``: when a process
ends its part of a run (``status`` is the run's status then).
``key_state_changed(sender=DataKey, keyring, purpose, version, from_state, to_state)``: after the
transaction that changed a key's lifecycle state commits (``from_state`` is None for a new key).
"""

from django.dispatch import Signal

batch_completed = Signal()
run_finished = Signal()
key_state_changed = Signal()
