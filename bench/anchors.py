"""``python -m bench.anchors post_office|mailer N``: what users run today, in its own process.

The two Django apps Python sites queue their mail with, draining N queued 2 KB messages
into the bench's smtp-sink from the bench's PostgreSQL (the settings in
``bench/django_settings.py``; the database, port and sink come from the environment).
django-post_office: ``send_queued_mail_until_done`` (its ``send_queued_mail`` command),
batches of 100 and 5 threads; django-mailer: ``mailer.engine.send_all()`` (its
``send_mail`` command). Enqueueing is not timed. Prints the drain rate as JSON.
"""

from __future__ import annotations

import json
import os
import sys
import time

BODY = ("The quick brown fox jumps over the lazy dog, again and again. " * 32)[:1900]


def main(argv: list[str]) -> None:
    kind, n = argv[0], int(argv[1])
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.django_settings")
    import django
    from django.core.management import call_command
    from django.db import transaction

    django.setup()
    call_command("migrate", verbosity=0)
    if kind == "post_office":
        from post_office import mail

        for start in range(0, n, 1000):
            mail.send_many(
                [
                    {
                        "sender": "bench@example.org",
                        "recipients": ["sink@example.net"],
                        "subject": f"anchor {i}",
                        "message": BODY,
                    }
                    for i in range(start, min(n, start + 1000))
                ]
            )
        lockfile = os.path.join(os.environ.get("BENCH_WORKDIR", "/tmp"), "post_office")
        started = time.perf_counter()
        mail.send_queued_mail_until_done(lockfile=lockfile, processes=1)
    elif kind == "mailer":
        import mailer
        from mailer import engine

        with transaction.atomic():
            for i in range(n):
                mailer.send_mail(f"anchor {i}", BODY, "bench@example.org", ["sink@example.net"])
        started = time.perf_counter()
        engine.send_all()
    else:
        raise SystemExit(f"unknown anchor {kind!r}")
    elapsed = time.perf_counter() - started
    sys.stdout.write(json.dumps({"anchor": kind, "messages": n, "rate": n / elapsed}) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
