"""The sync and async drivers must not drift: same requests handled, same public API."""

from __future__ import annotations

import inspect
import typing

from smtpsubmit import AsyncClient, Client, asubmit_message, submit_message
from smtpsubmit.session import Op


def test_both_drivers_handle_every_session_request() -> None:
    names = {cls.__name__ for cls in typing.get_args(Op)}
    assert names == {"Send", "Receive", "StartTls"}
    for run in (Client._run, AsyncClient._run):
        source = inspect.getsource(run)
        for name in names:
            assert f"isinstance(op, {name})" in source, (run.__qualname__, name)


def public(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in vars(cls).items()
        if callable(member) and not name.startswith("_")
    }


def test_same_public_methods_and_parameters() -> None:
    sync, asynchronous = public(Client), public(AsyncClient)
    assert sync.keys() == asynchronous.keys()
    for name, signature in sync.items():
        assert list(signature.parameters) == list(asynchronous[name].parameters), name
        assert inspect.iscoroutinefunction(getattr(AsyncClient, name)), name


def test_submit_functions_have_the_same_signature() -> None:
    assert inspect.signature(submit_message) == inspect.signature(asubmit_message)
    assert inspect.iscoroutinefunction(asubmit_message)


def test_every_session_call_is_guarded_against_concurrent_use() -> None:
    """A second call while one is in flight must raise ClientBusyError before writing
    (issue 13.4): every public method that talks to the server takes the guard."""
    for cls in (Client, AsyncClient):
        for name, member in vars(cls).items():
            if callable(member) and not name.startswith("_"):
                assert "self._exclusive(" in inspect.getsource(member), (cls.__name__, name)
