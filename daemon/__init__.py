"""credential-sidecar: fresh temporary AWS credentials for local programs."""

__version__ = "0.1.0"
