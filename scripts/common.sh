# shellcheck shell=bash
# Helpers shared by the scripts in this directory. Source it; do not run it.
# Messages go to stderr, so a script's stdout stays usable by its callers.

# say MESSAGE: one progress line on stderr, prefixed with the script's name.
say() {
    printf '%s: %s\n' "${0##*/}" "$*" >&2
}

# die MESSAGE: say MESSAGE and exit 1.
die() {
    say "error: $*"
    exit 1
}

# as_root COMMAND...: run COMMAND as root (directly when root, else via sudo).
as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root to run '$*' (run as root or install sudo)"
    fi
}

# as_postgres COMMAND...: run COMMAND as the postgres system user, from /
# (so tools do not warn that they cannot read the current directory).
as_postgres() {
    if [[ $(id -u) -eq 0 ]]; then
        (cd / && runuser -u postgres -- "$@")
    elif command -v sudo >/dev/null 2>&1; then
        (cd / && sudo -u postgres "$@")
    else
        die "need root to run '$*' as postgres (run as root or install sudo)"
    fi
}

# apt_install PACKAGE...: apt-get install, running `apt-get update` first
# (once per script run) so a fresh machine's empty package lists work. The
# UTF-8 locale makes the cluster that installing `postgresql` creates UTF8
# rather than SQL_ASCII when the machine has no locale set.
_apt_updated=
apt_install() {
    command -v apt-get >/dev/null 2>&1 ||
        die "need $* but apt-get is missing: install them by hand"
    say "installing $* with apt-get"
    if [[ -z $_apt_updated ]]; then
        as_root env DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 LC_ALL=C.UTF-8 apt-get update >&2
        _apt_updated=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 LC_ALL=C.UTF-8 apt-get install -y "$@" >&2
}

# ensure_linker: rustc links through `cc`; a rustup-only machine may lack it.
ensure_linker() {
    command -v cc >/dev/null 2>&1 || apt_install gcc libc6-dev
}
