"""Keeping keys and plaintexts out of tracebacks, and so out of error reports.

An exception keeps every frame it passed through, and each frame its local variables, until it is
reported: Django's technical 500 page (``DEBUG = True``) shows them all; the admin e-mail shows
them unless the function is decorated with ``sensitive_variables``, which Django honours only with
``DEBUG = False``; error trackers that record local variables ignore that decorator altogether.
Saying which variables are sensitive is therefore not enough: the frames that hold a key or a
plaintext must not hold it any more when an exception leaves them. The library does it two ways:

* by construction: a frame drops the secret (``del``) or lets a helper hold it, and raises
  outside the ``except`` block, so that the original error, whose message may quote the value,
  is not even chained (``raise ... from None`` only hides it from the printed traceback);
* with :func:`forgets_locals` where a secret is a parameter (a data key given to ``wrap``) or where
  the frames below belong to code the library does not control (a KEK client, a legacy library's
  primitives): when an exception leaves the function, the local variables of its frame and of
  every frame below it are cleared, and so are those of the exceptions chained to it.

What stays is what error reports need: the exception type, its message (which names model, field,
pk and key version, never a value), and the file, line and function of every frame.
"""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from django.views.decorators.debug import sensitive_variables

F = TypeVar("F", bound=Callable[..., Any])


def forget(exc: BaseException, keep: BaseException | None = None) -> None:
    """Clear the local variables of the finished frames of ``exc`` and of every exception chained
    to it, and drop the contexts that ``raise ... from None`` suppressed (their messages and
    frames may hold the value that failed).

    Frames still executing (the caller's, catching ``exc``) are left as they are. ``keep`` is an
    exception the caller was already handling when the failing call began: it and what is chained
    to it belong to the caller and are not touched.
    """
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or current is keep or id(current) in seen:
            continue
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)
        if current.__suppress_context__:
            current.__context__ = None
        todo += [current.__cause__, current.__context__]


def forgets_locals(func: F) -> F:
    """Decorator: an exception leaving ``func`` carries no local variable of it or of what it called.

    Django's ``sensitive_variables()`` is applied too (every variable), for a report rendered
    while the frames still exist. Meant for functions that handle keys or plaintexts and are not
    on a per-value hot path (the wrapper costs a function call).
    """
    hidden = sensitive_variables()(func)

    @functools.wraps(func)
    def forgetting(*args: Any, **kwargs: Any) -> Any:
        outer = sys.exc_info()[1]
        try:
            return hidden(*args, **kwargs)
        except BaseException as exc:
            del args, kwargs  # this frame is in the traceback too
            forget(exc, keep=outer)
            del outer
            raise

    return forgetting  # type: ignore[return-value]
