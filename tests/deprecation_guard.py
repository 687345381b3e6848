"""A pytest plugin: catch certa's OWN uses of APIs that its dependencies deprecate.

``filterwarnings = error::FutureWarning:certa.*`` does not do this: the module in such a
filter is the module the warning is *attributed to*, and transformers' ``deprecate_kwarg``
warns with ``stacklevel=2``, which lands in ``torch.nn.modules.module`` (the ``__call__``
that dispatched to the decorated ``forward``) or in peft's pass-through ``forward`` — never
in certa. And some deprecations are not warnings at all but log lines
(``logger.warning_once("`past_key_values`/`cache_params` are deprecated...")``).

So this plugin looks at the call stack when a DeprecationWarning / FutureWarning is issued,
or a deprecation is logged by transformers / peft / accelerate: it walks up past the
library's own frames and the dispatch frames that merely pass arguments along (``forward``,
``__call__``, ``_call_impl``, decorator wrappers), and when the first frame left is in certa,
certa used the deprecated API there.

``CERTA_DEPRECATIONS=error`` (what CI sets) fails the test that reached such a site, unless the site is
listed in ``tests/deprecations_known.txt`` — the uses known today, each with the change it needs; a
listed site is reported, not failed, and an entry no test reaches any more is reported as stale, to be
deleted. ``=report`` (the default) lists
every site once at the end of the run; ``=off`` does nothing. Log-line deprecations are
printed once per process by transformers (``warning_once``); the guard wraps that method, so every
call is seen, and every site is caught, not only the first.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
import warnings
from pathlib import Path

import pytest

import certa

CERTA_DIR = str(Path(certa.__file__).resolve().parent)
LIBRARIES = ("transformers", "torch", "peft", "accelerate")
DISPATCH = {"forward", "__call__", "_call_impl", "_wrapped_call_impl", "wrapper", "wrapped_func",
            "decorate_context", "_rename_kwargs_for_bc", "__getattr__", "__getitem__", "__getattribute__", "warning_once",
            "_replace_old_cache_name"}
_MODE = os.environ.get("CERTA_DEPRECATIONS", "report")
KNOWN_FILE = Path(__file__).with_name("deprecations_known.txt")
_found: dict[str, str] = {}   # "certa/file.py:line (function)" -> message
_pending: list[str] = []      # found during the current test, not known
_known_seen: set[str] = set()


def known_sites(path: Path = KNOWN_FILE) -> dict[str, str]:
    """``certa/file.py::function`` -> the change it needs, from the known-uses file (``#`` comments)."""
    sites = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            key, _, change = line.partition(" | ")
            if key.strip() and not key.lstrip().startswith("#"):
                sites[key.strip()] = change.strip()
    return sites


_KNOWN = known_sites()


def _library(filename: str) -> str | None:
    parts = Path(filename).parts
    return next((lib for lib in LIBRARIES if "site-packages" in parts and lib in parts), None)


def certa_site(stack: list[traceback.FrameSummary], issuer: str | None) -> str | None:
    """``certa/x.py:N (function)`` when the frame that used the deprecated thing is certa's, else None."""
    for frame in reversed(stack):
        if frame.filename.startswith(CERTA_DIR):
            return f"certa/{Path(frame.filename).relative_to(CERTA_DIR).as_posix()}:{frame.lineno} ({frame.name})"
        lib = _library(frame.filename)
        internal = (frame.filename == __file__ or frame.filename.endswith(("functools.py", "contextlib.py", "warnings.py"))
                    or "/logging/" in frame.filename)
        if internal or (lib is not None and (lib == issuer or frame.name in DISPATCH)):
            continue
        return None   # another package (or a test) used it
    return None


def _known_key(site: str) -> str:
    """``certa/x.py:N (f)`` -> ``certa/x.py::f`` (line numbers move; the function does not)."""
    where, _, function = site.partition(" (")
    return f"{where.rsplit(':', 1)[0]}::{function.rstrip(')')}"


def _record(message: str, issuer: str | None) -> None:
    site = certa_site(traceback.extract_stack(), issuer)
    if site is None:
        return
    _found.setdefault(site, message)
    if _known_key(site) in _KNOWN:
        _known_seen.add(_known_key(site))
    else:
        _pending.append(f"{site} uses a deprecated API ({message[:200]})")


_original_warn = warnings.warn


def _warn(message, category=None, stacklevel=1, source=None, **kwargs):
    cls = category or (type(message) if isinstance(message, Warning) else UserWarning)
    if issubclass(cls, (DeprecationWarning, FutureWarning, PendingDeprecationWarning)):
        issuer = _library(sys._getframe(1).f_code.co_filename)
        _record(f"{cls.__name__}: {message}", issuer)
    return _original_warn(message, category, stacklevel + 1, source, **kwargs)


class _LogHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if "deprecat" in text.lower():
            _record(f"log {record.name}: {text}", record.name.split(".")[0])


def _see_every_warning_once() -> None:
    """transformers logs each deprecation once per process (``Logger.warning_once``, an lru_cache): the
    first certa site would hide the others. Record every call, then let the cached original decide
    whether to print."""
    try:
        import transformers.utils.logging  # noqa: F401  (defines Logger.warning_once)
    except ImportError:
        return
    original = getattr(logging.Logger, "warning_once", None)
    if original is None or getattr(original, "_certa_guard", False):
        return

    def warning_once(self: logging.Logger, *args, **kwargs):
        text = str(args[0]) if args else ""
        if "deprecat" in text.lower():
            _record(f"log {self.name}: {text}", self.name.split(".")[0])
        return original(self, *args, **kwargs)

    warning_once._certa_guard = True  # type: ignore[attr-defined]
    logging.Logger.warning_once = warning_once  # type: ignore[attr-defined]


def pytest_configure(config: pytest.Config) -> None:
    if _MODE == "off":
        return
    warnings.warn = _warn
    for name in LIBRARIES:
        logging.getLogger(name).addHandler(_LogHandler(level=logging.WARNING))
    _see_every_warning_once()


@pytest.fixture(autouse=True)
def _fail_on_certa_deprecations():
    _pending.clear()
    yield
    if _MODE == "error" and _pending:
        found = sorted(set(_pending))
        _pending.clear()
        pytest.fail("; ".join(found), pytrace=False)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if _found and _MODE != "off":
        terminalreporter.section("deprecated APIs used by certa's own code")
        for site, message in sorted(_found.items()):
            known = " [known: tests/deprecations_known.txt]" if _known_key(site) in _KNOWN else ""
            terminalreporter.write_line(f"{site}: {message[:160]}{known}")
    stale = sorted(set(_KNOWN) - _known_seen)
    if stale and _known_seen and _MODE != "off":   # only meaningful when the run reached the known uses at all
        terminalreporter.section("known deprecated uses this run did not reach (after a whole run: fixed? delete them)")
        for key in stale:
            terminalreporter.write_line(key)
