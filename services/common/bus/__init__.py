"""The message bus: one interface, on Kafka in production or in-process for one machine.

Handlers receive batches of parsed messages and never know which bus they are on.
"""

from services.common.bus.base import (
    Batch,
    BatchTopic,
    Bus,
    BusUnavailable,
    Envelope,
    Handler,
    Topic,
)

__all__ = ["Batch", "BatchTopic", "Bus", "BusUnavailable", "Envelope", "Handler", "Topic"]
