"""The unpickler of django-cryptography values: restricted to plain types, and bounded.

A django-cryptography value is a pickle, loaded only after its HMAC (keyed by ``SECRET_KEY``)
verifies. Restricted: only builtin scalars and containers, ``datetime``, ``decimal.Decimal`` and
``uuid.UUID`` may be built. Bounded: a value forged by someone who has ``SECRET_KEY`` costs no more
than a large honest one (see :func:`restricted_loads`).
"""

from __future__ import annotations

import decimal
import functools
import io
import pickle  # noqa: S403 - restricted Unpickler below, only after the HMAC is verified
import pickletools
from typing import Any

from .exceptions import LegacyDecodeError
from .tracebacks import forgets_locals

_ALLOWED_GLOBALS = (
    {
        ("builtins", name)
        for name in (
            "set",
            "frozenset",
            "bytearray",
            "complex",
            "int",
            "float",
            "str",
            "bytes",
            "bool",
            "list",
            "dict",
            "tuple",
            "slice",
            "range",
        )
    }
    | {("datetime", name) for name in ("datetime", "date", "time", "timedelta", "timezone")}
    | {
        ("decimal", "Decimal"),
        ("uuid", "UUID"),
        ("uuid", "SafeUUID"),
        ("zoneinfo", "ZoneInfo"),
        ("copyreg", "_reconstructor"),
    }
)


# What a pickled value may build. A django-cryptography value is signed with SECRET_KEY, so these
# matter only to someone who has it; they keep a forged value from costing more than a large one.
MAX_PICKLE_BYTES = 4 * 1024 * 1024
"""Default cap: bytes of a pickle, and bytes of the ``str``/``bytes`` it builds, repeats counted."""
MAX_PICKLE_ITEMS = 1_000_000
"""Default cap: objects a pickle builds, every container element counted (repeats too)."""
MAX_DECIMAL_DIGITS = 1000
"""A pickled ``Decimal`` may have at most this many digits and an exponent within ± this."""

# Constructors the unpickler calls with arguments from the pickle: their arguments are measured
# first (``bytes(10**9)`` is a 30-byte pickle), and a Decimal is measured after it is built.
_MEASURED = {
    ("builtins", name)
    for name in (
        *("set", "frozenset", "bytearray", "complex", "int", "float", "str", "bytes"),
        *("list", "dict", "tuple", "slice", "range"),
    )
} | {("decimal", "Decimal"), ("copyreg", "_reconstructor")}

_TOO_LARGE = "pickled value is too large"
_MEMO_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"})
_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_HASHING_OPS = frozenset({"SETITEMS", "ADDITEMS", "FROZENSET"})
# Per opcode: whether it takes the items above a MARK, how many items below them (or in all) it
# pops, and what it pushes (True for a MARK).
_SHAPES = {
    op.name: (
        pickletools.markobject in op.stack_before,
        op.stack_before.index(pickletools.markobject)
        if pickletools.markobject in op.stack_before
        else len(op.stack_before),
        tuple(item is pickletools.markobject for item in op.stack_after),
    )
    for op in pickletools.opcodes
}


class _Budget:
    """Sizes measured with every repeat counted (a shared object costs each time it is used)."""

    def __init__(self, max_bytes: int, max_items: int) -> None:
        self.max_bytes, self.max_items = max_bytes, max_items
        self.bytes = self.items = 0

    def charge(self, *objects: Any, sizes: bool = False) -> None:
        """Add the expanded size of ``objects``; ``sizes``: an int is a length to allocate."""
        todo = list(objects)
        while todo:
            obj = todo.pop()
            self.items += 1
            if isinstance(obj, (str, bytes, bytearray)):
                self.bytes += len(obj)
            elif isinstance(obj, (list, tuple, set, frozenset)):
                todo += obj
            elif isinstance(obj, dict):
                todo += obj.keys()
                todo += obj.values()
            elif isinstance(obj, range):
                self.items += len(obj) if len(obj) <= self.max_items else self.max_items + 1
            elif isinstance(obj, decimal.Decimal):
                _check_decimal(obj)
            elif sizes and isinstance(obj, int) and not isinstance(obj, bool):
                self.bytes += max(obj, 0)
            if self.items > self.max_items or self.bytes > self.max_bytes:
                raise LegacyDecodeError(_TOO_LARGE)


def _check_decimal(value: decimal.Decimal) -> None:
    # int(Decimal("1e500000")) takes seconds: the digits and the exponent are capped instead.
    _sign, digits, exponent = value.as_tuple()
    if isinstance(exponent, int) and (len(digits) > MAX_DECIMAL_DIGITS or abs(exponent) > MAX_DECIMAL_DIGITS):
        raise LegacyDecodeError(
            f"pickled Decimal is too large (over {MAX_DECIMAL_DIGITS} digits or exponent)"
        )


def _check_opcodes(data: bytes, max_items: int) -> None:
    """Read the opcodes without building anything, and refuse a pickle that would build too much.

    The C unpickler allocates a counted string or a memo slot before it checks the data is there
    (a 14-byte pickle can ask for gigabytes), and builds and hashes shared tuples as often as they
    are referenced: ``pickletools.genops`` reads every length against the data, and a weight per
    stack item (objects it holds, repeats counted) bounds what the real load will build and hash.
    """
    stack: list[int | None] = []  # weights; None is a MARK
    memo: dict[int, int | None] = {}
    hashed = 0
    for op, arg, _pos in pickletools.genops(data):
        name = op.name
        if name in _MEMO_OPS:
            index = len(memo) if name == "MEMOIZE" else arg
            if index > len(memo):  # pickle numbers its memo 0, 1, 2...: a large index is a bomb
                raise LegacyDecodeError("pickled value has an out-of-order memo")
            memo[index] = stack[-1]
            continue
        if name in _GET_OPS:
            stack.append(memo[arg])
            continue
        if name == "DUP":
            stack.append(stack[-1])
            continue
        marked, below, pushes = _SHAPES[name]
        if name == "SETITEM":  # the key is hashed: it and its value are what the dict gains
            hashed += (stack[-1] or 0) + (stack[-2] or 0)
        weight = 1
        if marked:  # the items above the MARK: what TUPLE, LIST, APPENDS, SETITEMS... take
            item = stack.pop()
            while item is not None:
                weight += item
                item = stack.pop()
            if name in _HASHING_OPS:
                hashed += weight - 1
        for _ in range(below):
            weight += stack.pop() or 0
        if weight > max_items or hashed > 4 * max_items:
            raise LegacyDecodeError(_TOO_LARGE)
        for is_mark in pushes:
            stack.append(None if is_mark else weight)


class _RestrictedUnpickler(pickle.Unpickler):  # noqa: S301 - only the globals listed above
    def __init__(self, file: Any, budget: _Budget) -> None:
        super().__init__(file)
        self._budget = budget

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise LegacyDecodeError(f"pickled value uses a forbidden type {module}.{name}")
        found = super().find_class(module, name)
        if (module, name) in _MEASURED:
            return functools.partial(self._build, found, name in ("bytes", "bytearray"))
        return found

    def _build(self, constructor: Any, sizes: bool, *args: Any) -> Any:
        self._budget.charge(*args, sizes=sizes)
        value = constructor(*args)
        if isinstance(value, decimal.Decimal):
            _check_decimal(value)
        return value


@forgets_locals  # ``data`` is the plaintext pickle
def restricted_loads(
    data: bytes, *, max_bytes: int = MAX_PICKLE_BYTES, max_items: int = MAX_PICKLE_ITEMS
) -> Any:
    """``pickle.loads`` allowing only builtin scalars/containers, datetime, decimal and uuid.

    Bounded: a pickle over ``max_bytes``, one that builds ``str``/``bytes`` totalling over
    ``max_bytes`` or more than ``max_items`` objects (every repeat of a shared object counted),
    or a ``Decimal`` beyond :data:`MAX_DECIMAL_DIGITS` is refused before it is built.

    Raises:
        LegacyDecodeError: a forbidden type, a malformed pickle, or a value over the caps.
    """
    if len(data) > max_bytes:
        raise LegacyDecodeError(_TOO_LARGE)
    try:
        _check_opcodes(data, max_items)
        value = _RestrictedUnpickler(io.BytesIO(data), _Budget(max_bytes, max_items)).load()
        _Budget(max_bytes, max_items).charge(value)  # what the field's to_python will walk
        return value
    except LegacyDecodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - any malformed pickle
        raise LegacyDecodeError(f"pickled value does not load ({type(exc).__name__})") from None
