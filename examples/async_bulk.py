"""Many messages from asyncio: a few connections, many messages on each.

Each worker opens one ``AsyncClient`` (one SMTP session) and sends messages from a shared
queue on it, so the greeting, EHLO, TLS and AUTH happen once per connection rather than
once per message. A failed message does not stop the others.

    SMTP_URL="smtp+starttls://me%40example.org:app-password@smtp.example.org" \\
        MAIL_FROM=me@example.org MAIL_TO="a@example.org,b@example.org" BULK_COUNT=20 \\
        python examples/async_bulk.py

Environment: ``SMTP_URL`` (default ``smtp://localhost``; see examples/plain.py),
``MAIL_FROM``, ``MAIL_TO`` (recipients separated by ``,``; the messages go to them in turn),
``BULK_COUNT`` (messages, default 10), ``BULK_CONNECTIONS`` (default 2).
"""

import asyncio
import os

from smtpsubmit import AsyncClient, DeliveryStatusUnknown, Message, Server, SmtpError


async def worker(
    server: Server,
    queue: asyncio.Queue[Message],
    sent: list[str],
    failed: list[tuple[str, SmtpError]],
) -> None:
    async with AsyncClient(server) as client:
        while not queue.empty():
            message = queue.get_nowait()
            try:
                result = await client.send(message)
            except DeliveryStatusUnknown as exc:
                # The message may have been delivered: do not send it again blindly.
                failed.append((message.message_id, exc))
            except SmtpError as exc:
                failed.append((message.message_id, exc))
            else:
                sent.append(result.message_id or "")
                continue
            if not client.is_connected:  # the connection was lost: open a new one
                await client.connect()


async def main() -> None:
    server = Server.from_url(os.environ.get("SMTP_URL", "smtp://localhost"))
    sender = os.environ.get("MAIL_FROM", "me@example.org")
    recipients = os.environ.get("MAIL_TO", "you@example.org").split(",")
    count = int(os.environ.get("BULK_COUNT", "10"))
    queue: asyncio.Queue[Message] = asyncio.Queue()
    for n in range(count):
        queue.put_nowait(
            Message(
                sender=sender,
                to=recipients[n % len(recipients)].strip(),
                subject=f"Bulk message {n + 1} of {count}",
                text=f"This is message {n + 1} of {count}.\n",
            )
        )
    sent: list[str] = []
    failed: list[tuple[str, SmtpError]] = []
    connections = int(os.environ.get("BULK_CONNECTIONS", "2"))
    await asyncio.gather(*(worker(server, queue, sent, failed) for _ in range(connections)))
    print(f"sent {len(sent)} of {count} messages over {connections} connection(s)")
    for message_id, exc in failed:
        retry = "retry later" if exc.is_temporary else "do not retry"
        print(f"failed <{message_id}> at {exc.stage}: {exc} ({retry})")


if __name__ == "__main__":
    asyncio.run(main())
