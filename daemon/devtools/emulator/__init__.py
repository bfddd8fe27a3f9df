"""A local IAM Roles Anywhere ``CreateSession`` emulator.

Why it exists: users (and our own tests) need to exercise the whole SigV4-X509 path
offline. So the emulator verifies what AWS verifies -- the Authorization header, the
certificate binding, the date, the signature over the request as received, the body and
the certificate chain up to the trust anchor's CA -- and answers with AWS's error shapes
(``X-Amzn-ErrorType`` header, JSON ``{"message": ...}``). The credentials it issues are
random and fake: they work nowhere but prove which set a client received.

Command line (``credential-sidecar emulator ...``, or
``python -m credential_sidecar.devtools.emulator ...``)::

    --listen HOST:PORT        where to listen (default 127.0.0.1:8443, loopback; port 0 = any
                              free port; IPv6 as [::1]:8443)
    --ca FILE                 PEM file with one or more CA certificates the trust anchor trusts
                              (repeatable; required)
    --trust-anchor-arn ARN    the trust anchor's ARN; its region is the emulator's region (default
                              arn:aws:rolesanywhere:us-east-1:111122223333:trust-anchor/emulator)
    --profile-arn ARN         the profile's ARN (default
                              arn:aws:rolesanywhere:us-east-1:111122223333:profile/emulator)
    --role-arn ARN            a role the profile allows (repeatable;
                              default arn:aws:iam::111122223333:role/emulator)
    --max-duration SECONDS    the profile's cap on durationSeconds (900..43200, default 43200)
    --port-file PATH          write the bound port there once listening (for port 0)

On start it prints one line to stdout, ``emulator listening on http://HOST:PORT``, and
serves until SIGINT or SIGTERM (exit 0; 2 for a bad option such as an unreadable CA file).

HTTP endpoints:

* ``POST /sessions`` -- CreateSession, verified as described in ``Emulator``.
* ``POST /_emulator/faults`` -- JSON object with any ``Faults`` fields (partial update;
  an unknown field or a wrong type is a 400); answers the faults now in force.
* ``GET /_emulator/faults`` -- the faults in force. ``DELETE /_emulator/faults`` -- clear all.
* ``GET /_emulator/stats`` -- ``{"calls", "succeeded", "failed", "issued": [credentials...],
  "faults"}``.

The control endpoints have no authentication: keep the emulator on loopback.
"""
