# Debian packages the base suite drives: the AWS CLI v2 and rclone as real clients, node and npm
# for the JavaScript SDK v3 (tests/js), systemd's own tools (systemd-analyze verify and security,
# systemd-sysusers, systemd-tmpfiles, systemd-socket-activate) and procps (/bin/kill, which the
# unit's ExecReload= names and verify checks), python3-venv for the test venv.
need_apt awscli rclone systemd procps python3-venv
command -v npm >/dev/null || need_apt nodejs npm
