"""The parameter models of the command types, validated before a command is stored.

Bad input gets a clear error and changes nothing: a command whose parameters do not validate is
refused at submission (COMMAND_INVALID), never stored to fail later. Which model belongs to which
command type is said once, in `agent.control.catalogue`, which also validates against them.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

RoleName = Literal["power", "safety", "travel", "dock"]


class CommandParams(BaseModel):
    """Base of every parameter model: unknown keys and loose types are refused, values are frozen."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    # A rule across fields that the field list cannot show, for the README's command table.
    rule: ClassVar[str] = ""


class NoParams(CommandParams):
    """The command takes no parameters (send {})."""


class MoveParams(CommandParams):
    """Travel along the track on M1, bounded by a distance or a duration (exactly one)."""

    rule: ClassVar[str] = "exactly one of `distance_cm` or `duration_ms`"

    direction: Literal["forward", "reverse"]
    speed_pct: Annotated[int, Field(ge=1, le=100)]
    distance_cm: Annotated[int, Field(ge=1, le=300)] | None = None
    duration_ms: Annotated[int, Field(ge=100, le=30000)] | None = None

    @model_validator(mode="after")
    def _one_bound(self) -> MoveParams:
        if (self.distance_cm is None) == (self.duration_ms is None):
            raise ValueError("give exactly one of distance_cm or duration_ms")
        return self


class HoistParams(CommandParams):
    """Lift (M2) to a position on its spool, in cm."""

    position_cm: Annotated[int, Field(ge=0, le=300)]
    speed_pct: Annotated[int, Field(ge=1, le=100)] = 30


class DockParams(CommandParams):
    speed_pct: Annotated[int, Field(ge=1, le=30)] = 10
    timeout_ms: Annotated[int, Field(ge=1000, le=15000)] = 10000


class UndockParams(CommandParams):
    distance_cm: Annotated[int, Field(ge=1, le=100)] = 20
    speed_pct: Annotated[int, Field(ge=1, le=30)] = 10


class ChargeStartParams(CommandParams):
    voltage_v: Annotated[float, Field(gt=0, le=60)] = 25.2
    current_a: Annotated[float, Field(gt=0, le=20)] = 5.0


class ModuleResetParams(CommandParams):
    role: RoleName


class RegisterWriteParams(CommandParams):
    """A technician's guarded write of one register, checked against the module's profile."""

    role: RoleName
    register_name: Annotated[str, Field(min_length=1, max_length=64, alias="register")]
    value: int | float
