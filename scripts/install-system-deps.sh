#!/usr/bin/env bash
# Install the system packages the real-server test fixtures need (tests/servers/postfix.py,
# tests/servers/postgres.py): Postfix (private instance per test session), Dovecot (SASL auth
# only), swaks and msmtp (interop checks), PostgreSQL (a private cluster for the outbox tests;
# it does not conflict with postfix); NSD, Unbound and ldnsutils for the DNSSEC chain of
# tests/servers/dns.py; OpenDKIM as a milter. Meant for CI on a fresh Debian 12 machine, run as root. Idempotent: when
# everything is already installed it returns at once without touching apt.
#
# It never starts a system service: the fixture runs its own private instances from a temp
# directory, so postfix.service / dovecot.service must stay down. While apt runs, a temporary
# /usr/sbin/policy-rc.d (exit 101) blocks invoke-rc.d / deb-systemd-invoke, unless the machine
# already has one (Debian container images usually do).
#
# Do NOT add exim4-daemon-*, opensmtpd or sendmail here: each Provides and Conflicts
# mail-transport-agent, so apt would remove postfix.
set -euo pipefail

PACKAGES=(
    postfix       # the MTA under test (private instance, never the system one)
    dovecot-core  # SASL backend for Postfix (auth-only private instance)
    swaks         # SMTP swiss-army knife for interop / manual checks
    msmtp         # second client for SCRAM-SHA-* / DIGEST-MD5 interop checks
    procps        # ps / pgrep, used to check that nothing is left running
    iproute2      # ss, to inspect listeners (port collisions, see notes on SO_REUSEPORT)
    opendkim      # DKIM milter: verifies signed mail the Postfix fixture receives
    opendkim-tools  # opendkim-testkey etc.; no MTA dependency, so postfix stays
    nsd           # authoritative DNS for the direct-delivery tests (tests/servers/dns.py)
    unbound       # validating resolver there: the AD bit DANE relies on is real
    ldnsutils     # ldns-signzone / ldns-keygen: DNSSEC-signs the test zones
    postgresql    # initdb/pg_ctl for the outbox tests' private cluster (tests/servers/postgres.py)
)

missing=()
for pkg in "${PACKAGES[@]}"; do
    status="$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)"
    if [[ "$status" != "installed" ]]; then
        missing+=("$pkg")
    fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "install-system-deps: all packages already installed (${PACKAGES[*]})"
    exit 0
fi

if [[ "$(id -u)" -ne 0 ]]; then
    echo "install-system-deps: must run as root (missing: ${missing[*]})" >&2
    exit 1
fi

echo "install-system-deps: installing ${missing[*]}"

# Block service starts during the installation, restoring the previous state afterwards.
policy=/usr/sbin/policy-rc.d
created_policy=0
cleanup() {
    if [[ $created_policy -eq 1 ]]; then
        rm -f "$policy"
    fi
}
trap cleanup EXIT
if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\n# temporary, from scripts/install-system-deps.sh\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    created_policy=1
fi

export DEBIAN_FRONTEND=noninteractive
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
# The tests make their own cluster; Debian's default "main" cluster would only take space.
mkdir -p /etc/postgresql-common/createcluster.d
echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.d/smtpsubmit-tests.conf

apt-get update
apt-get install -y --no-install-recommends "${missing[@]}"

echo "install-system-deps: done"
