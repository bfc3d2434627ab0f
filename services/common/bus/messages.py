"""Bus messages that belong to no single service."""

from __future__ import annotations

from pydantic import AwareDatetime, BaseModel, ConfigDict


class DeadLetter(BaseModel):
    """A message a handler could not process, kept with the reason for a person to look at."""

    model_config = ConfigDict(frozen=True)

    group: str
    topic: str
    key: str
    payload: str
    error: str
    failed_at: AwareDatetime
