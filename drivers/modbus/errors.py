"""Bus errors, each with a stable code and a hint a technician can act on."""

from __future__ import annotations

from types import MappingProxyType

from drivers.modbus.frames import EXCEPTION_NAMES, exception_name
from oht_errors import CodedError, ErrorKind


class BusError(CodedError):
    """The bus could not carry a request: the line, the port or the module."""

    code = "BUS_ERROR"
    kind = ErrorKind.UNAVAILABLE
    hint = "The RS485 bus failed a request: see the agent log for the module and the cause; it is retried."


class BusTimeout(BusError):
    code = "BUS_TIMEOUT"
    hint = "The module did not answer in time: check its power, its slave address and the RS485 wiring."


class BusPreempted(BusTimeout):
    """A read that was already overdue was abandoned so that a stop could go out."""

    code = "BUS_PREEMPTED"
    hint = "A stop took the bus; the read is retried after it."


class BusCrcError(BusError):
    code = "BUS_CRC_ERROR"
    hint = "Replies arrive damaged: check termination (120 ohm at both ends only), shield and bias resistors."


class BusMismatch(BusError):
    code = "BUS_REPLY_MISMATCH"
    hint = "Replies do not match the requests: look for two modules on the same address or a wrong baud rate."


class ModbusExceptionReply(BusError):
    """The slave answered with a Modbus exception; such an answer is final, so it is not retried."""

    hint = "The module refused the request: check the register map (profile) against its firmware version."
    # Retrying does not help and the caller cannot fix it: the profile and the firmware disagree.
    kind = ErrorKind.INTERNAL
    variants = MappingProxyType(
        {
            f"MODBUS_EXCEPTION_{number:02X}": f"The module answered Modbus exception {number:#04x} ({name}): "
            "check the register map (profile) against its firmware version."
            for number, name in EXCEPTION_NAMES.items()
        }
    )

    def __init__(self, slave: int, function: int, exception_code: int) -> None:
        self.slave = slave
        self.function = function
        self.exception_code = exception_code
        super().__init__(
            f"slave {slave} answered function {function:#04x} with {exception_name(exception_code)}",
            code=f"MODBUS_EXCEPTION_{exception_code:02X}",
        )


class PortUnavailable(BusError):
    code = "BUS_PORT_DOWN"
    hint = (
        "The serial device is missing or failed: check the RS485 adapter and cable, the udev symlink "
        "(/dev/ttyOHT485) and that the service user is in the dialout group."
    )


class SlaveSetAside(BusError):
    code = "BUS_SLAVE_OFFLINE"
    hint = "The module stopped answering and is probed in the background; it returns by itself when it answers."


class BusQueueFull(BusError):
    code = "BUS_QUEUE_FULL"
    hint = "More requests than the line can carry: reduce polling rates or the number of pending commands."


class BusStopped(BusError):
    code = "BUS_STOPPED"
    hint = "The bus master is shutting down."
