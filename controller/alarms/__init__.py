"""ISA-18.2 alarms: configuration, vectorised evaluation, the state machine, health.

The daemon builds one `AlarmEngine` from its `AlarmConfig`s, calls `tick` once per tick
with arrays aligned with `engine.ids`, and publishes the events and snapshots it returns;
docs/alarms.md describes the model.
"""

from controller.alarms.config import AlarmConfig, Kind, Priority, Suppress
from controller.alarms.engine import AlarmEngine, AlarmRefused
from controller.alarms.events import AlarmEvent
from controller.alarms.health import HealthMetrics, HealthTracker
from controller.alarms.states import Cause, State
from controller.alarms.table import AlarmTable, pack

__all__ = [
    "AlarmConfig",
    "AlarmEngine",
    "AlarmEvent",
    "AlarmRefused",
    "AlarmTable",
    "Cause",
    "HealthMetrics",
    "HealthTracker",
    "Kind",
    "Priority",
    "State",
    "Suppress",
    "pack",
]
