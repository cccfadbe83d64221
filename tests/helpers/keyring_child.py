"""A second process for the keyring tests: answers commands on stdin, one per line.

``active``         -> the active encrypt version as this process's cache sees it
``decrypt <hex>``  -> ``<plaintext hex> <elapsed ms>``
"""

import os
import sys
import time

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
django.setup()

from keyrotation import keyring  # noqa: E402

ring = keyring.get_keyring("default", "encrypt")
ring.encrypt("a.B.c", b"warm")  # list the keyring and unwrap the active key now
print("ready", ring.active_version, flush=True)
for line in sys.stdin:
    cmd, _, arg = line.strip().partition(" ")
    if cmd == "active":
        print(keyring.get_keyring("default", "encrypt").active_version, flush=True)
    elif cmd == "decrypt":
        start = time.monotonic()
        plaintext = keyring.decrypt("default", "a.B.c", bytes.fromhex(arg))
        print(plaintext.hex(), round((time.monotonic() - start) * 1000, 1), flush=True)
    else:
        break
