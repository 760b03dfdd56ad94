"""The central consumer's own error codes, declared once here.

Only what the agent's codes (agent/sync/errors.py) do not already say: a record refused for its
form, its signature, its robot or its seq carries the UPSTREAM_* code the agent's own rules give
it (`agent.sync.replay.judge_record`), so the robot's technician and the central team read the
same code for the same thing.
"""

from __future__ import annotations

from oht_errors import CodedError, ErrorKind

__all__ = ["DeviceKeysInvalid", "DeviceUnknown", "StoreFailed"]


class StoreFailed(CodedError):
    code = "CENTRAL_STORE_FAILED"
    kind = ErrorKind.UNAVAILABLE
    hint = (
        "The central database could not be opened or written (disk, permissions, lock): "
        "the consumer stops rather than acknowledge what it did not store."
    )


class DeviceUnknown(CodedError):
    code = "CENTRAL_DEVICE_UNKNOWN"
    kind = ErrorKind.FORBIDDEN
    hint = (
        "No device key is pinned for this robot: enrol it by adding its agent id and the key printed by"
        " `oht-agent upstream pubkey` to the --device-keys file (docs/upstream.md, enrolling a robot)."
        " The file is read again on SIGHUP or when it changes; the robot sends its records again."
    )


class DeviceKeysInvalid(CodedError):
    code = "CENTRAL_DEVICE_KEYS_INVALID"
    kind = ErrorKind.INVALID
    hint = (
        'The --device-keys file must be TOML: one line per robot, "<agent id>" = "<its device public key>"'
        " (base64 of the 32 bytes, or the PEM block in triple quotes). Fix the line named."
    )
