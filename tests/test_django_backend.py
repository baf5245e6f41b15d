"""``smtpsubmit.django.EmailBackend`` against Django's own backend tests and real servers.

Django tests every email backend with ``BaseEmailBackendTests`` (its
``tests/mail/tests.py``); ``SmtpsubmitBackendTests`` runs that very class,
fetched for the installed Django version by ``scripts/fetch-django-tests.py``,
against this backend and Django's own aiosmtpd test server. Two upstream tests
send to addresses without a domain, which this library refuses by design:
they are replaced by tests of the documented difference. The rest of the
module checks the settings mapping, ``fail_silently``, connection reuse and
Bcc handling against aiosmtpd and the real Postfix.
"""

from __future__ import annotations

import email
import email.policy
import importlib.util
import sys
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import django
import pytest
from django.conf import settings

if not settings.configured:
    settings.configure(
        EMAIL_HOST="127.0.0.1",
        DEFAULT_CHARSET="utf-8",
        DEFAULT_FROM_EMAIL="webmaster@localhost",
        INSTALLED_APPS=[],
        USE_TZ=True,
    )
    django.setup()

from django.core import mail
from django.core.mail import EmailMessage, EmailMultiAlternatives
from django.test import override_settings
from django.utils.translation import gettext_lazy

from smtpsubmit import ConnectError, MessageError, Option, Outbox, Server
from smtpsubmit.django import EmailBackend, server_from_settings
from tests.servers.aiosmtpd_server import AUTH_PASSWORD, AUTH_USER, AiosmtpdServer

BACKEND = "smtpsubmit.django.EmailBackend"


def _upstream() -> ModuleType:
    """Django's ``tests/mail/tests.py`` for the installed version (see the module docstring)."""
    path = Path(sys.prefix) / "django-upstream-tests" / django.__version__ / "mail" / "tests.py"
    if not path.is_file():
        raise RuntimeError(
            f"Django's mail tests are missing ({path}): run "
            "`python scripts/fetch-django-tests.py` (make test does)"
        )
    spec = importlib.util.spec_from_file_location("django_upstream_mail_tests", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


upstream = _upstream()


class SmtpsubmitBackendTests(upstream.BaseEmailBackendTests, upstream.SMTPBackendTestsBase):  # type: ignore[misc,name-defined]
    """Every generic backend test Django runs, through this backend to aiosmtpd."""

    email_backend = BACKEND

    def setUp(self) -> None:
        super().setUp()
        self.smtp_handler.flush_mailbox()
        self.addCleanup(self.smtp_handler.flush_mailbox)

    def flush_mailbox(self) -> None:
        self.smtp_handler.flush_mailbox()

    def get_mailbox_content(self) -> list[Any]:
        return list(self.smtp_handler.mailbox)

    # Documented difference: an address must have a domain (Django's backend passes
    # "django" to the server as it is). Upstream sends to "django" here.
    def test_recipient_without_domain(self) -> None:
        with pytest.raises(ValueError, match="django"):
            mail.send_mail("Subject", "Content", "tester@example.com", ["django"])
        assert (
            mail.send_mail(
                "Subject", "Content", "tester@example.com", ["django"], fail_silently=True
            )
            == 0
        )
        assert self.get_mailbox_content() == []

    # Upstream uses lazy strings without domains; the lazy part is what it tests.
    def test_lazy_addresses(self) -> None:
        _ = gettext_lazy
        assert mail.send_mail("Subject", "Content", _("tester@example.com"), [_("a@example.com")])
        message = self.get_the_message()
        assert message.get("from") == "tester@example.com"
        assert message.get("to") == "a@example.com"
        self.flush_mailbox()
        m = EmailMessage(
            from_email=_("tester@example.com"),
            to=[_("to1@example.com")],
            cc=[_("cc1@example.com")],
            bcc=[_("bcc@example.com")],
            reply_to=[_("reply@example.com")],
        )
        m.send()
        message = self.get_the_message()
        assert message.get("cc") == "cc1@example.com"
        assert message.get("bcc") is None


def test_the_upstream_suite_is_really_run() -> None:
    """Guard against an empty upstream class: Django's generic tests must all be there."""
    names = [n for n in dir(SmtpsubmitBackendTests) if n.startswith("test_")]
    assert len(names) >= 15, names
    for name in ("test_send", "test_send_many", "test_idn_send", "test_use_as_contextmanager"):
        assert name in names


# --------------------------------------------------------------------------- settings


def test_settings_map_to_a_server() -> None:
    with override_settings(
        EMAIL_HOST="mail.example.org",
        EMAIL_PORT=587,
        EMAIL_HOST_USER="me",
        EMAIL_HOST_PASSWORD="S3cr3t-CANARY",
        EMAIL_USE_TLS=True,
        EMAIL_TIMEOUT=7,
    ):
        server = server_from_settings()
    assert (server.host, server.port, server.username, server.timeout) == (
        "mail.example.org",
        587,
        "me",
        7.0,
    )
    assert Option.SECURE in server.options and Option.EXTENDED in server.options
    assert "S3cr3t-CANARY" not in repr(EmailBackend(host="mail.example.org").server)


def test_use_ssl_means_implicit_tls_and_excludes_use_tls() -> None:
    with override_settings(EMAIL_USE_SSL=True):
        assert Option.SECURE_IMPLICIT in server_from_settings().options
        assert server_from_settings().effective_port == 25  # EMAIL_PORT's default stays
    with pytest.raises(ValueError, match="mutually exclusive"):
        EmailBackend(use_tls=True, use_ssl=True)


def test_arguments_win_over_settings() -> None:
    backend = EmailBackend(host="other.example", port=2525, username="u", password="p")
    assert (backend.server.host, backend.server.port, backend.server.username) == (
        "other.example",
        2525,
        "u",
    )


def test_smtpsubmit_server_url_wins_over_email_settings() -> None:
    with override_settings(SMTPSUBMIT_SERVER="smtp+starttls://me:p%40ss@relay.example:2587"):
        server = server_from_settings()
    assert server == Server.from_url("smtp+starttls://me:p%40ss@relay.example:2587")
    assert server.password == "p@ss"


# --------------------------------------------------------------------------- behaviour


def _settings_for(server: AiosmtpdServer, **extra: Any) -> Any:
    return override_settings(
        EMAIL_BACKEND=BACKEND, EMAIL_HOST=server.host, EMAIL_PORT=server.port, **extra
    )


def test_one_connection_for_a_batch_and_bcc_only_in_the_envelope(
    aiosmtpd_server: AiosmtpdServer,
) -> None:
    messages = [
        EmailMessage(
            "s", f"body {i}", "from@example.com", [f"to{i}@example.com"], bcc=["hidden@example.com"]
        )
        for i in range(5)
    ]
    with _settings_for(aiosmtpd_server):
        backend = mail.get_connection()
        with backend:
            client = backend.connection
            assert backend.send_messages(messages) == 5
            assert backend.connection is client  # reused, not reopened per message
        assert backend.connection is None
    received = aiosmtpd_server.wait_for(5)
    for i, message in enumerate(received):
        assert message.rcpt_tos == [f"to{i}@example.com", "hidden@example.com"]
        assert b"hidden@example.com" not in message.original_content
        assert f"body {i}".encode() in message.original_content


def test_html_alternative_and_attachment_arrive_intact(aiosmtpd_server: AiosmtpdServer) -> None:
    message = EmailMultiAlternatives("Report", "text", "from@example.com", ["to@example.com"])
    message.attach_alternative("<p>html</p>", "text/html")
    message.attach("data.bin", bytes(range(256)), "application/octet-stream")
    with _settings_for(aiosmtpd_server):
        assert message.send() == 1
    (received,) = aiosmtpd_server.wait_for(1)
    parsed = email.message_from_bytes(received.original_content, policy=email.policy.default)
    assert parsed.get_content_type() == "multipart/mixed"
    body = parsed.get_body(preferencelist=("html",))
    assert body is not None and body.get_content().strip() == "<p>html</p>"
    (attachment,) = list(parsed.iter_attachments())
    assert attachment.get_filename() == "data.bin"
    assert attachment.get_content() == bytes(range(256))


def test_unreachable_server_raises_or_returns_zero_with_fail_silently() -> None:
    with override_settings(EMAIL_BACKEND=BACKEND, EMAIL_HOST="127.0.0.1", EMAIL_PORT=1):
        with pytest.raises(ConnectError):
            EmailMessage("s", "b", "from@example.com", ["to@example.com"]).send()
        silent = EmailMessage("s", "b", "from@example.com", ["to@example.com"])
        assert silent.send(fail_silently=True) == 0


def test_authentication_from_settings(aiosmtpd_auth_plain: AiosmtpdServer) -> None:
    with _settings_for(
        aiosmtpd_auth_plain, EMAIL_HOST_USER=AUTH_USER, EMAIL_HOST_PASSWORD=AUTH_PASSWORD
    ):
        assert mail.send_mail("s", "b", "from@example.com", ["to@example.com"]) == 1
    (received,) = aiosmtpd_auth_plain.wait_for(1)
    assert received.auth_login == AUTH_USER


def test_refused_recipient_counts_as_not_sent_with_fail_silently(
    aiosmtpd_server: AiosmtpdServer,
) -> None:
    with _settings_for(aiosmtpd_server):
        with pytest.raises(MessageError):
            mail.send_mail("s", "b", "from@example.com", ["bad address@"])
        assert (
            mail.send_mail("s", "b", "from@example.com", ["bad address@"], fail_silently=True) == 0
        )
        assert mail.send_mail("s", "b", "from@example.com", ["ok@example.com"]) == 1
    assert len(aiosmtpd_server.wait_for(1)) == 1


@pytest.mark.postfix
def test_delivered_through_real_postfix_with_starttls_and_auth(postfix: Any) -> None:
    user = "alice@example.test"
    server = Server(
        "127.0.0.1",
        user,
        postfix.users[user],
        postfix.submission,
        options=Option.SECURE,
        ca_file=str(postfix.ca_file),
    )
    token = uuid.uuid4().hex
    with override_settings(EMAIL_BACKEND=BACKEND, SMTPSUBMIT_SERVER=server):
        sent = mail.send_mass_mail([(f"s {token}", "body", user, ["bob@example.test"])] * 3)
    assert sent == 3
    deadline = time.monotonic() + 10
    while sum(token.encode() in m for m in postfix.maildir_messages("bob")) < 3:
        assert time.monotonic() < deadline, postfix.maillog()
        time.sleep(0.02)


def test_smtpsubmit_outbox_enqueues_and_a_worker_delivers(
    aiosmtpd_server: AiosmtpdServer, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'outbox.sqlite3'}"
    with override_settings(EMAIL_BACKEND=BACKEND, SMTPSUBMIT_OUTBOX=url, EMAIL_PORT=1):
        sent = mail.send_mass_mail(
            [("s", f"body {i}", "from@example.com", [f"to{i}@example.com"]) for i in range(3)]
        )
        assert sent == 3  # durable in the outbox; nothing listens on EMAIL_PORT=1
        with pytest.raises(ValueError):
            mail.send_mail("s", "b", "from@example.com", ["django"])
    assert aiosmtpd_server.messages == []
    outbox = Outbox(
        url, routes={"default": Server(aiosmtpd_server.host, port=aiosmtpd_server.port)}
    )
    assert outbox.stats()["states"].get("queued") == 3
    outbox.run(stop_when_idle=True)
    received = aiosmtpd_server.wait_for(3)
    assert sorted(m.rcpt_tos[0] for m in received) == [f"to{i}@example.com" for i in range(3)]
    assert outbox.stats()["states"].get("sent") == 3
