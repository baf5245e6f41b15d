"""``smtpsubmit dkim keygen`` and the ``--dkim-*`` options of ``send``.

Key generation writes the private key with mode 0600 (never to stdout, where
it would land in terminal scrollback and logs) and prints the DNS TXT record
that publishes the public key, split into the 255-octet strings DNS needs.
"""

from __future__ import annotations

import argparse
import os
import sys
from email.utils import parseaddr
from typing import TYPE_CHECKING, Any

from smtpsubmit.cli.errors import ConfigError, MissingInput, UsageError

if TYPE_CHECKING:
    from smtpsubmit.cli.config import Account
    from smtpsubmit.dkim import DkimSigner

__all__ = ["add_dkim_options", "register", "signer_from", "txt_record"]

KEYGEN_DESCRIPTION = """\
Make a DKIM signing key: the private key goes to --out (mode 0600) and the DNS
TXT record that publishes the public key is printed on stdout, ready for the
zone of --domain. Give the key to `smtpsubmit send --dkim-key` (or the
account's dkim_key) to sign mail for that domain.
"""
KEYGEN_EPILOG = """\
examples:
  smtpsubmit dkim keygen --selector mail2026 --domain example.org
  smtpsubmit dkim keygen --selector ed1 --domain example.org --algorithm ed25519 \\
      --out ~/.config/smtpsubmit/ed1.pem

Publish Ed25519 keys next to an RSA key (two selectors): RFC 8463 verifiers
check both, the others ignore the Ed25519 signature.
"""
MIN_BITS = 1024
TXT_STRING = 255  # the longest character-string of a TXT record


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "dkim", help="DKIM signing keys (keygen)", description="DKIM signing keys."
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    keygen = commands.add_parser(
        "keygen",
        help="make a DKIM key and print its DNS TXT record",
        description=KEYGEN_DESCRIPTION,
        epilog=KEYGEN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    keygen.add_argument("--selector", required=True, help="selector (the s= tag)")
    keygen.add_argument("--domain", required=True, help="signing domain (the d= tag)")
    keygen.add_argument("--algorithm", choices=("rsa", "ed25519"), default="rsa")
    keygen.add_argument("--bits", type=int, default=2048, help="RSA key size (2048)")
    keygen.add_argument(
        "--out", metavar="PATH", help="private key file (default: SELECTOR.DOMAIN.pem)"
    )
    keygen.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    keygen.set_defaults(run=run_keygen)


def run_keygen(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    from smtpsubmit.dkim import DkimSigner

    if args.algorithm == "rsa" and args.bits < MIN_BITS:
        raise UsageError(f"--bits {args.bits}: at least {MIN_BITS} (2048 advised)")
    key: Any = (
        ed25519.Ed25519PrivateKey.generate()
        if args.algorithm == "ed25519"
        else rsa.generate_private_key(public_exponent=65537, key_size=args.bits)
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        signer = DkimSigner(args.domain, args.selector, pem)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    out = args.out or f"{signer.selector}.{signer.domain}.pem"
    _write_private(out, pem, force=args.force)
    print(f"smtpsubmit: private key written to {out} (mode 0600)", file=sys.stderr)
    print(txt_record(signer))
    return 0


def _write_private(path: str, data: bytes, *, force: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise UsageError(f"--out {path!r} exists", hint="use --force to replace it") from None
    except OSError as exc:
        raise MissingInput(f"cannot write {path!r}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)  # also when --force replaced a wider-open file
        f.write(data)


def txt_record(signer: DkimSigner) -> str:
    """``name IN TXT "…" "…"``: the record in zone-file form, in 255-octet strings."""
    text = signer.dns_record()
    strings = [text[i : i + TXT_STRING] for i in range(0, len(text), TXT_STRING)]
    return f"{signer.dns_name}. IN TXT " + " ".join(f'"{s}"' for s in strings)


# -- send --dkim-key/--dkim-selector/--dkim-domain ----------------------------------------


def add_dkim_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("DKIM signing (see `smtpsubmit dkim keygen`)")
    group.add_argument("--dkim-key", metavar="PEM", help="sign with this private key file")
    group.add_argument("--dkim-selector", metavar="NAME", help="selector of the key (s=)")
    group.add_argument(
        "--dkim-domain", metavar="DOMAIN", help="signing domain (d=; default: the From domain)"
    )


def signer_from(
    args: argparse.Namespace, account: Account | None, sender: str
) -> DkimSigner | None:
    """The signer the flags and the account's ``dkim_*`` keys describe, or None."""
    from_account = {
        name: account.get(f"dkim_{name}") if account else None
        for name in ("key", "selector", "domain")
    }
    key = args.dkim_key or from_account["key"]
    selector = args.dkim_selector or from_account["selector"]
    domain = args.dkim_domain or from_account["domain"]
    if not (key or selector or args.dkim_domain):
        return None
    where = "--dkim-key/--dkim-selector/--dkim-domain"
    if args.dkim_key is None and account is not None and from_account["key"]:
        where = f"account {account.name!r} (dkim_key, dkim_selector, dkim_domain)"
    if not key or not selector:
        raise UsageError(f"{where}: DKIM signing needs both a key and a selector")
    path = os.path.expanduser(key)
    if not os.path.isfile(path):
        raise MissingInput(f"DKIM key {key!r}: no such file")
    domain = domain or parseaddr(sender)[1].rpartition("@")[2]
    from smtpsubmit.dkim import DkimSigner

    try:
        return DkimSigner(domain, selector, path)
    except ValueError as exc:
        if where.startswith("account"):
            raise ConfigError(f"{where}: {exc}") from None
        raise UsageError(f"{where}: {exc}") from None
