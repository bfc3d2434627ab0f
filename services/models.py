"""Every service's tables on one metadata, for Alembic."""

from services.alerts import models as _alerts
from services.common import auth as _auth
from services.common import deadletters as _deadletters
from services.common.database import Base
from services.ingest import models as _ingest
from services.registry import models as _registry
from services.trails import models as _trails
from services.zones import models as _zones

metadata = Base.metadata

__all__ = [
    "_alerts",
    "_auth",
    "_deadletters",
    "_ingest",
    "_registry",
    "_trails",
    "_zones",
    "metadata",
]
