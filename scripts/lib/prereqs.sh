# Installs the system packages Meridian needs to build and test, when they are missing:
#   protoc    (protobuf-compiler)  code generation for meridian.v1 and etcd-client
#   etcd      (etcd-server)        the store, for tests and production-like runs
#   etcdctl   (etcd-client)        inspecting the store by hand
# Sourced by scripts/test.sh and scripts/run.sh. Debian/Ubuntu only; elsewhere it says
# what to install.

ensure_prereqs() {
    local missing=()
    command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
    command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
    command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)
    command -v cargo >/dev/null 2>&1 || {
        echo "meridian: cargo is not installed; install Rust (https://rustup.rs) and retry" >&2
        return 1
    }
    [ ${#missing[@]} -eq 0 ] && return 0

    echo "meridian: installing missing packages: ${missing[*]}" >&2
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "meridian: no apt-get here; install ${missing[*]} (or their equivalents) yourself" >&2
        return 1
    fi
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || {
            echo "meridian: need root to install ${missing[*]}; run as root or install sudo" >&2
            return 1
        }
        sudo=(sudo)
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # Debian's etcd-server package starts a system etcd on 127.0.0.1:2379; Meridian's tests
    # start their own on random ports and do not need it.
    echo "meridian: installed ${missing[*]}" >&2
}
