"""Shared test doubles, harnesses and scripts: imported by tests, never tests themselves."""
