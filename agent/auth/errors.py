"""Errors of authentication and account management, each with a stable code and a hint.

Each class declares its kind, from which the HTTP layer answers its status (agent/api/errors.py);
the CLI prints them. Messages never contain a password, token, key or ticket.
"""

from __future__ import annotations

from oht_errors import CodedError, ErrorKind

__all__ = [
    "ApiKeyInvalid",
    "ApiKeyNotFound",
    "AuthError",
    "AuthExpired",
    "AuthFailed",
    "AuthInvalid",
    "AuthRequired",
    "CurrentPasswordRequired",
    "LastAdmin",
    "LoginThrottled",
    "PasswordMismatch",
    "PasswordRejected",
    "PermissionDenied",
    "PersonRequired",
    "RoleInvalid",
    "RoleNotAllowed",
    "SessionRequired",
    "UserExists",
    "UserNameInvalid",
    "UserNotFound",
]


class AuthError(CodedError):
    """Base class of everything this package raises."""

    code = "AUTH_ERROR"
    hint = "Authentication or account management refused the request: the message says why."
    kind = ErrorKind.UNAUTHENTICATED


class AuthRequired(AuthError):
    code = "AUTH_REQUIRED"
    hint = "Send `Authorization: Bearer <token>` with a token from POST /api/v1/auth/login or an API key."


class AuthInvalid(AuthError):
    code = "AUTH_INVALID"
    hint = "The token or API key is unknown, revoked or malformed: log in again or ask an admin for a new key."


class AuthExpired(AuthError):
    code = "AUTH_EXPIRED"
    hint = "The session reached its lifetime or was idle too long: log in again."


class AuthFailed(AuthError):
    """Wrong user name, wrong password or disabled account: deliberately indistinguishable."""

    code = "AUTH_FAILED"
    hint = "Check the user name and password. Repeated failures are throttled and audited."


class LoginThrottled(AuthError):
    code = "AUTH_THROTTLED"
    kind = ErrorKind.TOO_MANY_REQUESTS
    hint = "Too many failed logins from this address or for this account: wait for Retry-After seconds."

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermissionDenied(AuthError):
    code = "PERMISSION_DENIED"
    kind = ErrorKind.FORBIDDEN
    hint = "Your role does not include this action; ask an admin if you need it."


class RoleNotAllowed(PermissionDenied):
    code = "ROLE_NOT_ALLOWED"
    hint = "A user or key can only be given a role up to your own."


class PersonRequired(PermissionDenied):
    """Keys, users and passwords are managed by people, never by a machine client's key.

    A leaked key must not be able to mint more keys or accounts that outlive its revocation,
    nor take over a person's account by setting its password.
    """

    code = "AUTH_PERSON_REQUIRED"
    hint = (
        "API keys cannot create or revoke keys, create or disable users or set passwords: log in as an"
        " admin (POST /api/v1/auth/login) or use `oht-agent user ...` on the carriage."
    )


class CurrentPasswordRequired(PermissionDenied):
    """Whoever holds an admin's session must not set that admin's password without knowing it."""

    code = "AUTH_CURRENT_PASSWORD_REQUIRED"
    hint = "Change your own password with POST /api/v1/auth/password, which asks for the current one."


class SessionRequired(AuthError):
    code = "AUTH_SESSION_REQUIRED"
    kind = ErrorKind.CONFLICT
    hint = "This action applies to a login session; API keys are revoked with DELETE /api/v1/api-keys/{id}."


class PasswordRejected(AuthError):
    code = "PASSWORD_REJECTED"
    kind = ErrorKind.INVALID
    hint = (
        "Choose a passphrase of four or more unrelated words (12 characters at least). Refused:"
        " common passwords, keyboard or counting runs, a repeated short part, and a common word"
        " or the user name with only digits or symbols added."
    )


class RoleInvalid(AuthError):
    code = "ROLE_INVALID"
    kind = ErrorKind.INVALID
    hint = "Roles are viewer, operator, technician and admin."


class UserNameInvalid(AuthError):
    code = "USER_NAME_INVALID"
    kind = ErrorKind.INVALID
    hint = "User names are 2-64 characters: a letter, then letters, digits, '.', '_' or '-'."


class UserExists(AuthError):
    code = "USER_EXISTS"
    kind = ErrorKind.CONFLICT
    hint = "User names are unique regardless of case; disabled users keep their name."


class UserNotFound(AuthError):
    code = "USER_NOT_FOUND"
    kind = ErrorKind.NOT_FOUND
    hint = "List users with `oht-agent user list` or GET /api/v1/users."


class LastAdmin(AuthError):
    code = "USER_LAST_ADMIN"
    kind = ErrorKind.CONFLICT
    hint = "Create or enable another admin first: the agent must always keep one admin."


class ApiKeyNotFound(AuthError):
    code = "API_KEY_NOT_FOUND"
    kind = ErrorKind.NOT_FOUND
    hint = "List keys with GET /api/v1/api-keys; ids are shown there."


class ApiKeyInvalid(AuthError):
    code = "API_KEY_INVALID"
    kind = ErrorKind.INVALID
    hint = "Name the key after its client: 1-64 printable characters."


class PasswordMismatch(AuthError):
    code = "AUTH_PASSWORD_MISMATCH"
    kind = ErrorKind.FORBIDDEN
    hint = "The current password was not correct; failures count toward the login throttle."
