"""Runtime settings, one pydantic-settings class per concern, read from TAGTRAIL_* variables."""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from urllib.parse import quote, urlencode

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Written by deploy/local/*.sh so that `make run` and `make test` find the local services,
# wherever the command is run from. Real environment variables take precedence.
LOCAL_ENV_FILE = Path(__file__).resolve().parents[2] / ".local" / "services.env"
DEV_DB_PASSWORD = "tagtrail-dev"


class Environment(StrEnum):
    development = "development"
    production = "production"


def _config(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, env_file=LOCAL_ENV_FILE, extra="ignore")


class DatabaseSettings(BaseSettings):
    model_config = _config("TAGTRAIL_DB_")

    host: str = "127.0.0.1"
    port: int = 5432
    user: str = "tagtrail"
    password: SecretStr = SecretStr(DEV_DB_PASSWORD)
    name: str = "tagtrail"
    pool_size: int = Field(default=10, ge=1, le=100)

    def sqlalchemy_url(self, database: str | None = None) -> str:
        return self._url("postgresql+asyncpg", database)

    def asyncpg_dsn(self, database: str | None = None) -> str:
        return self._url("postgresql", database)

    def _url(self, scheme: str, database: str | None) -> str:
        """A connection URL, user, password and database name escaped (a password may
        hold any character). A host that starts with / is the directory of the
        server's Unix socket."""
        user = quote(self.user, safe="")
        password = quote(self.password.get_secret_value(), safe="")
        name = quote(database or self.name, safe="")
        if self.host.startswith("/"):
            socket = urlencode({"host": self.host, "port": self.port})
            return f"{scheme}://{user}:{password}@/{name}?{socket}"
        return f"{scheme}://{user}:{password}@{self.host}:{self.port}/{name}"


class KafkaSettings(BaseSettings):
    model_config = _config("TAGTRAIL_KAFKA_")

    bootstrap: str = "127.0.0.1:9092"
    topic_prefix: str = "tagtrail."
    partitions: int = Field(default=8, ge=1, le=1024)
    # Under load, a consumer of fixes (the points topics) goes on fetching for up to
    # linger_ms before handing a batch over, up to TAGTRAIL_BUS_MAX_BATCH fixes. Under
    # load means it has fetched at least linger_rate fixes over the last LOAD_WINDOW_S
    # (about a second; kafka.py): 8,000 is about half what each of a worker's two lanes
    # fetches flat out on two cores, and three times what it fetches at 5,000 a second.
    # Without it each worker keeps up with its topic and takes about 2,000 fixes a
    # batch, of about one fix a tag, and PostgreSQL's COPY costs 40 % more a fix then
    # than in batches of several fixes a tag (bench/copy_batches.py). Lingering 500 ms
    # made batches of about 7,000 and 27 % more fixes a second on Kafka flat out; 250
    # as many as 500, and 1,000 fewer; fix-to-alert at 5,000 a second is unchanged, as
    # nothing lingers there (docs/benchmarks.md, nineteenth session). 0: hand over what
    # a fetch brings, always.
    linger_ms: int = Field(default=250, ge=0, le=5000)
    linger_rate: int = Field(default=8000, ge=1, le=10_000_000)
    # How long a publish may wait for the broker (the producer's request timeout).
    request_timeout_s: float = Field(default=40.0, gt=0, le=600)


class BusSettings(BaseSettings):
    model_config = _config("TAGTRAIL_BUS_")

    # How many batches of one consumer group a process works on at once. One tag's
    # messages always go to the same lane (on Kafka: are in one partition), so they stay
    # in order; while one batch waits on PostgreSQL, another is worked on.
    lanes: int = Field(default=2, ge=1, le=64)
    # How many messages one handler call may receive. Every batch costs each group a
    # dozen statements and their round trips whatever its size, so under load larger
    # batches go further; a quiet bus hands over what it has, so this costs no latency
    # then (docs/benchmarks.md). Unset: 32,000 on Kafka, 16,000 on the in-process bus,
    # where a request waits for the checks, so larger batches held more requests up
    # for longer and made fewer fixes a second (twenty-second session).
    max_batch: int | None = Field(default=None, ge=1, le=100_000)

    def batch_cap(self, bus: str) -> int:
        """max_batch, or the default for this kind of bus ("kafka" or "memory")."""
        if self.max_batch is not None:
            return self.max_batch
        return 32_000 if bus == "kafka" else 16_000


class IngestSettings(BaseSettings):
    model_config = _config("TAGTRAIL_INGEST_")

    max_body_bytes: int = Field(default=5 * 1024 * 1024, ge=1024)
    max_stream_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    max_fixes_per_batch: int = Field(default=5000, ge=1)
    max_stream_lines: int = Field(default=50_000, ge=1)
    # Tags' clocks drift a little; anything further in the future is a broken clock.
    max_clock_skew_s: float = Field(default=120.0, ge=0)
    # Buffered fixes are welcome, but a fix older than this is a device fault (GPS week
    # rollover, reset clock), not a late upload.
    max_fix_age_days: int = Field(default=365, ge=1)
    max_accuracy_m: float = Field(default=10_000.0, gt=0)
    # How long ingest trusts what it remembers of a tag's stored trail (its horizon:
    # services/ingest/horizons.py) before asking the trail again. Bounds how long a
    # re-send of a fix stored through another API process can pass for new.
    horizon_ttl_s: float = Field(default=60.0, ge=0, le=3600)


class CheckSettings(BaseSettings):
    model_config = _config("TAGTRAIL_CHECK_")

    crime_radius_m: float = Field(default=100.0, gt=0, le=10_000)
    # A fix vaguer than this cannot place anyone at a crime scene (cell fixes are often
    # 500 m to several km); it is ignored for matching, not counted as a match.
    crime_max_accuracy_m: float = Field(default=250.0, gt=0, le=1000)  # trail boxes' limit
    # Per crime type code, e.g. {"TOMV": 150}: vehicle crime covers a street, not a door.
    crime_radius_by_category: dict[str, float] = Field(default_factory=dict)
    # The crime window is widened by this on both sides: crime times are estimates.
    crime_slack_s: float = Field(default=900.0, ge=0, le=86_400)
    # The straight path between fixes up to this far apart counts for closest approach.
    # At most 600 s, the longest path the trail boxes hold (proximity search uses them).
    crime_segment_max_gap_s: float = Field(default=600.0, ge=0, le=600)
    # A gap in the trail longer than this over a crime window means it cannot rule out.
    crime_gap_s: float = Field(default=300.0, ge=30)
    # A fix received this long after it was taken makes its alert "late".
    late_after_s: float = Field(default=300.0, ge=0)
    # Zone decisions; the README explains each default.
    confirm_fixes: int = Field(default=2, ge=1, le=100)
    confirm_dwell_s: float = Field(default=60.0, ge=0)
    segment_max_gap_s: float = Field(default=300.0, ge=0)
    curfew_lookback_s: float = Field(default=7200.0, ge=0)
    no_data_after_s: float = Field(default=1800.0, ge=60)
    # No fix for this long from a subject wearing a tag opens a silence alert. Tags fix
    # about once a minute, so 30 minutes is many missed fixes, not one dropped upload.
    silence_after_s: float = Field(default=1800.0, ge=60)
    watchdog_interval_s: float = Field(default=60.0, gt=0)
    # How much trail before new fixes the zone checker reads back to place them.
    context_s: float = Field(default=7200.0, ge=60)
    # The box keeper (crimes role) widens trail boxes and runs the crime trigger for the
    # stored batches waiting, this often, up to box_claim batches a round; a full round
    # goes again at once. Waiting lets a round take many batches, which costs far less a
    # fix than one round a batch; a live fix's crime match comes up to this much later.
    box_interval_s: float = Field(default=0.5, gt=0, le=60)
    box_claim: int = Field(default=64, ge=1, le=10_000)
    # And no more batches than hold this many fixes (the first whatever its size): a
    # round's memory goes by its fixes. A whole day of the benchmark's fleet came in
    # rounds of about 84,000; a backlog's rounds took 637 MiB uncapped.
    box_claim_fixes: int = Field(default=250_000, ge=1, le=10_000_000)


DEV_WEBHOOK_KEY = "tagtrail-development-webhook-key"


class AlertSettings(BaseSettings):
    model_config = _config("TAGTRAIL_ALERTS_")

    # Webhook signing secrets are derived from this key (never stored).
    webhook_key: SecretStr = SecretStr(DEV_WEBHOOK_KEY)
    # Retries: about 2 s, 4 s, 8 s ... capped at 15 min, with jitter; 10 attempts span
    # roughly an hour and a half before a delivery is dead and waits for an admin.
    max_attempts: int = Field(default=10, ge=1, le=100)
    retry_base_s: float = Field(default=2.0, gt=0)
    retry_cap_s: float = Field(default=900.0, gt=0)
    timeout_s: float = Field(default=10.0, gt=0, le=120)
    poll_interval_s: float = Field(default=1.0, gt=0)
    # An alert still unacknowledged this long after it was filed goes to the managers'
    # supervisors too. Green alerts do not escalate.
    escalate_after_s: dict[str, float] = Field(
        default_factory=lambda: {"red": 900.0, "amber": 3600.0}
    )
    escalation_interval_s: float = Field(default=30.0, gt=0)


class RetentionSettings(BaseSettings):
    model_config = _config("TAGTRAIL_RETENTION_")

    # Fixes (whole daily partitions) and device events: 12 months, the default the
    # issue asks for; set what your data-protection assessment says.
    fixes_days: int = Field(default=365, ge=1)
    # Crimes (all versions, with their matching runs) are kept longer: matches are
    # evidence for as long as a case can come to court.
    crimes_days: int = Field(default=730, ge=1)
    match_runs_days: int = Field(default=730, ge=1)
    interval_s: float = Field(default=3600.0, gt=0)


class SmtpSettings(BaseSettings):
    model_config = _config("TAGTRAIL_SMTP_")

    host: str = "127.0.0.1"
    port: int = Field(default=25, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    # "starttls" upgrades a plain connection; "tls" connects over TLS; "none" for a
    # relay on the same host only.
    security: str = Field(default="none", pattern="^(none|starttls|tls)$")
    sender: str = "tagtrail@localhost"
    timeout_s: float = Field(default=15.0, gt=0)


class AppSettings(BaseSettings):
    model_config = _config("TAGTRAIL_")

    env: Environment = Environment.development
    bus: str = Field(default="memory", pattern="^(memory|kafka)$")
    host: str = "127.0.0.1"
    port: int = 8000
    # Bodies of the admin and query routes (zones, crime batches); ingest has its own.
    max_body_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)

    @model_validator(mode="after")
    def _refuse_dev_defaults(self) -> AppSettings:
        if self.env is Environment.production:
            db = DatabaseSettings()
            if db.password.get_secret_value() == DEV_DB_PASSWORD:
                raise ValueError(
                    "TAGTRAIL_DB_PASSWORD is the development default; set a real one "
                    "before running with TAGTRAIL_ENV=production"
                )
            if AlertSettings().webhook_key.get_secret_value() == DEV_WEBHOOK_KEY:
                raise ValueError(
                    "TAGTRAIL_ALERTS_WEBHOOK_KEY is the development default; set a real one "
                    "before running with TAGTRAIL_ENV=production"
                )
        return self


ALERTING_GROUPS = 4


class Settings:
    """All settings, read once per process."""

    def __init__(self) -> None:
        self.app = AppSettings()
        self.db = DatabaseSettings()
        self.kafka = KafkaSettings()
        self.bus = BusSettings()
        self.ingest = IngestSettings()
        self.check = CheckSettings()
        self.alerts = AlertSettings()
        self.smtp = SmtpSettings()
        self.retention = RetentionSettings()
        if self.retention.fixes_days < self.ingest.max_fix_age_days:
            # Otherwise a buffered fix old enough to be accepted could arrive for a day
            # whose partition retention has already dropped.
            raise ValueError(
                "TAGTRAIL_RETENTION_FIXES_DAYS must be at least TAGTRAIL_INGEST_MAX_FIX_AGE_DAYS"
            )
        # On the in-process bus, a lane of a group that raises alerts (zones, crimes on
        # two topics, the device watch) holds its connection while the dispatcher handles
        # them: all of those at once, and the silence watch, must leave the dispatcher
        # one. A process may open twice pool_size (database.py).
        if ALERTING_GROUPS * self.bus.lanes + 2 > 2 * self.db.pool_size:
            raise ValueError(
                f"TAGTRAIL_DB_POOL_SIZE must be at least {ALERTING_GROUPS // 2} x"
                " TAGTRAIL_BUS_LANES + 1, or lanes can wait on each other for connections"
            )


@lru_cache
def get_settings() -> Settings:
    return Settings()
