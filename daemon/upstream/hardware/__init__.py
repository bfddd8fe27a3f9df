"""Private keys that never leave hardware: PKCS#11 tokens and TPM 2.0, behind one HardwareKey.

Entry point: factory.open_key (config values to a key), load_certificate, chain_for.
"""
