# Shared by scripts/image-build.sh and scripts/image-check.sh: podman, set up to work on
# the machines Meridian is built on, and the locally made base images.
#
# Why the options below:
# - runc, not Debian's default crun: these VMs mount cgroup v1 with a cgroup v2 hierarchy
#   beside it that has a controller (hybrid mode), which crun refuses ("cgroups in hybrid
#   mode not supported"); runc handles it.
# - explicit ulimits: podman asks for more open files and processes than the hard limits
#   here allow, and root lacks CAP_SYS_RESOURCE to raise them, so the container would not
#   start ("setrlimit RLIMIT_NOFILE: Operation not permitted"); ask for what we have.
# - base images from Debian's archive (mmdebstrap), because no image registry is reachable.

MERIDIAN_IMAGE=${MERIDIAN_IMAGE:-localhost/meridian:dev}
MERIDIAN_RUNTIME_BASE=${MERIDIAN_RUNTIME_BASE:-localhost/meridian-runtime-base:bookworm}
MERIDIAN_BUILD_BASE=${MERIDIAN_BUILD_BASE:-localhost/meridian-build-base:bookworm}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

# The options every `podman run` and `podman build` here gets (in PODMAN_OPTS).
podman_opts() {
    local nofile nproc
    nofile=$(ulimit -Hn)
    [ "$nofile" = unlimited ] || [ "$nofile" -gt 65536 ] && nofile=65536
    nproc=$(ulimit -Hu)
    [ "$nproc" = unlimited ] || [ "$nproc" -gt 16384 ] && nproc=16384
    PODMAN_OPTS=(--runtime runc --ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc")
}

# Installs the Debian packages given that are not installed (apt_install skips
# Recommends, which is where podman's networking and user-namespace helpers come from).
ensure_packages() {
    local missing=() package
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" ||
            missing+=("$package")
    done
    [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
}

# podman and what it runs containers with here (networks: containernetworking-plugins;
# user namespaces: uidmap, slirp4netns), and mmdebstrap for the base images.
ensure_container_tools() {
    ensure_commands podman:podman runc:runc mmdebstrap:mmdebstrap || return 1
    ensure_packages containernetworking-plugins slirp4netns uidmap || return 1
    podman_opts
}

# What running deploy/compose with podman-compose needs besides ensure_container_tools:
# podman-compose, and the dnsname plugin so the services find each other by name.
ensure_compose_tools() {
    ensure_container_tools || return 1
    ensure_commands podman-compose:podman-compose || return 1
    ensure_packages golang-github-containernetworking-plugin-dnsname
}

# Makes IMAGE from a Debian bookworm minbase with the packages given, unless it exists.
# Extra ENV lines for the image follow a "--" after the packages.
ensure_debian_image() { # image, packages (comma-separated), [env lines...]
    local image=$1 packages=$2
    shift 2
    if podman image exists "$image"; then
        return 0
    fi
    echo "== making $image from Debian bookworm ($packages) with mmdebstrap"
    local dir changes=(--change 'CMD ["/bin/bash"]')
    dir=$(mktemp -d)
    local env
    for env in "$@"; do changes+=(--change "ENV $env"); done
    mmdebstrap --quiet --variant=minbase --include="$packages" \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        bookworm "$dir/rootfs.tar" "$DEBIAN_MIRROR" || {
        rm -rf "$dir"
        echo "meridian: mmdebstrap could not make $image (is $DEBIAN_MIRROR reachable?)" >&2
        return 1
    }
    podman import "${changes[@]}" "$dir/rootfs.tar" "$image" >/dev/null
    local status=$?
    rm -rf "$dir"
    return $status
}

# The runtime base (what runs Meridian) and the build base (a C compiler and protoc; the
# Rust toolchain is the host's, mounted at /usr/local/rust by scripts/image-build.sh).
ensure_base_images() {
    ensure_debian_image "$MERIDIAN_RUNTIME_BASE" ca-certificates
    ensure_debian_image "$MERIDIAN_BUILD_BASE" \
        ca-certificates,gcc,libc6-dev,protobuf-compiler,libprotobuf-dev \
        CARGO_HOME=/usr/local/cargo \
        PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
}
