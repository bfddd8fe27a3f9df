"""moto in server mode, as a real process, a little closer to AWS where our tests depend on it.

Run as ``python -m tests.helpers.moto_aws --port-file FILE``. Stock moto answers GetSessionToken
with one fixed example set (an ``AKIA...`` id, the same for everyone) that its own IAM checks
then reject, and it keeps honouring deactivated keys. Real AWS does neither, and the daemon's
tests are about exactly those behaviours, so this launcher adjusts moto in three places:

- GetSessionToken issues a fresh random ``ASIA...`` set bound to the calling IAM user: with
  IAM checks on, requests signed with it are verified and authorised as that user, and
  GetCallerIdentity names the user. GetSessionToken with session credentials is refused.
- A deactivated (``Inactive``) access key is refused (``InvalidClientTokenId``).
- ``POST /_moto_aws/config`` (JSON) sets test switches: ``root_keys`` (long-term key ids whose
  caller is reported as the account root, ``arn:aws:iam::ACCOUNT:root``) and
  ``unready_new_keys`` (keys created after this are refused for their first N uses, ``-1`` for
  ever: IAM's eventual consistency, and a key that never starts working).
  ``GET /_moto_aws/stats`` lists the sessions issued (id and the long-term key behind it).

IAM checks are off until a test turns them on with ``POST /moto-api/reset-auth`` (body ``0``).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import string
import sys
import threading
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from moto.core.responses import ActionResult
from moto.core.utils import utcnow
from moto.iam import access_control
from moto.iam.models import iam_backends
from moto.iam.utils import generate_access_key_id_from_account_id
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.sts.exceptions import STSClientError
from moto.sts.models import STSBackend
from moto.sts.responses import TokenResponse
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

SECRET_ALPHABET = string.ascii_letters + string.digits + "+/"


@dataclass
class Session:
    access_key_id: str
    secret_access_key: str
    session_token: str
    parent: str  # the long-term key that asked for it
    account_id: str
    partition: str
    user_name: str | None


class State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sessions: dict[str, Session] = {}
        self.root_keys: set[str] = set()
        self.unready_new_keys = 0
        self.unready: dict[str, int] = {}  # key id -> refusals left (-1: for ever)


STATE = State()


def _caller_key(headers: Any) -> str:
    auth = headers.get("Authorization", "")
    start = auth.find("Credential=")
    return auth[start + len("Credential="):].split("/", 1)[0] if start >= 0 else ""


def _user_of(account_id: str, partition: str, key_id: str) -> Any:
    return iam_backends[account_id][partition].get_user_from_access_key_id(key_id)


def _long_term_key(account_id: str, partition: str, key_id: str) -> Any:
    user = _user_of(account_id, partition, key_id)
    if user is None:
        return None
    return next((k for k in user.access_keys if k.access_key_id == key_id), None)


# --- GetSessionToken: a fresh ASIA set per call, bound to the caller -----------------------------

def get_session_token(self: TokenResponse) -> ActionResult:
    duration = self._get_int_param("DurationSeconds", 43200)
    parent = _caller_key(self.headers)
    if parent in STATE.sessions:
        raise STSClientError("AccessDenied", "Cannot call GetSessionToken with session credentials")
    account, partition = self.current_account, self.partition
    user = _user_of(account, partition, parent)
    session = Session(
        access_key_id=generate_access_key_id_from_account_id(account, prefix="ASIA"),
        secret_access_key="".join(secrets.choice(SECRET_ALPHABET) for _ in range(40)),
        session_token="FQoGZXIvYXdzE" + secrets.token_urlsafe(180),
        parent=parent, account_id=account, partition=partition,
        user_name=user.name if user is not None else None,
    )
    with STATE.lock:
        STATE.sessions[session.access_key_id] = session
    return ActionResult({"Credentials": {
        "AccessKeyId": session.access_key_id,
        "SecretAccessKey": session.secret_access_key,
        "SessionToken": session.session_token,
        "Expiration": utcnow() + timedelta(seconds=duration),
    }})


# --- who signed a request ------------------------------------------------------------------------

class SessionAccessKey(access_control.IAMUserAccessKey):
    """A GetSessionToken set: the user's permissions, its own secret, its token required."""

    def __init__(self, session: Session, headers: Any) -> None:
        self.account_id = session.account_id
        self.partition = session.partition
        if session.user_name is None:
            raise access_control.CreateAccessKeyFailure(reason="InvalidId")
        if headers.get("X-Amz-Security-Token") != session.session_token:
            raise access_control.CreateAccessKeyFailure(reason="InvalidToken")
        self._owner_user_name = session.user_name
        self._access_key_id = session.access_key_id
        self._secret_access_key = session.secret_access_key
        self._session_token = session.session_token

    def create_credentials(self) -> Any:
        from botocore.credentials import Credentials

        return Credentials(self._access_key_id, self._secret_access_key, self._session_token)


_original_create_access_key = access_control.create_access_key


def create_access_key(account_id: str, partition: str, access_key_id: str,
                      headers: dict[str, str]) -> Any:
    with STATE.lock:
        left = STATE.unready.get(access_key_id, 0)
        if left:
            STATE.unready[access_key_id] = left - 1 if left > 0 else left
    if left:
        raise access_control.CreateAccessKeyFailure(reason="InvalidId")
    session = STATE.sessions.get(access_key_id)
    if session is not None:
        return SessionAccessKey(session, headers)
    key = _long_term_key(account_id, partition, access_key_id)
    if key is not None and key.status != "Active":
        raise access_control.CreateAccessKeyFailure(reason="InvalidId")
    return _original_create_access_key(account_id, partition, access_key_id, headers)


# --- GetCallerIdentity: sessions name their user; "root" keys name the root ----------------------

_original_caller_identity = STSBackend.get_caller_identity


def get_caller_identity(self: STSBackend, access_key_id: str, region: str) -> tuple[str, str, str]:
    session = STATE.sessions.get(access_key_id)
    key_id = session.parent if session else access_key_id
    if key_id in STATE.root_keys:
        return self.account_id, f"arn:{self.partition}:iam::{self.account_id}:root", self.account_id
    if session is not None and session.user_name is not None:
        user = iam_backends[session.account_id][session.partition].get_user(session.user_name)
        return user.id, user.arn, session.account_id
    return _original_caller_identity(self, access_key_id, region)


# --- new keys that take a while to work ----------------------------------------------------------

def patch() -> None:
    from moto.iam.models import IAMBackend

    original = IAMBackend.create_access_key

    def create_key(self: IAMBackend, user_name: str, prefix: str = "AKIA",
                   status: str = "Active") -> Any:
        key = original(self, user_name, prefix=prefix, status=status)
        with STATE.lock:
            if STATE.unready_new_keys:
                STATE.unready[key.access_key_id] = STATE.unready_new_keys
        return key

    IAMBackend.create_access_key = create_key  # type: ignore[method-assign]
    TokenResponse.get_session_token = get_session_token  # type: ignore[method-assign]
    access_control.create_access_key = create_access_key
    STSBackend.get_caller_identity = get_caller_identity  # type: ignore[method-assign]


# --- the process ---------------------------------------------------------------------------------

class Extras:
    """WSGI middleware: our switches under /_moto_aws/, everything else to moto."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if not path.startswith("/_moto_aws/"):
            return self.app(environ, start_response)
        request = Request(environ)
        if path == "/_moto_aws/config" and request.method == "POST":
            body = json.loads(request.get_data() or b"{}")
            with STATE.lock:
                if "root_keys" in body:
                    STATE.root_keys = set(body["root_keys"])
                if "unready_new_keys" in body:
                    STATE.unready_new_keys = int(body["unready_new_keys"])
            response = Response(json.dumps({"status": "ok"}), mimetype="application/json")
        elif path == "/_moto_aws/stats":
            with STATE.lock:
                sessions = [{"access_key_id": s.access_key_id, "parent": s.parent}
                            for s in STATE.sessions.values()]
            response = Response(json.dumps({"sessions": sessions}), mimetype="application/json")
        else:
            response = Response("not found", status=404)
        return response(environ, start_response)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="moto_aws")
    parser.add_argument("--port-file", required=True, type=Path)
    args = parser.parse_args(argv)
    patch()
    app = Extras(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    port = server.server_address[1]
    os.environ["MOTO_PORT"] = str(port)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    tmp = args.port_file.with_name(args.port_file.name + ".tmp")
    tmp.write_text(str(port))
    tmp.replace(args.port_file)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
