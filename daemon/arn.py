"""Amazon Resource Names, split into their parts (config checks them, the emulator matches them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Arn:
    partition: str
    service: str
    region: str
    account: str
    resource: str

    @classmethod
    def split(cls, text: str) -> Arn | None:
        """The parts of anything shaped like an ARN, or None."""
        parts = text.split(":", 5)
        if len(parts) != 6 or parts[0] != "arn":
            return None
        return cls(*parts[1:])

    @classmethod
    def parse(cls, text: str) -> Arn:
        arn = cls.split(text)
        if arn is None or not arn.partition or not arn.resource:
            raise ValueError(f"not an ARN: {text!r}")
        return arn

    @property
    def kind(self) -> tuple[str, str]:
        """(service, resource type), e.g. ("iam", "role")."""
        return self.service, self.resource.split("/", 1)[0]
