"""Parameters of each command type, validated before a command is stored.

Bad input gets a clear error and changes nothing: a command whose parameters do not validate is
refused at submission (COMMAND_INVALID), never stored to fail later.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.store.errors import CommandInvalid

RoleName = Literal["power", "safety", "travel", "dock"]


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class NoParams(_Params):
    pass


class MoveParams(_Params):
    """Travel along the track on M1, bounded by a distance or a duration (exactly one)."""

    direction: Literal["forward", "reverse"]
    speed_pct: Annotated[int, Field(ge=1, le=100)]
    distance_cm: Annotated[int, Field(ge=1, le=300)] | None = None
    duration_ms: Annotated[int, Field(ge=100, le=30000)] | None = None

    @model_validator(mode="after")
    def _one_bound(self) -> MoveParams:
        if (self.distance_cm is None) == (self.duration_ms is None):
            raise ValueError("give exactly one of distance_cm or duration_ms")
        return self


class HoistParams(_Params):
    """Lift (M2) to a position on its spool, in cm."""

    position_cm: Annotated[int, Field(ge=0, le=300)]
    speed_pct: Annotated[int, Field(ge=1, le=100)] = 30


class DockParams(_Params):
    speed_pct: Annotated[int, Field(ge=1, le=30)] = 10
    timeout_ms: Annotated[int, Field(ge=1000, le=15000)] = 10000


class UndockParams(_Params):
    distance_cm: Annotated[int, Field(ge=1, le=100)] = 20
    speed_pct: Annotated[int, Field(ge=1, le=30)] = 10


class ChargeStartParams(_Params):
    voltage_v: Annotated[float, Field(gt=0, le=60)] = 25.2
    current_a: Annotated[float, Field(gt=0, le=20)] = 5.0


class ModuleResetParams(_Params):
    role: RoleName


class RegisterWriteParams(_Params):
    """A technician's guarded write of one register, checked against the module's profile."""

    role: RoleName
    register_name: Annotated[str, Field(min_length=1, max_length=64, alias="register")]
    value: int | float


PARAMS: dict[str, type[_Params]] = {
    "move": MoveParams,
    "stop": NoParams,
    "pause": NoParams,
    "resume": NoParams,
    "hoist": HoistParams,
    "dock": DockParams,
    "undock": UndockParams,
    "charge_start": ChargeStartParams,
    "charge_stop": NoParams,
    "module_reset": ModuleResetParams,
    "register_write": RegisterWriteParams,
}

# Executed the moment they are stored, next to whatever runs: they act on the running command.
OUT_OF_BAND = frozenset({"stop", "pause", "resume"})
MOTION_TYPES = frozenset({"move", "hoist", "dock", "undock"})

# Still accepted when the outbox is full (Outbox.admission says OUTBOX_FULL): commands that only
# stop something. Refusing new commands while results cannot be kept must never take away the
# way to stop the robot: `stop`, `pause` (it stops motion, PAUSED holds still) and `charge_stop`
# (it switches the charger off). `resume` is refused with the motion types: it starts motion.
ADMITTED_WHEN_FULL = frozenset({"stop", "pause", "charge_stop"})


def admitted_when_full(command_type: str) -> bool:
    """Whether a new command of this type is accepted while the outbox refuses commands."""
    return command_type in ADMITTED_WHEN_FULL


def validate_params(command_type: str, params: Any) -> dict[str, Any]:
    model = PARAMS.get(command_type)
    if model is None:
        raise CommandInvalid(
            f"unknown command type {command_type!r}",
            hint=f"use one of: {', '.join(sorted(PARAMS))}",
        )
    if not isinstance(params, dict):
        raise CommandInvalid("params must be a JSON object", hint="send {} when a command takes no parameters")
    try:
        parsed = model.model_validate(params)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'params'}: {e['msg']}" for e in exc.errors())
        raise CommandInvalid(
            f"invalid parameters for {command_type}: {problems}",
            hint=f"see the {command_type} parameters in the README",
        ) from None
    return parsed.model_dump(exclude_none=True, by_alias=True)


def parse(command_type: str, params: dict[str, Any]) -> Any:
    return PARAMS[command_type].model_validate(params)
