#!/usr/bin/env bash
# Builds the OS packages: target/os-packages/meterd_<version>-<rev>_<arch>.deb (cargo-deb) and
# target/os-packages/meterd-<version>-<rev>.<arch>.rpm (cargo-generate-rpm), from one staged set of
# files, so both hold the same binary, units, completions and man pages.
#
#   bash scripts/package.sh                  # release build (cargo build --release), then both packages
#   bash scripts/package.sh --profile dev    # package target/debug/meterd as built (CI, after cargo test)
#   options: --no-build (package what the profile's directory holds), --revision N (default 1),
#            --fast (quicker, larger compression)
#
# cargo-deb and cargo-generate-rpm are installed with `cargo install --locked` at the versions
# below when missing. The binary is run to generate completions and man pages, so this packages
# for the machine's own architecture.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=3.8.0
CARGO_GENERATE_RPM_VERSION=0.21.1

profile=release
build=1
revision=1
fast=0
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) profile="$2"; shift 2 ;;
        --profile=*) profile="${1#--profile=}"; shift ;;
        --release) profile=release; shift ;;
        --no-build) build=0; shift ;;
        --revision) revision="$2"; shift 2 ;;
        --fast) fast=1; shift ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "package.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$revision" in ''|*[!0-9]*) echo "package.sh: --revision takes a number" >&2; exit 2 ;; esac

die() { echo "package.sh: $*" >&2; exit 1; }

# The cargo subcommands, at the pinned versions.
ensure_tool() { # crate version
    local crate="$1" version="$2" have
    have=$(cargo "${crate#cargo-}" --version 2>/dev/null | awk '{print $NF}' || true)
    if [ "$have" != "$version" ]; then
        echo "== installing $crate $version (cargo install --locked; found: ${have:-none})"
        cargo install --locked --quiet "$crate@$version"
    fi
}
ensure_tool cargo-deb "$CARGO_DEB_VERSION"
ensure_tool cargo-generate-rpm "$CARGO_GENERATE_RPM_VERSION"

case "$profile" in
    dev|debug) profile=dev; profile_dir=debug ;;
    *) profile_dir="$profile" ;;
esac
target_dir="${CARGO_TARGET_DIR:-target}"
bin="$target_dir/$profile_dir/meterd"
if [ "$build" = 1 ]; then
    echo "== cargo build --profile $profile"
    cargo build --locked --profile "$profile" --bin meterd
fi
[ -x "$bin" ] || die "$bin does not exist; build it or drop --no-build"

out=target/os-packages
stage="$out/stage"
rm -rf "$stage"
mkdir -p "$stage"/{systemd,completions,man,deb,rpm}

echo "== staging $bin into $stage"
cp "$bin" "$stage/meterd"
strip "$stage/meterd"
"$stage/meterd" --version

# The units of systemd/ with the packages' paths: they name /usr/local/bin/meterd for a manual
# install (docs/operations.md), the packages install /usr/bin/meterd and the docs to /usr/share/doc.
for unit in meterd.service meterd.socket; do
    sed -e 's#/usr/local/bin/meterd#/usr/bin/meterd#g' -e 's#/usr/local/share/doc/meterd#/usr/share/doc/meterd#g' \
        "systemd/$unit" > "$stage/systemd/$unit"
    if grep -n '/usr/local' "$stage/systemd/$unit"; then die "$unit still names /usr/local"; fi
done
grep -qx 'ExecStart=/usr/bin/meterd run --config /etc/meterd/meterd.toml' "$stage/systemd/meterd.service" \
    || die "meterd.service: ExecStart is not /usr/bin/meterd run --config /etc/meterd/meterd.toml"

"$stage/meterd" completions bash > "$stage/completions/meterd.bash"
"$stage/meterd" completions zsh > "$stage/completions/_meterd"
"$stage/meterd" completions fish > "$stage/completions/meterd.fish"
"$stage/meterd" manpages "$stage/man" > /dev/null
gzip -9n "$stage"/man/*.1
[ -s "$stage/man/meterd.1.gz" ] || die "no meterd.1 was generated"

# Maintainer scripts: packaging/scriptlets.sh where each says #SCRIPTLETS#.
with_scriptlets() { # template output
    grep -qx '#SCRIPTLETS#' "$1" || die "$1 has no #SCRIPTLETS# line"
    awk 'FNR == NR { lib = lib $0 "\n"; next } $0 == "#SCRIPTLETS#" { printf "%s", lib; next } { print }' \
        packaging/scriptlets.sh "$1" > "$2"
    sh -n "$2" || die "$2 is not valid sh"
}
for script in postinst prerm postrm; do
    with_scriptlets "packaging/deb/$script" "$stage/deb/$script"
    chmod 755 "$stage/deb/$script"
done
for script in post preun postun; do
    with_scriptlets "packaging/rpm/$script.sh" "$stage/rpm/$script.sh"
done

deb_args=(--no-build --no-strip --deb-revision "$revision" --output "$out/")
rpm_args=(--output "$out/" --set-metadata "release = \"$revision\"")
if [ "$fast" = 1 ]; then
    deb_args+=(--fast)
    rpm_args+=(--payload-compress gzip)
fi
rm -f "$out"/*.deb "$out"/*.rpm
echo "== cargo deb"
cargo deb "${deb_args[@]}"
echo "== cargo generate-rpm"
cargo generate-rpm "${rpm_args[@]}"

echo "== packages"
ls -l "$out"/*.deb "$out"/*.rpm
