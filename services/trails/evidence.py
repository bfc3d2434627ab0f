"""Evidence bundles: a zip that holds the data (GeoJSON and CSV), the query and its
parameters, the algorithm version, who produced it and when, and a SHA-256 manifest of
the files, so that anyone can check later that nothing was changed. Pure."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zipfile
from datetime import datetime
from typing import Any


def _features(assessments: list[dict[str, Any]]) -> dict[str, Any]:
    features = []
    for a in assessments:
        for f in a.get("evidence", []):
            features.append(
                {
                    "type": "Feature",
                    "geometry": {"type": "Point", "coordinates": [f["lon"], f["lat"]]},
                    "properties": {"subject_id": a["subject_id"], **f},
                }
            )
    return {"type": "FeatureCollection", "features": features}


def _csv(assessments: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        [
            "subject_id",
            "outcome",
            "closest_m",
            "closest_at",
            "via",
            "time_within_s",
            "coverage",
            "fix_tag_id",
            "fix_ts",
            "fix_received_at",
            "fix_lat",
            "fix_lon",
            "fix_accuracy_m",
        ]
    )
    for a in assessments:
        c = a.get("closest") or {}
        head = [
            a["subject_id"],
            a["outcome"],
            c.get("distance_m"),
            c.get("at"),
            c.get("via"),
            a.get("time_within_s"),
            a.get("coverage"),
        ]
        for f in a.get("evidence") or [{}]:
            fix = [f.get(k) for k in ("tag_id", "ts", "received_at", "lat", "lon", "accuracy_m")]
            writer.writerow([*head, *fix])
    return out.getvalue()


def bundle(
    kind: str,
    query: dict[str, Any],
    algorithm: str,
    assessments: list[dict[str, Any]],
    produced_by: dict[str, Any],
    produced_at: datetime,
) -> bytes:
    files = {
        "query.json": json.dumps(
            {
                "kind": kind,
                "query": query,
                "algorithm": algorithm,
                "produced_by": produced_by,
                "produced_at": produced_at.isoformat(),
            },
            indent=2,
            sort_keys=True,
            default=str,
        ),
        "results.geojson": json.dumps(_features(assessments), indent=2, sort_keys=True),
        "results.json": json.dumps(assessments, indent=2, sort_keys=True),
        "results.csv": _csv(assessments),
    }
    manifest = "".join(
        f"{hashlib.sha256(body.encode()).hexdigest()}  {name}\n"
        for name, body in sorted(files.items())
    )
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, body in sorted(files.items()):
            z.writestr(name, body)
        z.writestr("MANIFEST.sha256", manifest)
    return out.getvalue()
