"""Names people give (Spaces, rooms) refuse control characters with a 400:
PostgreSQL refuses NUL in text, which used to surface as a 500 (found by the
fuzzing suite on PostgreSQL)."""

from __future__ import annotations

from tests.fixtures.cloud import Cloud


def test_control_characters_in_names_are_a_clear_400(cloud: Cloud) -> None:
    for name in ("bad\x00name", "bell\x07", "csi\x9b"):
        r = cloud.api("POST", "/api/v1/spaces", json={"name": name})
        assert r.status_code == 400, r.text
        assert "must not contain control characters" in r.json()["errorMessage"]
        r = cloud.api("POST", f"/api/v1/spaces/{cloud.space_id}/rooms", json={"name": name})
        assert r.status_code == 400, r.text
    made = cloud.api("POST", "/api/v1/spaces", json={"name": " Ünïcode ok "})
    assert made.status_code == 201 and made.json()["name"] == "Ünïcode ok", made.text
