"""Errors of the upstream link, each with a stable code and a hint, declared once here.

The codes travel: a refused command's receipt carries one to the centre, and the same code is in
the agent's log, so a technician and the central team name the same thing. Messages never carry
a key, a signature or a message body (they can be large, and a body may hold what the log must
not).
"""

from __future__ import annotations

from oht_errors import CodedError, ErrorKind

__all__ = [
    "AckTimeout",
    "BacklogOverdue",
    "CommandExpired",
    "CommandReplayed",
    "CommandStale",
    "DeviceKeyInvalid",
    "DeviceKeyUnreadable",
    "DeviceKeyUnwritable",
    "MessageMalformed",
    "MessageTooLarge",
    "PublicKeyInvalid",
    "RecordUnsendable",
    "SeqConflict",
    "SignatureInvalid",
    "UpstreamError",
    "VersionUnsupported",
    "WrongAgent",
]


class UpstreamError(CodedError):
    """Base class of everything the upstream link raises."""

    code = "UPSTREAM_ERROR"
    kind = ErrorKind.INVALID
    hint = "The upstream link refused a message or failed: the message says which; see docs/upstream.md."


class MessageMalformed(UpstreamError):
    code = "UPSTREAM_MALFORMED"
    hint = (
        "The message is not the envelope of docs/upstream.md: signed messages travel as canonical"
        " JSON (sorted keys, no spaces, UTF-8) with exactly the fields listed there."
    )


class MessageTooLarge(UpstreamError):
    code = "UPSTREAM_TOO_LARGE"
    kind = ErrorKind.PAYLOAD_TOO_LARGE
    hint = "Messages are bounded (docs/upstream.md, size limits); a larger one is refused unread."


class VersionUnsupported(UpstreamError):
    code = "UPSTREAM_VERSION_UNSUPPORTED"
    hint = 'This agent speaks envelope version 1 ("v": 1); upgrade the agent or send version 1.'


class SignatureInvalid(UpstreamError):
    code = "UPSTREAM_SIGNATURE_INVALID"
    kind = ErrorKind.FORBIDDEN
    hint = (
        "The signature does not verify with the pinned key: check [upstream] central_public_key on"
        " the robot (commands) or the device key pinned centrally (`oht-agent upstream pubkey`)."
    )


class WrongAgent(UpstreamError):
    code = "UPSTREAM_WRONG_AGENT"
    kind = ErrorKind.FORBIDDEN
    hint = "The message names another robot than the one it reached: check the topic and the agent id."


class CommandStale(UpstreamError):
    code = "UPSTREAM_STALE"
    kind = ErrorKind.CONFLICT
    hint = (
        "issued_at is older than [upstream] command_max_age_s or ahead of this clock by more than"
        " clock_skew_s: check NTP on the robot and on the centre, then issue a new command."
    )


class CommandExpired(UpstreamError):
    code = "UPSTREAM_EXPIRED"
    kind = ErrorKind.CONFLICT
    hint = "The command's not_after passed before it arrived; it was not run. Issue a new one."


class CommandReplayed(UpstreamError):
    code = "UPSTREAM_REPLAYED"
    kind = ErrorKind.CONFLICT
    hint = "This command_id was handled before; its first receipt and result stand. A new command needs a new id."


class SeqConflict(UpstreamError):
    """Raised on the central side; declared here so both ends name it alike."""

    code = "UPSTREAM_SEQ_CONFLICT"
    kind = ErrorKind.CONFLICT
    hint = (
        "The robot sent a new record under a seq already committed with another record: its"
        " database went back (restored from an older backup?). Do not acknowledge it; compare the"
        " robot's outbox with the central copy before going on."
    )


class PublicKeyInvalid(UpstreamError):
    code = "UPSTREAM_PUBLIC_KEY_INVALID"
    hint = (
        "Give an Ed25519 public key: base64 of its 32 bytes, or a PEM block"
        " (-----BEGIN PUBLIC KEY-----) as the centre exported it."
    )


class DeviceKeyUnreadable(UpstreamError):
    code = "UPSTREAM_DEVICE_KEY_UNREADABLE"
    kind = ErrorKind.UNAVAILABLE
    hint = (
        "device.key in the data directory must be readable by the gateway's account: run"
        " `oht-agent upstream ...` as that account (docs/systemd.md), check the file's owner and mode."
    )


class DeviceKeyUnwritable(UpstreamError):
    code = "UPSTREAM_DEVICE_KEY_UNWRITABLE"
    kind = ErrorKind.UNAVAILABLE
    hint = (
        "The device key is made in the data directory ([agent] data_dir), which must exist and be"
        " writable by the account running the command: the gateway's (docs/systemd.md)."
    )


class DeviceKeyInvalid(UpstreamError):
    code = "UPSTREAM_DEVICE_KEY_INVALID"
    kind = ErrorKind.INTERNAL
    hint = (
        "device.key is damaged: restore it from the backup of the data directory. Only if none"
        " exists, move it away (a new key is made) and pin the new public key centrally."
    )


class AckTimeout(UpstreamError):
    code = "UPSTREAM_ACK_TIMEOUT"
    kind = ErrorKind.UNAVAILABLE
    hint = (
        "No central acknowledgement came for [upstream] ack_timeout_s while records were in flight:"
        " the robot sends them again. Check that a central consumer runs and reaches the broker."
    )


class BacklogOverdue(UpstreamError):
    code = "UPSTREAM_BACKLOG_OVERDUE"
    kind = ErrorKind.UNAVAILABLE
    hint = (
        "Records that are never dropped have waited longer than their class's time-to-live: they"
        " are kept, but the centre has not taken them. Check the broker, the consumer and the link"
        " (`oht-agent db check` shows the backlog of every stream)."
    )


class RecordUnsendable(UpstreamError):
    code = "UPSTREAM_RECORD_UNSENDABLE"
    kind = ErrorKind.INTERNAL
    hint = (
        "An outbox record cannot be put into the envelope (the message names it); its stream"
        " waits at it and retries. A bug or a damaged row: report it with `oht-agent db check`."
    )
