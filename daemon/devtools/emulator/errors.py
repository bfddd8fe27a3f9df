"""Errors in AWS's shape: status, ``X-Amzn-ErrorType`` and a JSON message, as clients parse them."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web


class ApiError(Exception):
    """An AWS-shaped error answer: status, ``X-Amzn-ErrorType`` and a message."""

    def __init__(
        self,
        status: int,
        error_type: str,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        headers = {"X-Amzn-ErrorType": self.error_type, **self.headers}
        return web.json_response({"message": self.message}, status=self.status, headers=headers)


def denied(message: str) -> ApiError:
    return ApiError(403, "AccessDeniedException", message)


def invalid(message: str) -> ApiError:
    return ApiError(400, "ValidationException", message)


def not_found(message: str) -> ApiError:
    return ApiError(404, "ResourceNotFoundException", message)


def untrusted(detail: str) -> ApiError:
    return denied(f"Untrusted signing certificate: {detail}")


_TYPE_FOR_STATUS = {
    400: "ValidationException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    429: "ThrottlingException",
}


def error_type_for(status: int) -> str:
    if status >= 500:
        return "InternalServerException"
    return _TYPE_FOR_STATUS.get(status, "ValidationException")

