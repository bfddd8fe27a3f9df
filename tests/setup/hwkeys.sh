# Hardware keys (tests/e2e/test_hwkeys_*.py): SoftHSM2 reached through p11-kit's proxy module,
# a software TPM (swtpm, socket mode) with tpm2-tools and the tpm2-openssl provider to make keys,
# and what pip needs to build tpm2-pytss (no wheel on PyPI): libtss2-dev, pkg-config, a compiler
# and the Python headers. Installed before the venv, so `pip install -e '.[test]'` can build it.
need_apt softhsm2 p11-kit-modules swtpm tpm2-tools tpm2-openssl libtss2-dev pkg-config \
  build-essential python3-dev
