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

Each wrapped key's ``DataKey.kek_id`` names the Transit key that wrapped it and where:
``vault://<host>:<port>/<namespace/><mount>/<key name>:v<N>`` (no credentials: the URL's host and
port only), so that a project switching between two Vaults, mounts or keys (``PREVIOUS``, see
docs/vault.md) knows which one wrapped each key.

The transit key is created *derived* (``derived=true``) by ``rotatekeys --init``, and every wrap,
unwrap and rewrap passes the DataKey identity as the derivation context: a wrapped key copied onto
another DataKey row does not unwrap. A key that is not derived is refused by all of them (and by
``rotatekeys --init``), since Transit would ignore the context. KEK rotation is Transit ``rotate``
then ``rewrap`` of each DataKey row; the data keys never leave Vault in the clear during a rewrap.
"""

from __future__ import annotations

import base64
import re
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from ..exceptions import ConfigurationError, KEKRefused, KEKUnavailable, KEKUnreachable
from ..tracebacks import forgets_locals
from .identity import Claim

try:
    import hvac
    import hvac.exceptions
    import requests.exceptions
except ImportError as exc:  # pragma: no cover - exercised only without the extra installed
    raise ConfigurationError(
        'KEYROTATION["KEK"]["BACKEND"] = "vault" needs hvac: pip install "django-keyrotation[vault]"'
    ) from exc

_VERSION_RE = re.compile(rb"^vault:v(\d+):")
_ID_VERSION_RE = re.compile(r":v(\d+|\?)$")
_DEFAULT_PORTS = {"https": 443, "http": 80}


def address(url: str | None) -> str:
    """``host:port`` of a Vault URL, lower-cased, without credentials or path ("unknown" if none)."""
    if not url:
        return "unknown"
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return "unknown"
    if not host:
        return "unknown"
    if ":" in host:  # IPv6
        host = f"[{host}]"
    return f"{host}:{port or _DEFAULT_PORTS.get(parts.scheme, 8200)}"


# What each failure is called, and whether waiting can help (True: KEKUnreachable, retried by the
# engine; False: KEKRefused, reported at once). First match wins, so subclasses come first. Vault
# error bodies can echo request fields, so the words are fixed per class, never forwarded.
_V, _R = hvac.exceptions, requests.exceptions
_FAILURES: list[tuple[type[BaseException] | tuple[type[BaseException], ...], str, bool]] = [
    (_V.VaultDown, "Vault is sealed or unavailable", True),
    (_V.RateLimitExceeded, "rate limited by Vault (429)", True),
    (_V.BadGateway, "bad gateway in front of Vault (502)", True),
    (_V.InternalServerError, "Vault internal error", True),
    (_V.VaultNotInitialized, "Vault is not initialized", True),
    (_V.PreconditionFailed, "Vault replica not up to date yet (412)", True),
    (_V.UnexpectedError, "unexpected response from Vault", True),
    (_V.Forbidden, "permission denied (token invalid, expired, revoked or lacking policy)", False),
    (_V.Unauthorized, "unauthorized (token missing or invalid)", False),
    (_V.InvalidPath, "transit mount or key not found", False),
    (_V.InvalidRequest, "request rejected (wrong key, context or wrapped value)", False),
    (_V.VaultError, "Vault error", False),
    (_R.SSLError, "TLS handshake or certificate verification failed", False),
    (_R.ConnectionError, "cannot connect", True),
    (_R.Timeout, "request timed out", True),
    (_R.ChunkedEncodingError, "connection broken during the response", True),
    ((_R.InvalidURL, _R.MissingSchema, _R.InvalidSchema), "invalid URL", False),
    (_R.RequestException, "request failed", True),
]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class VaultTransitKEK:
    """Data keys wrapped by a Vault/OpenBao Transit key; KEK calls are counted in ``requests``.

    Every wrap, unwrap and rewrap first makes sure the Transit key is *derived*: its configuration
    is read once per instance (one instance per process, see :func:`keyrotation.keyring.kek_backend`)
    and a key that is not derived is refused with :class:`~keyrotation.exceptions.KEKRefused`.
    Failures are :class:`~keyrotation.exceptions.KEKUnreachable` when waiting can help (connection
    refused or reset, timeout, sealed, 5xx, 429) and :class:`~keyrotation.exceptions.KEKRefused`
    otherwise (permission denied, invalid token, unknown mount or key, rejected request).

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
        namespace = (options.get("NAMESPACE") or "").strip("/")
        where = self.url or getattr(self._client, "url", None)
        # What kek_id names: the key's address and path (never the token, the URL's user or path).
        path = f"{namespace}/{self.mount}" if namespace else self.mount
        self.identity = f"vault://{address(where)}/{path}/{self.key_name}"
        self.requests = 0  # Transit calls made by this instance (tests and benchmarks read it)
        self._lock = threading.Lock()
        # Set once the key's configuration was read and found derived. Transit fixes `derived`
        # when a key is created and cannot change it, so the answer stays true for this key.
        self._derived = False

    def __repr__(self) -> str:
        return f"<VaultTransitKEK {self.describe()}>"

    def describe(self) -> str:
        return f"vault transit key {self.mount}/{self.key_name} at {self.url or 'custom client'}"

    def _call(self, what: str, fn: Callable[..., Any], *, missing_ok: bool = False, **kwargs: Any) -> Any:
        # One call at a time: the hvac client's requests session is not safe to share between
        # threads (the engine runs two lanes per worker).
        with self._lock:
            self.requests += 1
            return self._send(what, fn, missing_ok, **kwargs)

    @forgets_locals  # below it, hvac's and requests' frames hold the token in the request headers
    def _send(self, what: str, fn: Callable[..., Any], missing_ok: bool, **kwargs: Any) -> Any:
        try:
            return fn(mount_point=self.mount, **kwargs)
        except Exception as exc:
            if missing_ok and isinstance(exc, hvac.exceptions.InvalidPath):
                return None
            failure = self._failure(what, exc)
            if failure is None:
                raise
        # Raised here, not in the handler: the client's error is then not chained to ours.
        raise failure

    def _failure(self, what: str, exc: BaseException) -> KEKUnavailable | None:
        for classes, reason, transient in _FAILURES:
            if isinstance(exc, classes):
                kind = KEKUnreachable if transient else KEKRefused
                return kind(f"{what} failed on {self.describe()}: {reason}")
        return None

    def _not_derived(self) -> KEKRefused:
        return KEKRefused(
            f"{self.describe()} is not a derived key, so wrapped data keys would not be bound to "
            "their DataKey identity; Transit cannot make an existing key derived: create a new one "
            f"with `bao write -f {self.mount}/keys/<new name> derived=true` (Vault: `vault write ...`; "
            "hvac: `client.secrets.transit.create_key(name=..., derived=True)`) or let "
            '`manage.py rotatekeys --init` create it, and set KEYROTATION["KEK"]["KEY_NAME"] to it'
        )

    def _read_config(self, *, missing_ok: bool = False) -> dict | None:
        """The key's configuration (one Transit call); KEKRefused if it is not derived."""
        resp = self._call(
            "read key", self._client.secrets.transit.read_key, missing_ok=missing_ok, name=self.key_name
        )
        if resp is None:
            return None
        data = resp["data"]
        if not data.get("derived"):
            raise self._not_derived()
        self._derived = True
        return data

    def _require_derived(self) -> None:
        if not self._derived:
            self._read_config()

    def ensure_key(self) -> bool:
        """Create the derived transit key if missing; return True if it was created.

        Raises:
            KEKRefused: the key exists and is not derived, or the token may not read or create it.
            KEKUnreachable: Vault could not be reached.
        """
        if self._read_config(missing_ok=True) is not None:
            return False
        self._call(
            "create key",
            self._client.secrets.transit.create_key,
            name=self.key_name,
            derived=True,
            key_type="aes256-gcm96",
        )
        self._derived = True
        return True

    def current_id(self) -> str:
        data = self._call("read key", self._client.secrets.transit.read_key, name=self.key_name)
        return f"{self.identity}:v{data['data']['latest_version']}"

    def claim(self, kek_id: str, wrapped: bytes) -> Claim:
        """Whether this Transit key wrapped ``wrapped``, from its kek id (no Vault call).

        ``EXACT``: same address, mount and key name. ``POSSIBLE``: same mount and key name, but the
        id names another address (the same server under another name?) or none (written before
        ids named it). ``NO``: another mount or key name, a local KEK's id, or not Transit's bytes.
        """
        if not bytes(wrapped).startswith(b"vault:v"):
            return Claim.NO
        name = _ID_VERSION_RE.sub("", kek_id)
        path = f"{self.mount}/{self.key_name}"
        if name.startswith("vault://"):
            _, _, rest = name[len("vault://") :].partition("/")
            if rest != self.identity.split("/", 3)[3]:
                return Claim.NO
            return Claim.EXACT if name == self.identity else Claim.POSSIBLE
        if name.startswith("vault:"):  # vault:<mount>/<key>, as older versions wrote it
            return Claim.POSSIBLE if name[len("vault:") :] == path else Claim.NO
        if name.startswith("local:"):
            return Claim.NO
        return Claim.POSSIBLE

    def check(self) -> None:
        """Read the key's configuration now (not from the cache): reachable, readable, derived."""
        self._read_config()

    def _id_of(self, ciphertext: str) -> str:
        match = _VERSION_RE.match(ciphertext.encode("ascii"))
        version = match.group(1).decode() if match else "?"
        return f"{self.identity}:v{version}"

    @forgets_locals  # ``dek`` is a parameter, and ``_call`` gets it in base64
    def wrap(self, dek: bytes, context: bytes) -> tuple[bytes, str]:
        self._require_derived()
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
        self._require_derived()
        resp = self._call(
            "decrypt",
            self._client.secrets.transit.decrypt_data,
            name=self.key_name,
            ciphertext=bytes(wrapped).decode("ascii", "replace"),
            context=_b64(context),
        )
        return base64.b64decode(resp["data"]["plaintext"])

    def rewrap(self, wrapped: bytes, context: bytes) -> tuple[bytes, str]:
        self._require_derived()
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
