"""Admin API bodies for suppliers, tags, subjects and assignments."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator


class SupplierIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)


class SupplierOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    name: str
    created_at: datetime


class SupplierCreated(SupplierOut):
    # Shown once; only its hash is kept.
    token: str


class TagIn(BaseModel):
    tag_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")
    supplier_id: uuid.UUID


class TagOut(BaseModel):
    tag_id: str
    supplier_id: uuid.UUID
    created_at: datetime


class Risk(StrEnum):
    low = "low"
    medium = "medium"
    high = "high"


class SubjectIn(BaseModel):
    reference: str = Field(min_length=1, max_length=100)
    display_name: str = Field(min_length=1, max_length=200)
    risk: Risk = Risk.medium


class SubjectOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    reference: str
    display_name: str
    risk: str
    created_at: datetime


class Period(BaseModel):
    valid_from: AwareDatetime
    valid_to: AwareDatetime | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Period:
        if self.valid_to is not None and self.valid_to <= self.valid_from:
            raise ValueError("valid_to must be after valid_from")
        return self


class TagAssignmentIn(Period):
    tag_id: str = Field(min_length=1, max_length=64)


class TagAssignmentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    tag_id: str
    subject_id: uuid.UUID
    valid_from: datetime
    valid_to: datetime | None


class ManagerAssignmentIn(Period):
    manager_id: uuid.UUID


class ManagerAssignmentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    manager_id: uuid.UUID
    subject_id: uuid.UUID
    valid_from: datetime
    valid_to: datetime | None


class SupervisorIn(BaseModel):
    supervisor_id: uuid.UUID


class ManagerOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    name: str
    supervisor_id: uuid.UUID | None
    team_id: uuid.UUID | None


class TeamIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)


class TeamOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    name: str
    created_at: datetime


class MembershipIn(BaseModel):
    team_id: uuid.UUID | None
