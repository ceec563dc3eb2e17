#!/usr/bin/env bash
# Checks the OS packages end to end, as root on Debian (CI runs it after the tests):
#   1. builds both from the debug binary `cargo test` left (package.sh --profile dev --no-build --fast);
#   2. .deb: its file list, modes and conffiles; dpkg -i; the installed files, the meterd user,
#      systemd-analyze verify of the installed units, completions and man pages; that installing
#      enables and starts nothing; that an upgrade restarts a running meterd only when the new
#      binary passes check-config, and keeps an edited config; removal stops and disables the units;
#   3. .rpm: its file list (rpm -qlp), config(noreplace), requirements (no glibc symbol newer than
#      Amazon Linux 2023's 2.34), the same binary as the .deb, and its scriptlets (rpm -qp
#      --scripts), run against the installed files with the same expectations;
#   4. dpkg --purge, then removes the meterd user and group, and checks nothing is left.
# systemctl is replaced by a recorder (a fake on PATH) wherever meterd would be started or
# restarted; no systemd runs here. Any mismatch stops the script with a message; it cleans up
# whatever it installed either way. Usage: sudo bash scripts/package-check.sh [--no-package]
set -euo pipefail
cd "$(dirname "$0")/.."

started=$SECONDS
steps=0
fail() { echo "package-check: FAILED: $*" >&2; exit 1; }
# Each step's checks stop the script on the first mismatch; reaching the next step passes this one.
step() { steps=$((steps + 1)); echo "== package-check: $*"; }

[ "$(id -u)" = 0 ] || fail "run as root: it installs and purges the .deb"
for tool in dpkg-deb rpm systemd-analyze systemd-sysusers man strip; do
    command -v "$tool" >/dev/null || fail "$tool is missing (Debian packages rpm, systemd, man-db, binutils)"
done
dpkg-query -W -f '${Status}' meterd 2>/dev/null | grep -q 'installed\|config-files' \
    && fail "a meterd package is installed already; this check installs and purges its own"
getent passwd meterd >/dev/null && fail "a meterd user exists already; this check creates and removes it"
getent group meterd >/dev/null && fail "a meterd group exists already; this check creates and removes it"

tmp=$(mktemp -d)
cleanup() {
    local status=$?
    if dpkg-query -W -f '${Status}' meterd 2>/dev/null | grep -q 'installed\|config-files'; then
        echo "package-check: cleaning up: dpkg --purge meterd" >&2
        dpkg --purge meterd >/dev/null 2>&1 || true
    fi
    getent passwd meterd >/dev/null && userdel meterd
    getent group meterd >/dev/null && groupdel meterd
    rm -rf "$tmp"
    exit "$status"
}
trap cleanup EXIT

if [ "${1:-}" != "--no-package" ]; then
    step "building the packages from target/debug/meterd"
    bash scripts/package.sh --profile dev --no-build --fast
fi
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
deb="target/os-packages/meterd_${version}-1_amd64.deb"
rpm_file="target/os-packages/meterd-${version}-1.x86_64.rpm"
stage=target/os-packages/stage
[ -f "$deb" ] || fail "$deb was not built"
[ -f "$rpm_file" ] || fail "$rpm_file was not built"

# A recording systemctl: `is-active` answers from $tmp/active, everything else succeeds.
mkdir "$tmp/bin"
cat > "$tmp/bin/systemctl" <<EOF
#!/bin/sh
echo "systemctl \$*" >> "$tmp/systemctl.log"
case "\$1" in
    is-active) [ -e "$tmp/active" ] ;;
    *) exit 0 ;;
esac
EOF
chmod 755 "$tmp/bin/systemctl"
recorded() { cat "$tmp/systemctl.log" 2>/dev/null || true; }
forget() { rm -f "$tmp/systemctl.log"; }
with_fake_systemctl() { PATH="$tmp/bin:$PATH" "$@"; }
# Fails if anything enabled, started or restarted meterd.
nothing_started() { # what
    if recorded | grep -Eq ' (enable|start|restart|reenable|try-restart|reload-or-restart)( |$)'; then
        recorded >&2
        fail "$1 enabled or started a unit"
    fi
}
same() { # what expected actual
    if [ "$2" != "$3" ]; then
        diff <(printf '%s\n' "$2") <(printf '%s\n' "$3") >&2 || true
        fail "$1 differs from what is expected (- expected, + found)"
    fi
}

# What both packages install, beside the man pages (whatever `meterd manpages` generated).
man_pages=$(cd "$stage/man" && ls | sed 's#^#/usr/share/man/man1/#')
common_files="/etc/meterd/meterd.toml
/usr/bin/meterd
/usr/lib/systemd/system/meterd.service
/usr/lib/systemd/system/meterd.socket
/usr/lib/sysusers.d/meterd.conf
/usr/share/bash-completion/completions/meterd
/usr/share/doc/meterd/README.md
/usr/share/doc/meterd/alerts.yml
/usr/share/doc/meterd/configuration.md
/usr/share/doc/meterd/grafana/meterd.json
/usr/share/doc/meterd/metrics.md
/usr/share/doc/meterd/operations.md
/usr/share/fish/vendor_completions.d/meterd.fish
$man_pages"
for page in meterd meterd-run meterd-check-config meterd-dlq-retry meterd-completions; do
    grep -qx "/usr/share/man/man1/$page.1.gz" <<<"$man_pages" || fail "no man page $page.1.gz"
done
grep -q 'meterd-manpages' <<<"$man_pages" && fail "the hidden manpages command has a man page"

step ".deb contents ($deb)"
deb_files=$(dpkg-deb -c "$deb" | awk '$1 !~ /^d/ { sub(/^\./, "", $6); print $6 }' | sort)
same "the .deb's file list" "$(printf '%s\n' "$common_files" /usr/share/doc/meterd/copyright \
    /usr/share/zsh/vendor-completions/_meterd | sort)" "$deb_files"
# Mode, owner (numeric or by name) and path of every file.
modes=$(dpkg-deb -c "$deb" | awk '$1 !~ /^d/ { sub(/^\./, "", $6); sub(/^root\/root$/, "0/0", $2); print $1, $2, $6 }')
grep -qx -- '-rwxr-xr-x 0/0 /usr/bin/meterd' <<<"$modes" || fail "/usr/bin/meterd is not 0755 root: $modes"
odd=$(grep -v -- '^-rw-r--r-- 0/0 ' <<<"$modes" | grep -v ' /usr/bin/meterd$' || true)
[ -z "$odd" ] || fail "files not 0644 root: $odd"
same "the .deb's conffiles" "/etc/meterd/meterd.toml" "$(dpkg-deb -I "$deb" conffiles)"
depends=$(dpkg-deb -f "$deb" Depends)
grep -q 'libc6 (>=' <<<"$depends" && grep -Eq '(^|, )systemd(,|$)' <<<"$depends" || fail "Depends: $depends"

step "dpkg -i (a first install)"
forget
with_fake_systemctl dpkg -i "$deb" > "$tmp/install.out" 2>&1 || { cat "$tmp/install.out"; fail "dpkg -i"; }
nothing_started "installing"
[ -z "$(find /etc/systemd/system -name 'meterd.*')" ] || fail "installing left units enabled"
same "dpkg -L meterd (files)" "$deb_files" "$(dpkg -L meterd | while read -r f; do [ ! -f "$f" ] || echo "$f"; done | sort)"
same "meterd --version" "meterd $version" "$(/usr/bin/meterd --version)"
cmp /etc/meterd/meterd.toml config/meterd.toml || fail "/etc/meterd/meterd.toml is not config/meterd.toml"
for unit in meterd.service meterd.socket; do
    same "the installed $unit (systemd/$unit with the packages' paths)" \
        "$(sed -e 's#/usr/local/bin/meterd#/usr/bin/meterd#g' -e 's#/usr/local/share/doc/meterd#/usr/share/doc/meterd#g' "systemd/$unit")" \
        "$(cat "/usr/lib/systemd/system/$unit")"
done
grep -qx 'ExecStart=/usr/bin/meterd run --config /etc/meterd/meterd.toml' /usr/lib/systemd/system/meterd.service \
    || fail "the installed meterd.service does not start /usr/bin/meterd"
verify=$(systemd-analyze verify --man=no /usr/lib/systemd/system/meterd.socket /usr/lib/systemd/system/meterd.service 2>&1) \
    || fail "systemd-analyze verify: $verify"
[ -z "$verify" ] || fail "systemd-analyze verify warned: $verify"
# The shipped file names no product, so it cannot bill: check-config refuses it until the operator
# sets aws.product_code (as the package's description says), then accepts it.
if /usr/bin/meterd check-config --config /etc/meterd/meterd.toml > /dev/null 2> "$tmp/unset.err"; then
    fail "the shipped configuration, without a product code, is accepted"
fi
grep -q 'aws.product_code is not set' "$tmp/unset.err" || fail "check-config does not name the product code: $(cat "$tmp/unset.err")"
set_product_code() { sed -i 's/^product_code = ""$/product_code = "prod-example"/' /etc/meterd/meterd.toml; }
set_product_code
/usr/bin/meterd check-config --config /etc/meterd/meterd.toml > /dev/null || fail "the shipped configuration with a product code is refused"

step "the meterd user and group"
IFS=: read -r _ _ uid gid _ home shell < <(getent passwd meterd) || fail "no meterd user"
[ "$uid" -lt 1000 ] || fail "meterd's uid $uid is not a system uid"
same "meterd's group" "meterd" "$(getent group "$gid" | cut -d: -f1)"
same "meterd's home" "/var/lib/meterd" "$home"
case "$shell" in */nologin) ;; *) fail "meterd's shell is $shell, not nologin" ;; esac

step "completions and man pages"
words=$(bash -c 'source /usr/share/bash-completion/completions/meterd
    COMP_WORDS=(meterd dl); COMP_CWORD=1; COMP_LINE="meterd dl"; COMP_POINT=9
    _meterd meterd dl meterd; echo "${COMPREPLY[*]}"')
same "bash completion of 'meterd dl'" "dlq" "$words"
words=$(bash -c 'source /usr/share/bash-completion/completions/meterd
    COMP_WORDS=(meterd completions ""); COMP_CWORD=2; COMP_LINE="meterd completions "; COMP_POINT=19
    _meterd meterd "" completions; echo "${COMPREPLY[*]}"')
same "bash completion of 'meterd completions '" "-h --help bash elvish fish powershell zsh" "$words"
same "the zsh completion's first line" "#compdef meterd" "$(head -n 1 /usr/share/zsh/vendor-completions/_meterd)"
grep -q '^complete -c meterd ' /usr/share/fish/vendor_completions.d/meterd.fish || fail "the fish completion has no complete -c meterd"
same "man -w meterd-dlq-retry" "/usr/share/man/man1/meterd-dlq-retry.1.gz" "$(man -w meterd-dlq-retry)"
page=$(MANWIDTH=100 man --warnings -P cat meterd-check-config 2>"$tmp/man.err")
[ ! -s "$tmp/man.err" ] || fail "man meterd-check-config warned: $(cat "$tmp/man.err")"
grep -q 'Validate a configuration' <<<"$page" || fail "man meterd-check-config: $page"

step "upgrade with meterd running: restarted after check-config"
touch "$tmp/active"
forget
with_fake_systemctl dpkg -i "$deb" > "$tmp/upgrade.out" 2>&1 || { cat "$tmp/upgrade.out"; fail "dpkg -i (upgrade)"; }
grep -q 'the new meterd accepts /etc/meterd/meterd.toml; restarting meterd.service' "$tmp/upgrade.out" \
    || { cat "$tmp/upgrade.out"; fail "the upgrade did not say it restarts meterd"; }
same "systemctl calls of the upgrade" "systemctl is-active --quiet meterd.service
systemctl restart meterd.service" "$(recorded)"

step "upgrade with meterd running and a configuration the new binary refuses: not restarted"
sed -i 's/^# deadline = "24h"$/deadline = "forever"/' /etc/meterd/meterd.toml
grep -q '^deadline = "forever"$' /etc/meterd/meterd.toml || fail "could not break the configuration"
forget
with_fake_systemctl dpkg -i "$deb" > "$tmp/refused.out" 2>&1 || { cat "$tmp/refused.out"; fail "dpkg -i (upgrade)"; }
grep -q 'NOT restarting meterd.service: the new meterd refuses /etc/meterd/meterd.toml' "$tmp/refused.out" \
    || { cat "$tmp/refused.out"; fail "the upgrade did not say why it does not restart"; }
grep -q 'deadline' "$tmp/refused.out" || { cat "$tmp/refused.out"; fail "check-config's problem is not printed"; }
grep -v '^(Reading\|^Preparing\|^Unpacking\|^Setting up\|^Processing' "$tmp/refused.out" | sed 's/^/    /'   # what an operator sees
same "systemctl calls of the refused upgrade" "systemctl is-active --quiet meterd.service" "$(recorded)"
grep -q '^deadline = "forever"$' /etc/meterd/meterd.toml || fail "the upgrade overwrote the edited conffile"
cp config/meterd.toml /etc/meterd/meterd.toml
set_product_code

step "upgrade with meterd stopped: stays stopped"
rm "$tmp/active"
forget
with_fake_systemctl dpkg -i "$deb" > "$tmp/stopped.out" 2>&1 || { cat "$tmp/stopped.out"; fail "dpkg -i (upgrade)"; }
same "systemctl calls of the upgrade" "systemctl is-active --quiet meterd.service" "$(recorded)"
grep -q 'restarting' "$tmp/stopped.out" && fail "the upgrade of a stopped meterd talks of restarting"

step "removal stops and disables the units (prerm remove)"
forget
with_fake_systemctl /var/lib/dpkg/info/meterd.prerm remove
same "systemctl calls of prerm remove" "systemctl stop meterd.service meterd.socket
systemctl --no-reload disable meterd.service meterd.socket" "$(recorded)"
forget
with_fake_systemctl /var/lib/dpkg/info/meterd.prerm upgrade "$version-1"
same "systemctl calls of prerm upgrade" "" "$(recorded)"

step ".rpm contents ($rpm_file)"
rpm_list=$(rpm -qlp "$rpm_file" | sort)
same "rpm -qlp (it owns no directories: cargo-generate-rpm 0.21 cannot)" "$(printf '%s\n' "$common_files" \
    /usr/share/zsh/site-functions/_meterd | sort)" "$rpm_list"
same "rpm -qp --configfiles" "/etc/meterd/meterd.toml" "$(rpm -qp --configfiles "$rpm_file")"
flags=$(rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' "$rpm_file" | grep ' /etc/meterd/meterd.toml$')
same "the config file's flags (c: %config, n: noreplace)" "cn /etc/meterd/meterd.toml" "$flags"
rpm_modes=$(rpm -qp --qf '[%{FILEMODES:perms} %{FILEUSERNAME} %{FILENAMES}\n]' "$rpm_file")
grep -qx -- '-rwxr-xr-x root /usr/bin/meterd' <<<"$rpm_modes" || fail "rpm: /usr/bin/meterd is not 0755 root"
requires=$(rpm -qp --requires "$rpm_file")
grep -qx 'systemd' <<<"$requires" || fail "the .rpm does not require systemd: $requires"
grep -qx '/bin/sh' <<<"$requires" || fail "the .rpm does not require /bin/sh: $requires"
newest_glibc=$(grep -o 'GLIBC_[0-9.]*' <<<"$requires" | sort -V | tail -n 1)
[ -n "$newest_glibc" ] || fail "no glibc requirements found: $requires"
[ "$(printf '%s\n' "$newest_glibc" GLIBC_2.34 | sort -V | tail -n 1)" = GLIBC_2.34 ] \
    || fail "the binary needs $newest_glibc; Amazon Linux 2023 has glibc 2.34"
rpm_digest=$(rpm -qp --qf '[%{FILEDIGESTS} %{FILENAMES}\n]' "$rpm_file" | awk '$2 == "/usr/bin/meterd" { print $1 }')
same "the .rpm's /usr/bin/meterd (sha256)" "$(sha256sum /usr/bin/meterd | cut -d' ' -f1)" "$rpm_digest"

step ".rpm scriptlets (rpm -qp --scripts), run against the installed files"
scripts=$(rpm -qp --scripts "$rpm_file")
same "the .rpm's scriptlets" "postinstall scriptlet (using /bin/sh):
preuninstall scriptlet (using /bin/sh):
postuninstall scriptlet (using /bin/sh):" "$(grep '^[a-z]* scriptlet' <<<"$scripts")"
for tag in POSTIN:post PREUN:preun POSTUN:postun; do
    rpm -qp --qf "%{${tag%%:*}}" "$rpm_file" > "$tmp/${tag#*:}.sh"
    same "the .rpm's %${tag#*:}" "$(cat "$stage/rpm/${tag#*:}.sh")" "$(cat "$tmp/${tag#*:}.sh")"
done
forget
with_fake_systemctl sh "$tmp/post.sh" 1 > "$tmp/rpm-install.out" 2>&1 || { cat "$tmp/rpm-install.out"; fail "%post 1"; }
nothing_started "the .rpm's %post on install"
touch "$tmp/active"
forget
with_fake_systemctl sh "$tmp/post.sh" 2 > "$tmp/rpm-upgrade.out" 2>&1 || { cat "$tmp/rpm-upgrade.out"; fail "%post 2"; }
grep -q 'restarting meterd.service' "$tmp/rpm-upgrade.out" || fail "the .rpm's %post 2 did not restart: $(cat "$tmp/rpm-upgrade.out")"
same "systemctl calls of %post 2" "systemctl is-active --quiet meterd.service
systemctl restart meterd.service" "$(recorded)"
sed -i 's/^# deadline = "24h"$/deadline = "forever"/' /etc/meterd/meterd.toml
forget
with_fake_systemctl sh "$tmp/post.sh" 2 > "$tmp/rpm-refused.out" 2>&1 || { cat "$tmp/rpm-refused.out"; fail "%post 2"; }
grep -q 'NOT restarting meterd.service' "$tmp/rpm-refused.out" || fail "the .rpm's %post 2 restarted on a bad configuration"
same "systemctl calls of %post 2, refused" "systemctl is-active --quiet meterd.service" "$(recorded)"
cp config/meterd.toml /etc/meterd/meterd.toml
rm "$tmp/active"
forget
with_fake_systemctl sh "$tmp/preun.sh" 1
same "systemctl calls of %preun 1 (upgrade)" "" "$(recorded)"
with_fake_systemctl sh "$tmp/preun.sh" 0
same "systemctl calls of %preun 0 (removal)" "systemctl stop meterd.service meterd.socket
systemctl --no-reload disable meterd.service meterd.socket" "$(recorded)"

step "dpkg --purge (with the units enabled, by the real systemctl)"
systemctl enable meterd.socket meterd.service > /dev/null 2>&1
[ -n "$(find /etc/systemd/system -name 'meterd.*')" ] || fail "systemctl enable made no links"
dpkg --purge meterd > "$tmp/purge.out" 2>&1 || { cat "$tmp/purge.out"; fail "dpkg --purge"; }
dpkg-query -W -f '${Status}' meterd 2>/dev/null | grep -q 'installed\|config-files' && fail "meterd is still known to dpkg"
left=$(find /etc/systemd/system -name 'meterd.*')
[ -z "$left" ] || fail "purging left enabled units: $left"
while read -r file; do
    [ ! -e "$file" ] || fail "purging left $file"
done <<<"$deb_files"
[ ! -e /etc/meterd ] || fail "purging left /etc/meterd"
getent passwd meterd >/dev/null || fail "the meterd user is gone; it is meant to stay (it may own a data dir)"
userdel meterd
getent group meterd >/dev/null && groupdel meterd
getent passwd meterd >/dev/null && fail "could not remove the meterd user"
getent group meterd >/dev/null && fail "could not remove the meterd group"

echo "package-check: .deb and .rpm checked in $((SECONDS - started)) s"
echo "package-check: $steps passed, 0 failed"
