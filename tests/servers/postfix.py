"""A private, throw-away Postfix + Dovecot (SASL) on 127.0.0.1, as a session-scoped fixture.

Recipe and pitfalls: /work/shared/notes/real-servers.md. The system packages come from
``scripts/install-system-deps.sh``; when they are missing the fixture fails (it never skips).

Layout of the temp dir ``root``::

    conf/      main.cf, master.cf, vmailbox, header_checks, recipient_access (mtimes backdated)
    queue/     queue_directory (queue/private/auth is Dovecot's auth socket)
    data/      data_directory (owned by postfix)
    mail/      virtual(8) Maildirs, mail/<user>/new/...
    out/       byte-exact captures of mail for @capture.test, out/<queue_id>-<recipient>
    tls/       ca.pem, server.pem, server.key (made by trustme)
    dovecot/   dovecot.conf, passwd, log, run/ (base_dir), state/
    maillog    Postfix log (via postlogd)

Ports (all on 127.0.0.1; attribute names of :class:`PostfixServer`):

``plain``         port-25-like: STARTTLS offered (``may``), AUTH only after STARTTLS
``submission``    STARTTLS required (``encrypt``; MAIL before STARTTLS -> 530), AUTH after TLS
``smtps``         implicit TLS (wrappermode) + AUTH
``plain_auth``    no TLS at all, AUTH offered in clear (for plaintext-auth refusal tests)
``size_limited``  like ``plain`` with ``message_size_limit = size_limit`` (100000)
``nochunking``    like ``plain`` without PIPELINING and CHUNKING in the EHLO reply
``strict8bit``    like ``plain`` with ``strict_8bitmime = yes`` (through its own cleanup service):
                  8-bit data in headers, or in a body without MIME
                  ``Content-Transfer-Encoding: 8bit``, gets 550 5.6.0 even with BODY=8BITMIME
``anvil``         like ``plain`` with anvil rate limits that apply to loopback too:
                  ``ANVIL_MESSAGES`` messages (450 4.7.1 "too much mail"),
                  ``ANVIL_RECIPIENTS`` recipients (450 4.7.1 "too many recipients") and
                  ``ANVIL_CONNECTIONS`` connections (421 4.7.0 "too many connections") per
                  ``ANVIL_TIME_UNIT`` (anvil's time unit, shortened for every port; no other
                  port has a rate limit)
``dkim_milter``   like ``plain`` with the milter at ``queue/opendkim.sock`` (tempfail when it
                  is not running; tests/test_dkim_delivery.py starts OpenDKIM there)

Recipients: ``alice|bob|carol|dave@example.test`` are Maildir users, any ``@example.org`` goes
to the ``catchall`` Maildir, other ``@example.test`` users get 550 5.1.1, any ``@capture.test``
is written byte-exact (CRLF) to ``out/``, ``tempfail@example.test`` gets 450 4.2.0,
``reject@example.test`` gets 554 5.7.1, every other domain gets 550 (nothing is relayed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

POSTFIX = "/usr/sbin/postfix"
MASTER = "/usr/lib/postfix/sbin/master"
DOVECOT = "/usr/sbin/dovecot"
INSTALL_HINT = "run `sudo scripts/install-system-deps.sh` (installs postfix, dovecot-core, swaks)"

HOSTNAME = "mx.fixture.test"
DELIVERY_UID = 65534  # nobody
MAILDIR_USERS = ("alice", "bob", "carol", "dave")
CATCHALL = "catchall"
SASL_USERS = {"alice@example.test": "S3cr3t-CANARY", "bob@example.test": "bobpw"}
SIZE_LIMIT = 100_000

PORT_NAMES = (
    "plain",
    "submission",
    "smtps",
    "plain_auth",
    "size_limited",
    "nochunking",
    "strict8bit",
    "anvil",
    "dkim_milter",
)

ANVIL_TIME_UNIT = 2  # seconds
ANVIL_MESSAGES = 10
ANVIL_RECIPIENTS = 14
ANVIL_CONNECTIONS = 4

# master.cf -o overrides per port. The base main.cf has TLS `may` and SASL off.
_AFTER_TLS_AUTH = ("smtpd_sasl_auth_enable=yes", "smtpd_tls_auth_only=yes")
PORT_OPTIONS: dict[str, tuple[str, ...]] = {
    "plain": _AFTER_TLS_AUTH,
    "submission": ("smtpd_tls_security_level=encrypt", *_AFTER_TLS_AUTH),
    "smtps": ("smtpd_tls_wrappermode=yes", "smtpd_sasl_auth_enable=yes"),
    "plain_auth": (
        "smtpd_tls_security_level=none",
        "smtpd_sasl_auth_enable=yes",
        "smtpd_tls_auth_only=no",
    ),
    "size_limited": (f"message_size_limit={SIZE_LIMIT}", *_AFTER_TLS_AUTH),
    "nochunking": (
        "smtpd_discard_ehlo_keywords=silent-discard,pipelining,chunking",
        *_AFTER_TLS_AUTH,
    ),
    # strict_8bitmime is enforced by cleanup(8), not smtpd: route through a strict cleanup.
    "strict8bit": ("cleanup_service_name=cleanup8", *_AFTER_TLS_AUTH),
    "anvil": (
        "smtpd_client_event_limit_exceptions=",
        f"smtpd_client_message_rate_limit={ANVIL_MESSAGES}",
        f"smtpd_client_recipient_rate_limit={ANVIL_RECIPIENTS}",
        f"smtpd_client_connection_rate_limit={ANVIL_CONNECTIONS}",
        *_AFTER_TLS_AUTH,
    ),
    "dkim_milter": (
        "smtpd_milters=unix:$queue_directory/opendkim.sock",
        "milter_default_action=tempfail",
        *_AFTER_TLS_AUTH,
    ),
}

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
mail_owner = postfix
myhostname = {hostname}
mydomain = fixture.test
myorigin = $myhostname
smtpd_banner = $myhostname ESMTP fixture
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
mynetworks = 127.0.0.0/8
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
smtpd_peername_lookup = no
smtpd_error_sleep_time = 0
smtpd_soft_error_limit = 1000
smtpd_hard_error_limit = 1000
biff = no
alias_maps =
alias_database =
local_recipient_maps =
default_transport = error:fixture relays nothing
relay_transport = error:fixture relays nothing

# TLS (per-port overrides in master.cf)
smtpd_tls_chain_files = {root}/tls/server.key, {root}/tls/server.pem
smtpd_tls_security_level = may
smtpd_tls_received_header = yes

# SASL through the private Dovecot (enabled per port in master.cf)
smtpd_sasl_type = dovecot
smtpd_sasl_path = private/auth
smtpd_sasl_auth_enable = no

# Replies tests can provoke
smtpd_recipient_restrictions = check_recipient_access texthash:{root}/conf/recipient_access

# A: Maildirs through virtual(8)
virtual_mailbox_domains = example.test, example.org
virtual_mailbox_base = {root}/mail
virtual_mailbox_maps = texthash:{root}/conf/vmailbox
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{uid}

# B: byte-exact capture of everything for capture.test
relay_domains = capture.test
transport_maps = inline:{{capture.test=capture:}}
capture_destination_recipient_limit = 1
header_checks = regexp:{root}/conf/header_checks
message_drop_headers =
local_header_rewrite_clients =
"""

MASTER_CF_HEAD = """\
# service type  private unpriv  chroot  wakeup  maxproc command + args
cleanup   unix  n       -       n       -       0       cleanup
cleanup8  unix  n       -       n       -       0       cleanup
  -o strict_8bitmime=yes
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
  -o anvil_rate_time_unit={anvil_unit}s
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
capture   unix  -       n       n       -       -       pipe
  flags= user=nobody eol=\\r\\n
  argv=/usr/bin/dd of={root}/out/${{queue_id}}-${{recipient}} status=none
"""

DOVECOT_CONF = """\
instance_name = fixture-{instance}
base_dir = {root}/dovecot/run
state_dir = {root}/dovecot/state
log_path = {root}/dovecot/dovecot.log
protocols =
ssl = no
disable_plaintext_auth = no
auth_failure_delay = 0
auth_mechanisms = plain login cram-md5 scram-sha-1 scram-sha-256
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {root}/dovecot/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={uid} home=/nonexistent
}}
service auth {{
  unix_listener {root}/queue/private/auth {{
    mode = 0660
    user = postfix
    group = postfix
  }}
}}
# No anvil auth penalty: repeated failures from 127.0.0.1 would otherwise wait 4.5 s, 8.5 s...
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
"""

RECIPIENT_ACCESS = """\
tempfail@example.test 450 4.2.0 try later
reject@example.test REJECT no thanks
"""

# Drop only our own Received: header so captures are byte-exact.
HEADER_CHECKS = r"/^Received: from .*by mx\.fixture\.test \(Postfix\)/ IGNORE" + "\n"


def _backdate(directory: Path) -> None:
    """Postfix re-reads a config file younger than ~2 s every 300 ms: make them old."""
    old = time.time() - 120
    for path in directory.iterdir():
        os.utime(path, (old, old))


def _free_ports(count: int) -> list[int]:
    """Distinct free loopback ports. Master sets SO_REUSEPORT, so a clash would go unnoticed:
    hold all sockets at once so the kernel hands out distinct ports."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _listeners(port: int) -> int:
    """How many LISTEN sockets /proc/net/tcp shows on 127.0.0.1:port."""
    want = f"0100007F:{port:04X}"
    count = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[1] == want and fields[3] == "0A":
                count += 1
    return count


def _pgroup_alive(pgid: int) -> list[int]:
    """PIDs in process group pgid that are not zombies."""
    alive = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may contain spaces/parens
        rest = stat[stat.rindex(")") + 2 :].split()
        if rest[0] != "Z" and int(rest[2]) == pgid:
            alive.append(int(entry))
    return alive


def _stop_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the process group, SIGKILL what is left after `grace` seconds, reap the leader
    and wait until no non-zombie member remains (orphans are reaped by PID 1, slowly)."""
    pgid = proc.pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _pgroup_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.01)
    if _pgroup_alive(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    deadline = time.monotonic() + 5
    while _pgroup_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.01)


@dataclasses.dataclass
class PostfixServer:
    """Handle on the running private Postfix + Dovecot. See the module docstring."""

    root: Path
    ca: trustme.CA
    ca_file: Path
    cert_file: Path
    key_file: Path
    plain: int
    submission: int
    smtps: int
    plain_auth: int
    size_limited: int
    nochunking: int
    strict8bit: int
    anvil: int
    dkim_milter: int
    host: str = "127.0.0.1"
    hostname: str = HOSTNAME
    size_limit: int = SIZE_LIMIT
    users: dict[str, str] = dataclasses.field(default_factory=lambda: dict(SASL_USERS))
    maildir_users: tuple[str, ...] = (*MAILDIR_USERS, CATCHALL)
    _master: subprocess.Popen[bytes] | None = dataclasses.field(default=None, repr=False)
    _dovecot: subprocess.Popen[bytes] | None = dataclasses.field(default=None, repr=False)

    # -- paths ---------------------------------------------------------------------------
    @property
    def conf_dir(self) -> Path:
        return self.root / "conf"

    @property
    def mail_dir(self) -> Path:
        return self.root / "mail"

    @property
    def capture_dir(self) -> Path:
        return self.root / "out"

    @property
    def ports(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in PORT_NAMES}

    def client_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts only the fixture CA."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    # -- logs ----------------------------------------------------------------------------
    def maillog(self) -> str:
        try:
            return (self.root / "maillog").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def dovecot_log(self) -> str:
        try:
            return (self.root / "dovecot" / "dovecot.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- received mail -------------------------------------------------------------------
    def maildir_messages(self, user: str) -> list[bytes]:
        """Messages now in mail/<user>/new, oldest first (LF line endings, Postfix headers)."""
        new = self.mail_dir / user / "new"
        if not new.is_dir():
            return []
        files = sorted(new.iterdir(), key=lambda p: (p.stat().st_mtime_ns, p.name))
        return [p.read_bytes() for p in files]

    def wait_for_maildir(self, user: str, count: int = 1, timeout: float = 10) -> list[bytes]:
        """Wait until mail/<user>/new holds at least `count` messages; return them all."""
        deadline = time.monotonic() + timeout
        while True:
            messages = self.maildir_messages(user)
            if len(messages) >= count:
                return messages
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{len(messages)} of {count} message(s) for {user!r} after {timeout}s\n"
                    f"--- maillog ---\n{self.maillog()}"
                )
            time.sleep(0.01)

    def capture_files(self, recipient: str) -> list[Path]:
        """Capture files for `recipient` (case-insensitive), oldest first."""
        suffix = "-" + recipient.lower()
        if not self.capture_dir.is_dir():
            return []
        files = [p for p in self.capture_dir.iterdir() if p.name.lower().endswith(suffix)]
        return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name))

    def _delivered(self, queue_id: str, recipient: str) -> bool:
        needle = f"{queue_id}: to=<{recipient}>".lower()
        return any(
            needle in line.lower() and "status=sent" in line for line in self.maillog().splitlines()
        )

    def wait_for_capture(self, recipient: str, timeout: float = 10) -> bytes:
        """The exact bytes (CRLF, dot-unstuffed) of the newest message captured for
        `recipient` (an address @capture.test). Waits until the file exists, Postfix has
        logged the delivery as sent and the size is stable."""
        deadline = time.monotonic() + timeout
        last_size = -1
        while True:
            files = self.capture_files(recipient)
            if files:
                path = files[-1]
                queue_id = path.name[: -len(recipient) - 1]
                size = path.stat().st_size
                if size == last_size and self._delivered(queue_id, recipient):
                    return path.read_bytes()
                last_size = size
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no complete capture for {recipient!r} after {timeout}s\n"
                    f"--- maillog ---\n{self.maillog()}"
                )
            time.sleep(0.02)

    def clear(self) -> None:
        """Empty every Maildir and the capture directory (the log is kept)."""
        for path in self.mail_dir.glob("*/*/*"):
            if path.parent.name in ("new", "cur", "tmp"):
                path.unlink(missing_ok=True)
        for path in self.capture_dir.iterdir():
            path.unlink(missing_ok=True)

    # -- lifecycle -----------------------------------------------------------------------
    def stop(self) -> None:
        """Stop master and Dovecot (whole process groups) and remove the temp dir."""
        if self._master is not None:
            # master relays SIGTERM to its process group; SIGKILL after a short grace.
            _stop_group(self._master, grace=0.3)
            self._master = None
        if self._dovecot is not None:
            # A graceful Dovecot stop takes ~1.1 s; an auth-only instance has no state.
            _stop_group(self._dovecot, grace=0.0)
            self._dovecot = None
        shutil.rmtree(self.root, ignore_errors=True)


def _check_installed() -> None:
    missing = [p for p in (POSTFIX, MASTER, DOVECOT) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(
            f"the postfix fixture needs Postfix and Dovecot; missing {', '.join(missing)}: "
            f"{INSTALL_HINT}",
            pytrace=False,
        )
    if os.geteuid() != 0:
        pytest.fail(
            "the postfix fixture must run as root (Postfix's master drops privileges itself)",
            pytrace=False,
        )
    for user in ("postfix", "dovecot", "dovenull"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            pytest.fail(f"system user {user!r} is missing: {INSTALL_HINT}", pytrace=False)


def _write_configs(root: Path, ports: dict[str, int]) -> None:
    conf = root / "conf"
    (conf / "main.cf").write_text(MAIN_CF.format(root=root, hostname=HOSTNAME, uid=DELIVERY_UID))
    master_cf = [MASTER_CF_HEAD.format(root=root, anvil_unit=ANVIL_TIME_UNIT)]
    for name in PORT_NAMES:
        master_cf.append(f"# {name}\n127.0.0.1:{ports[name]} inet n - n - - smtpd\n")
        master_cf.extend(f"  -o {opt}\n" for opt in PORT_OPTIONS[name])
    (conf / "master.cf").write_text("".join(master_cf))
    vmailbox = [f"{u}@example.test {u}/\n" for u in MAILDIR_USERS]
    vmailbox.append(f"@example.org {CATCHALL}/\n")
    (conf / "vmailbox").write_text("".join(vmailbox))
    (conf / "header_checks").write_text(HEADER_CHECKS)
    (conf / "recipient_access").write_text(RECIPIENT_ACCESS)
    _backdate(conf)

    dovecot = root / "dovecot"
    (dovecot / "dovecot.conf").write_text(
        DOVECOT_CONF.format(root=root, instance=root.name, uid=DELIVERY_UID)
    )
    passwd = dovecot / "passwd"
    passwd.write_text("".join(f"{u}:{{PLAIN}}{p}\n" for u, p in SASL_USERS.items()))
    os.chown(passwd, 0, pwd.getpwnam("dovecot").pw_gid)
    passwd.chmod(0o640)


def _make_tls(root: Path) -> tuple[trustme.CA, Path, Path, Path]:
    tls = root / "tls"
    ca = trustme.CA(organization_name="smtpsubmit test fixture")
    cert = ca.issue_cert(HOSTNAME, "localhost", "127.0.0.1")
    ca_file, cert_file, key_file = tls / "ca.pem", tls / "server.pem", tls / "server.key"
    ca.cert_pem.write_to_path(str(ca_file))
    cert_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    key_file.touch(mode=0o600)
    cert.private_key_pem.write_to_path(str(key_file))
    return ca, ca_file, cert_file, key_file


def _wait_ready(server: PostfixServer, timeout: float = 10) -> None:
    """Read a 220 greeting on every port (after a TLS handshake on smtps)."""
    deadline = time.monotonic() + timeout
    ctx = server.client_context()
    for name, port in server.ports.items():
        while True:
            try:
                with socket.create_connection((server.host, port), timeout=2) as raw:
                    sock: socket.socket = raw
                    if name == "smtps":
                        sock = ctx.wrap_socket(raw, server_hostname=server.hostname)
                    greeting = sock.recv(512)
                    sock.sendall(b"QUIT\r\n")
                if greeting.startswith(b"220"):
                    break
                last_error = f"greeting {greeting!r}"
            except (OSError, ssl.SSLError) as exc:
                last_error = repr(exc)
            for proc, what in ((server._master, "master"), (server._dovecot, "dovecot")):
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"{what} exited with status {proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"port {name} ({port}) not ready: {last_error}")
            time.sleep(0.01)
        if _listeners(port) != 1:
            raise RuntimeError(f"port {port} ({name}) has {_listeners(port)} listeners")


def _explain_check(root: Path, output: bytes) -> str:
    """Postfix prints nothing without a tty or /dev/log: rerun under script(1) to see why."""
    text = output.decode(errors="replace").strip()
    if text:
        return text
    cmd = f"{POSTFIX} -c {root / 'conf'} check"
    try:
        rerun = subprocess.run(
            ["script", "-qec", cmd, "/dev/null"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"(no output; rerun under script(1) failed: {exc})"
    return rerun.stdout.decode(errors="replace").strip() or "(no output)"


def start_postfix() -> PostfixServer:
    """Start a private Postfix + Dovecot; the caller must call ``.stop()``."""
    _check_installed()
    root = Path(tempfile.mkdtemp(prefix="smtpsubmit-postfix-"))
    root.chmod(0o755)
    server: PostfixServer | None = None
    try:
        for sub in ("conf", "queue", "data", "mail", "out", "tls", "dovecot"):
            (root / sub).mkdir()
        shutil.chown(root / "data", user="postfix")
        for sub in ("mail", "out"):
            os.chown(root / sub, DELIVERY_UID, DELIVERY_UID)
        # Maildirs made up front: concurrent virtual(8) deliveries racing to create the
        # same new Maildir defer all but one ("create maildir file: No such file").
        for user in (*MAILDIR_USERS, CATCHALL):
            for part in ("", "new", "cur", "tmp"):
                path = root / "mail" / user / part
                path.mkdir(exist_ok=True)
                os.chown(path, DELIVERY_UID, DELIVERY_UID)
        ports = dict(zip(PORT_NAMES, _free_ports(len(PORT_NAMES)), strict=True))
        _write_configs(root, ports)

        # `postfix check` creates the queue directories (~0.2 s); make certs meanwhile.
        check = subprocess.Popen(
            [POSTFIX, "-c", str(root / "conf"), "check"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        ca, ca_file, cert_file, key_file = _make_tls(root)
        check_out, _ = check.communicate(timeout=30)
        server = PostfixServer(
            root=root,
            ca=ca,
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
            **ports,
        )
        if check.returncode != 0:
            raise RuntimeError(f"postfix check failed: {_explain_check(root, check_out)}")

        log = (root / "dovecot" / "stderr").open("wb")
        with log:
            server._dovecot = subprocess.Popen(
                [DOVECOT, "-F", "-c", str(root / "dovecot" / "dovecot.conf")],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        auth_socket = root / "queue" / "private" / "auth"
        deadline = time.monotonic() + 10
        while not auth_socket.exists():
            if server._dovecot.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("dovecot did not create the auth socket")
            time.sleep(0.005)

        log = (root / "master.stderr").open("wb")
        with log:
            server._master = subprocess.Popen(
                [MASTER, "-c", str(root / "conf"), "-d"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _wait_ready(server)
        return server
    except BaseException as exc:
        details = ""
        if server is not None:
            stderr = ""
            for name in ("master.stderr", "dovecot/stderr"):
                with contextlib.suppress(OSError):
                    stderr += (root / name).read_text(errors="replace")
            details = (
                f"\n--- maillog ---\n{server.maillog()}\n--- dovecot.log ---\n"
                f"{server.dovecot_log()}\n--- stderr ---\n{stderr}"
            )
            server.stop()
        else:
            shutil.rmtree(root, ignore_errors=True)
        if isinstance(exc, Exception):
            pytest.fail(f"postfix fixture failed to start: {exc}{details}", pytrace=False)
        raise


@pytest.fixture(scope="session")
def postfix() -> Iterator[PostfixServer]:
    """A private Postfix + Dovecot on 127.0.0.1 for the whole session. Tests that need an
    empty mailbox call ``postfix.clear()`` first."""
    server = start_postfix()
    try:
        yield server
    finally:
        server.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """Attach the Postfix and Dovecot logs to failing tests that used the fixture."""
    outcome = yield
    report = outcome.get_result()
    server = getattr(item, "funcargs", {}).get("postfix")
    if report.failed and isinstance(server, PostfixServer):
        report.sections.append(("postfix maillog", server.maillog()[-20000:]))
        report.sections.append(("dovecot log", server.dovecot_log()[-5000:]))
