# Real systemd and container tests (tests/e2e/test_realsys_*.py, helpers nspawn.py and podman.py):
# debootstrap builds a Debian 12 root from this machine's own apt mirror, systemd-nspawn boots it
# with systemd 252 as PID 1, nsenter runs commands in it, zstd packs the cached root; podman
# builds and runs the image (runc: crun refuses this host's hybrid cgroups; catatonit is the pod's
# pause process; netavark is the network backend; the bridge itself is not used).
need_apt debootstrap debian-archive-keyring systemd-container util-linux zstd \
  podman runc netavark aardvark-dns catatonit uidmap
