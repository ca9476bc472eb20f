#!/usr/bin/env bash
# Installs the system packages and Rust components building and testing kxdp needs.
#
# Idempotent and quiet when nothing is missing: each package is checked with dpkg first, and the
# apt index is refreshed only when something has to be installed, so `make test` stays offline on a
# machine that already has everything. Runs unattended (CI=true, no stdin).
set -euo pipefail

# Why each package is here:
#   clang          compiles the XDP program (xdp-redirect) and xsk-rs's C shim (use_cc_build)
#   libelf-dev     xsk-rs / libxdp link against libelf
#   zlib1g-dev     ditto, libelf's compression support
#   pkg-config     build scripts locate libelf and zlib through it
#   tcpdump        captures in the netns tests and the demo
#   iproute2       `ip netns`, `ip link` for the test topology
packages=(clang libelf-dev zlib1g-dev pkg-config tcpdump iproute2)

installed() {
    dpkg -s "$1" 2>/dev/null | grep -q '^Status: install ok installed$'
}

missing=()
for package in "${packages[@]}"; do
    installed "$package" || missing+=("$package")
done

if ((${#missing[@]} > 0)); then
    if ! command -v apt-get >/dev/null; then
        echo "install-deps: missing ${missing[*]} and no apt-get to install them with" >&2
        exit 1
    fi
    as_root=()
    if [[ $(id -u) -ne 0 ]]; then
        as_root=(sudo -n)
    fi
    echo "install-deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${as_root[@]}" apt-get update -qq
    "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
fi

# rustfmt and clippy are rustup components; a distro toolchain without rustup has to ship them itself.
if command -v rustup >/dev/null; then
    for component in rustfmt clippy; do
        if ! rustup component list --installed 2>/dev/null | grep -q "^${component}-"; then
            echo "install-deps: adding rustup component ${component}"
            rustup component add "$component"
        fi
    done
fi
for tool in "cargo fmt" "cargo clippy"; do
    if ! $tool --version >/dev/null 2>&1; then
        echo "install-deps: '$tool' is not available" >&2
        exit 1
    fi
done
