"""HashiCorp Vault / OpenBao Transit KEK backend, through hvac (the only module importing hvac).

Settings::

    KEYROTATION = {"KEK": {
        "BACKEND": "vault",
        "URL": "https://vault.internal:8200",
        "TOKEN": os.environ["VAULT_TOKEN"],     # or set "CLIENT" to a callable returning an hvac.Client
        "MOUNT": "transit",                     # default "transit"
        "KEY_NAME": "keyrotation",              # default "keyrotation"
        "NAMESPACE": None,                      # Vault Enterprise namespace
        "VERIFY": True, "CERT": None,           # TLS options, passed to hvac.Client
        "TIMEOUT": 10,
    }}

The transit key is created *derived* (``derived=true``) by ``rotatekeys --init``, and every wrap,
unwrap and rewrap passes the DataKey identity as the derivation context: a wrapped key copied onto
another DataKey row does not unwrap. KEK rotation is Transit ``rotate`` then ``rewrap`` of each
DataKey row; the data keys never leave Vault in the clear during a rewrap.
"""

from __future__ import annotations

import base64
import re
import threading
from collections.abc import Callable
from typing import Any

from ..exceptions import ConfigurationError, KEKUnavailable
from ..tracebacks import forgets_locals

try:
    import hvac
    import hvac.exceptions
    import requests.exceptions
except ImportError as exc:  # pragma: no cover - exercised only without the extra installed
    raise ConfigurationError(
        'KEYROTATION["KEK"]["BACKEND"] = "vault" needs hvac: pip install "django-keyrotation[vault]"'
    ) from exc

_VERSION_RE = re.compile(rb"^vault:v(\d+):")

# Vault error bodies can echo request fields, so messages are fixed per class, never forwarded.
_REASONS: list[tuple[type[BaseException], str]] = [
    (hvac.exceptions.VaultDown, "Vault is sealed or unavailable"),
    (hvac.exceptions.Forbidden, "permission denied (token invalid, expired, revoked or lacking policy)"),
    (hvac.exceptions.Unauthorized, "unauthorized (token missing or invalid)"),
    (hvac.exceptions.InvalidPath, "transit mount or key not found"),
    (hvac.exceptions.InvalidRequest, "request rejected (wrong key, context or wrapped value)"),
    (hvac.exceptions.InternalServerError, "Vault internal error"),
    (requests.exceptions.ConnectionError, "cannot connect"),
    (requests.exceptions.Timeout, "request timed out"),
    (hvac.exceptions.VaultError, "Vault error"),
]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _reason(exc: BaseException) -> str | None:
    return next((reason for cls, reason in _REASONS if isinstance(exc, cls)), None)


class VaultTransitKEK:
    """Data keys wrapped by a Vault/OpenBao Transit key; KEK calls are counted in ``requests``.

    No frame of an exception raised by its methods holds the token or a data key, and no error of
    hvac or requests is chained to one (their frames hold the request headers, token included).
    """

    @forgets_locals  # ``options`` holds the token
    def __init__(self, options: dict[str, Any]) -> None:
        self.mount = options.get("MOUNT", "transit")
        self.key_name = options.get("KEY_NAME", "keyrotation")
        self.url = options.get("URL")
        factory: Callable[[], Any] | None = options.get("CLIENT")
        if factory is not None:
            self._client = factory()
        else:
            if not self.url or not options.get("TOKEN"):
                raise ConfigurationError(
                    'KEYROTATION["KEK"] with BACKEND "vault" needs "URL" and "TOKEN" (or "CLIENT")'
                )
            self._client = hvac.Client(
                url=self.url,
                token=options["TOKEN"],
                namespace=options.get("NAMESPACE"),
                verify=options.get("VERIFY", True),
                cert=options.get("CERT"),
                timeout=options.get("TIMEOUT", 10),
            )
        self.requests = 0  # Transit calls made by this instance (tests and benchmarks read it)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<VaultTransitKEK {self.describe()}>"

    def describe(self) -> str:
        return f"vault transit key {self.mount}/{self.key_name} at {self.url or 'custom client'}"

    def _call(self, what: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        # One call at a time: the hvac client's requests session is not safe to share between
        # threads (the engine runs two lanes per worker).
        with self._lock:
            self.requests += 1
            return self._send(what, fn, **kwargs)

    @forgets_locals  # below it, hvac's and requests' frames hold the token in the request headers
    def _send(self, what: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return fn(mount_point=self.mount, **kwargs)
        except Exception as exc:
            reason = _reason(exc)
            if reason is None:
                raise
        # Raised here, not in the handler: the client's error is then not chained to ours.
        raise KEKUnavailable(f"{what} failed on {self.describe()}: {reason}")

    def ensure_key(self) -> bool:
        """Create the derived transit key if missing; return True if it was created."""
        try:
            self._call("read key", self._client.secrets.transit.read_key, name=self.key_name)
            return False
        except KEKUnavailable:
            self._call(
                "create key",
                self._client.secrets.transit.create_key,
                name=self.key_name,
                derived=True,
                key_type="aes256-gcm96",
            )
            return True

    def current_id(self) -> str:
        data = self._call("read key", self._client.secrets.transit.read_key, name=self.key_name)
        return f"vault:{self.mount}/{self.key_name}:v{data['data']['latest_version']}"

    def check(self) -> None:
        data = self._call("read key", self._client.secrets.transit.read_key, name=self.key_name)
        if not data["data"].get("derived"):
            raise KEKUnavailable(
                f"{self.describe()} is not a derived key; create it with derived=true "
                "(`manage.py rotatekeys --init` does) so wrapped keys are bound to their identity"
            )

    def _id_of(self, ciphertext: str) -> str:
        match = _VERSION_RE.match(ciphertext.encode("ascii"))
        version = match.group(1).decode() if match else "?"
        return f"vault:{self.mount}/{self.key_name}:v{version}"

    @forgets_locals  # ``dek`` is a parameter, and ``_call`` gets it in base64
    def wrap(self, dek: bytes, context: bytes) -> tuple[bytes, str]:
        resp = self._call(
            "encrypt",
            self._client.secrets.transit.encrypt_data,
            name=self.key_name,
            plaintext=_b64(dek),
            context=_b64(context),
        )
        ciphertext = resp["data"]["ciphertext"]
        return ciphertext.encode("ascii"), self._id_of(ciphertext)

    @forgets_locals  # ``resp`` holds the data key in base64
    def unwrap(self, wrapped: bytes, context: bytes) -> bytes:
        resp = self._call(
            "decrypt",
            self._client.secrets.transit.decrypt_data,
            name=self.key_name,
            ciphertext=bytes(wrapped).decode("ascii", "replace"),
            context=_b64(context),
        )
        return base64.b64decode(resp["data"]["plaintext"])

    def rewrap(self, wrapped: bytes, context: bytes) -> tuple[bytes, str]:
        resp = self._call(
            "rewrap",
            self._client.secrets.transit.rewrap_data,
            name=self.key_name,
            ciphertext=bytes(wrapped).decode("ascii", "replace"),
            context=_b64(context),
        )
        ciphertext = resp["data"]["ciphertext"]
        return ciphertext.encode("ascii"), self._id_of(ciphertext)

    def rotate(self) -> str:
        self._call("rotate", self._client.secrets.transit.rotate_key, name=self.key_name)
        return self.current_id()
