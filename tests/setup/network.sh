# Debian packages the network tests drive (tests/e2e/test_network_*): tinyproxy as a real HTTP
# proxy (open, BasicAuth, ConnectPort and Allow variants) and curl, whose proxy/NO_PROXY choice
# net.proxy mirrors and is checked against.
need_apt tinyproxy curl
