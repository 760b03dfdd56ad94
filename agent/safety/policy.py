"""Safety thresholds and link-loss budgets (the [safety] configuration section), validated together."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SafetyPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    # Link-loss budgets (docs/firmware.md#link-loss-budgets: tightened where the firmware allows).
    safety_link_budget_ms: Annotated[int, Field(ge=100, le=250)] = 250
    power_link_warning_ms: Annotated[int, Field(ge=500, le=10000)] = 1000
    power_stop_countdown_ms: Annotated[int, Field(ge=0, le=60000)] = 5000
    travel_link_budget_ms: Annotated[int, Field(ge=100, le=5000)] = 500
    dock_link_budget_ms: Annotated[int, Field(ge=500, le=60000)] = 5000
    # Obstacle distances from the safety module's enabled analog sensors, in its unit (cm).
    obstacle_emergency: Annotated[float, Field(ge=0)] = 30
    obstacle_warning: Annotated[float, Field(ge=0)] = 60
    obstacle_safe: Annotated[float, Field(ge=0)] = 80
    warning_speed_factor: Annotated[float, Field(ge=0.3, le=0.7)] = 0.5
    # Battery state of charge, percent.
    battery_stop_pct: Annotated[float, Field(ge=0, le=100)] = 10
    battery_warning_pct: Annotated[float, Field(ge=0, le=100)] = 20
    battery_hysteresis_pct: Annotated[float, Field(ge=0, le=20)] = 2
    # Event-loop lag.
    loop_lag_warning_ms: Annotated[int, Field(ge=5, le=1000)] = 50
    loop_lag_stop_ms: Annotated[int, Field(ge=10, le=5000)] = 200
    # Stop confirmation and reset.
    stop_confirm_timeout_ms: Annotated[int, Field(ge=50, le=10000)] = 1000
    estop_release_ms: Annotated[int, Field(ge=50, le=5000)] = 50
    # A stop is confirmed only while the driver's motor current is at most this (a second signal
    # besides the speed registers); and after a confirmed stop the carriage must not move further.
    stop_current_max_a: Annotated[float, Field(ge=0, le=50)] = 0.2
    uncommanded_motion_cm: Annotated[int, Field(ge=1, le=100)] = 3

    @model_validator(mode="after")
    def _ordered(self) -> SafetyPolicy:
        if not self.obstacle_emergency < self.obstacle_warning < self.obstacle_safe:
            raise ValueError("obstacle distances must satisfy obstacle_emergency < obstacle_warning < obstacle_safe")
        if not self.battery_stop_pct < self.battery_warning_pct:
            raise ValueError("battery_stop_pct must be below battery_warning_pct")
        if not self.loop_lag_warning_ms < self.loop_lag_stop_ms:
            raise ValueError("loop_lag_warning_ms must be below loop_lag_stop_ms")
        return self
