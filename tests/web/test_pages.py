"""The pages over the ASGI app, real SQLite: sign-in cookie, CSRF, the API's permissions,
offline docs, inline errors, and card Markdown rendered without running anything."""

from __future__ import annotations

import io
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.auth import csrf_token
from service.config import Settings
from service.main import create_app
from service.web.context import markdown
from tests.utils import DATA_DIR, card, upload_files, weights

pytestmark = pytest.mark.anyio
ALICE, BOB = "alice-token-0123456789", "bob-token-0123456789"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def web(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(home=tmp_path / "var", data_dir=DATA_DIR, seed_zoo=False,
                        api_tokens=f"alice={ALICE},bob={BOB}", worker=False)
    app = create_app(settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://testserver") as client:
        yield client


def signed_in(token: str) -> dict[str, str]:
    return {"cookie": f"taskalign_token={token}"}


def small_npz() -> bytes:
    source = DATA_DIR / "medmnist" / "breastmnist.npz"
    if not source.exists():
        pytest.skip(f"real data not found at {source}")
    buf = io.BytesIO()
    with np.load(source) as data:
        np.savez(buf, **{f"{s}_{k}": data[f"{s}_{k}"][:24] for s in ("train", "val", "test")
                         for k in ("images", "labels")})
    return buf.getvalue()


async def test_home_and_pages_render(web: httpx.AsyncClient) -> None:
    home = await web.get("/")
    assert home.status_code == 200 and "Describe your task" in home.text
    for path in ("/recommend", "/zoo", "/references", "/sign-in"):
        r = await web.get(path)
        assert r.status_code == 200, path
        assert r.headers["content-type"].startswith("text/html")


async def test_private_pages_send_to_sign_in(web: httpx.AsyncClient) -> None:
    for path in ("/datasets", "/jobs", "/jobs/new?encoder=taskalign/x", "/datasets/1"):
        r = await web.get(path)
        assert r.status_code == 303, path
        assert r.headers["location"].startswith("/sign-in?next=")
    r = await web.get("/jobs/new?encoder=taskalign/x")
    assert "encoder%3Dtaskalign%2Fx" in r.headers["location"]  # comes back to the same form


async def test_sign_in_sets_a_strict_httponly_cookie(web: httpx.AsyncClient) -> None:
    wrong = await web.post("/sign-in", data={"token": "nobody-has-this-token", "next": "/"})
    assert wrong.status_code == 401 and "unknown token" in wrong.text
    ok = await web.post("/sign-in", data={"token": ALICE, "next": "//evil.example/x"})
    assert ok.status_code == 303 and ok.headers["location"] == "/"  # no open redirect
    cookie = ok.headers["set-cookie"].lower()
    assert "taskalign_token=" in cookie and "httponly" in cookie and "samesite=strict" in cookie
    foreign = await web.post("/sign-in", data={"token": ALICE},
                             headers={"origin": "http://evil.example"})
    assert foreign.status_code == 403 and "set-cookie" not in foreign.headers


async def test_recommend_errors_inline_with_did_you_mean(web: httpx.AsyncClient) -> None:
    r = await web.get("/recommend", params={"task": "clasification", "modality": "cxr"})
    assert r.status_code == 422
    assert "did you mean &#39;classification&#39;" in r.text
    assert 'href="?task=classification&amp;modality=cxr"' in r.text
    ok = await web.get("/recommend", params={"task": "classification", "modality": "cxr",
                                             "label_regime": "low", "lesion_scale": "large"})
    assert ok.status_code == 200
    assert "Ranked methods for classification on xray" in ok.text
    assert "Defaults applied" in ok.text and "Rule trace" in ok.text


async def test_cookie_writes_need_the_csrf_token(web: httpx.AsyncClient) -> None:
    cookie = signed_in(ALICE)
    spec = {"type": "finetune", "dataset_id": 1, "encoder": "taskalign/none"}
    refused = await web.post("/v1/jobs", json=spec, headers=cookie)
    assert refused.status_code == 403 and "X-CSRF-Token" in refused.json()["detail"]
    forged = await web.post("/v1/jobs", json=spec,
                            headers={**cookie, "X-CSRF-Token": csrf_token(BOB)})
    assert forged.status_code == 403
    passed = await web.post("/v1/jobs", json=spec,
                            headers={**cookie, "X-CSRF-Token": csrf_token(ALICE)})
    assert passed.status_code in (404, 422), passed.text  # past auth: no such dataset
    reads = await web.get("/v1/jobs", headers=cookie)  # reads need no CSRF token
    assert reads.status_code == 200
    form = await web.post("/jobs", data={"type": "finetune", "dataset_id": "1"}, headers=cookie)
    assert form.status_code == 403 and "CSRF" in form.text
    other_site = await web.post("/jobs", data={"csrf_token": csrf_token(ALICE)},
                                headers={**cookie, "origin": "http://evil.example"})
    assert other_site.status_code == 403


async def test_pages_show_only_what_the_api_shows(web: httpx.AsyncClient) -> None:
    upload = await web.post("/datasets", headers={**signed_in(BOB), "accept": "application/json"},
                            data={"csrf_token": csrf_token(BOB), "name": "bobs-breast"},
                            files={"file": ("b.npz", small_npz(), "application/octet-stream")})
    assert upload.status_code == 201, upload.text
    bob_page = await web.get(upload.json()["location"], headers=signed_in(BOB))
    assert bob_page.status_code == 200 and "bobs-breast" in bob_page.text
    assert "thumbnails.png" in bob_page.text
    alice_list = await web.get("/datasets", headers=signed_in(ALICE))
    assert "bobs-breast" not in alice_list.text
    alice_page = await web.get(upload.json()["location"], headers=signed_in(ALICE))
    assert alice_page.status_code == 404 and "bobs-breast" not in alice_page.text
    # The job form lists only the signed-in user's datasets.
    form = await web.get("/jobs/new", headers=signed_in(ALICE))
    assert "bobs-breast" not in form.text
    assert "bobs-breast" in (await web.get("/jobs/new", headers=signed_in(BOB))).text


async def test_job_form_errors_inline(web: httpx.AsyncClient) -> None:
    r = await web.post("/jobs", headers=signed_in(ALICE),
                       data={"csrf_token": csrf_token(ALICE), "type": "finetune",
                             "dataset_id": "1", "epochs": "lots"})
    assert r.status_code == 422 and 'id="e-epochs"' in r.text


async def test_docs_and_redoc_load_nothing_from_outside(web: httpx.AsyncClient) -> None:
    for path in ("/docs", "/redoc"):
        html = (await web.get(path)).text
        assets = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert assets, path
        assert not [a for a in assets if a.startswith(("http:", "https:", "//"))], path
        assert "fonts.googleapis" not in html and "cdn.jsdelivr" not in html
        for asset in assets:
            got = await web.get(asset)
            assert got.status_code == 200 and len(got.content) > 500, asset


async def test_private_card_markdown_is_sanitised(web: httpx.AsyncClient) -> None:
    hostile = ("<script>alert(1)</script> [click](javascript:alert(2)) "
               "<img src=x onerror=alert(3)>")
    c = card("resnet18-2d.hostile-card", description=hostile)
    up = await web.post("/v1/encoders", files=upload_files(c, weights(c)),
                        data={"private": "true"}, headers={"authorization": f"Bearer {ALICE}"})
    assert up.status_code == 201, up.text
    page = await web.get("/zoo/alice/resnet18-2d.hostile-card", headers=signed_in(ALICE))
    assert page.status_code == 200
    assert "<script>alert" not in page.text and "<img src=x" not in page.text
    assert 'href="javascript:' not in page.text
    assert "&lt;script&gt;" in page.text  # shown as text
    anonymous = await web.get("/zoo/alice/resnet18-2d.hostile-card")
    assert anonymous.status_code == 404
    listing = await web.get("/zoo", headers=signed_in(BOB))
    assert "hostile-card" not in listing.text


def test_markdown_renders_tables_and_drops_html() -> None:
    out = str(markdown("| a | b |\n|---|---|\n| 1 | 2 |\n\n<b>x</b> [y](javascript:z)"))
    assert "<table>" in out and "<b>" not in out and "href=\"javascript" not in out


async def test_zoo_filters_by_kind_and_parent(web: httpx.AsyncClient) -> None:
    c = card("resnet18-2d.parent-enc")
    auth = {"authorization": f"Bearer {ALICE}"}
    assert (await web.post("/v1/encoders", files=upload_files(c, weights(c)),
                           headers=auth)).status_code == 201
    child = card("resnet18-2d.child-enc", parent="alice/resnet18-2d.parent-enc")
    assert (await web.post("/v1/encoders", files=upload_files(child, weights(child)),
                           headers=auth)).status_code == 201
    children = (await web.get("/v1/encoders", params={"parent": "alice/resnet18-2d.parent-enc"}))
    assert [e["name"] for e in children.json()["data"]] == ["alice/resnet18-2d.child-enc"]
    encoders = await web.get("/v1/encoders", params={"task": "encoder"})
    assert encoders.json()["count"] == 2
    assert (await web.get("/v1/encoders", params={"task": "classification"})).json()["count"] == 0
    bad = await web.get("/v1/encoders", params={"task": "detector"})
    assert bad.status_code == 422
    page = await web.get("/zoo/alice/resnet18-2d.parent-enc")
    assert 'href="/zoo/alice/resnet18-2d.child-enc"' in page.text  # lineage: parent -> child
    child_page = await web.get("/zoo/alice/resnet18-2d.child-enc")
    assert 'href="/zoo/alice/resnet18-2d.parent-enc"' in child_page.text


def test_evaluation_chart_pairs_each_protocol_with_its_baseline() -> None:
    from service.web.pages.zoo import evaluation_chart

    rows = [{"protocol": p, "label_fraction": f, "metric": "AUC", "value": v}
            for p, f, v in [("linear_probe", 0.1, 0.8), ("linear_probe", 1.0, 0.9),
                            ("random_init_linear_probe", 0.1, 0.7), ("knn", 1.0, 0.85),
                            ("random_init_knn", 1.0, 0.6)]]
    rows.append({"protocol": "linear_probe", "label_fraction": 0.1, "metric": "AUC",
                 "value": 0.5, "test_noise": "gaussian:0.1"})  # robustness rows stay out
    chart = evaluation_chart(rows)
    assert chart["fractions"] == [0.1, 1.0]
    assert [(s["label"], s["colour"], s["baseline"], s["values"]) for s in chart["series"]] == [
        ("knn", 0, False, [None, 0.85]), ("random init knn", 0, True, [None, 0.6]),
        ("linear probe", 1, False, [0.8, 0.9]), ("random init linear probe", 1, True,
                                                 [0.7, None])]


async def test_a_stale_cookie_reads_as_signed_out(web: httpx.AsyncClient) -> None:
    stale = signed_in("rotated-token-0123456789")
    assert (await web.get("/v1/encoders", headers=stale)).status_code == 200
    page = await web.get("/zoo", headers=stale)
    assert page.status_code == 200 and "Sign in" in page.text
    assert 'taskalign_token=""' in page.headers["set-cookie"]  # dropped
    write = await web.post("/v1/jobs", json={"type": "finetune", "dataset_id": 1},
                           headers=stale)
    assert write.status_code == 401  # no token at all, not a CSRF puzzle


async def test_forms_from_another_site_are_refused_behind_a_proxy_too(
        web: httpx.AsyncClient) -> None:
    form = {"csrf_token": csrf_token(ALICE), "type": "finetune", "dataset_id": "1"}
    cross = await web.post("/jobs", data=form,
                           headers={**signed_in(ALICE), "sec-fetch-site": "cross-site"})
    assert cross.status_code == 403
    # Behind a proxy: the browser's Origin is the public host, which the proxy forwards.
    proxied = await web.post("/jobs", data=form, headers={
        **signed_in(ALICE), "origin": "https://taskalign.example.org",
        "x-forwarded-host": "taskalign.example.org"})
    assert proxied.status_code != 403, proxied.text
    same = await web.post("/jobs", data=form,
                          headers={**signed_in(ALICE), "sec-fetch-site": "same-origin",
                                   "origin": "https://taskalign.example.org"})
    assert same.status_code != 403


async def test_an_unticked_private_box_stays_unticked(web: httpx.AsyncClient) -> None:
    fresh = await web.get("/jobs/new", headers=signed_in(ALICE))
    assert 'name="private" checked' in fresh.text  # private by default
    again = await web.post("/jobs", headers=signed_in(ALICE), data={
        "csrf_token": csrf_token(ALICE), "type": "finetune", "dataset_id": "1",
        "epochs": "lots"})
    assert again.status_code == 422 and 'name="private" checked' not in again.text


async def test_browsers_get_error_pages_and_clients_json(web: httpx.AsyncClient) -> None:
    html = {"accept": "text/html,application/xhtml+xml"}
    page = await web.get("/jobs/abc", headers={**html, **signed_in(ALICE)})
    assert page.status_code == 422 and page.headers["content-type"].startswith("text/html")
    missing = await web.get("/no-such-page", headers=html)
    assert missing.status_code == 404 and "<h1>404</h1>" in missing.text
    api = await web.get("/v1/jobs/abc", headers={**html, **signed_in(ALICE)})
    assert api.status_code == 422 and api.headers["content-type"] == "application/json"


async def test_pages_carry_a_content_security_policy(web: httpx.AsyncClient) -> None:
    policy = (await web.get("/zoo")).headers["content-security-policy"]
    assert "default-src 'self'" in policy and "img-src 'self' blob: data:" in policy
    assert "script-src" not in policy  # scripts fall back to 'self': nothing inline runs


async def test_job_page_shows_the_last_log_lines_of_a_long_job(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from service.jobs.models import JobEventRow, JobRow

    settings = Settings(home=tmp_path / "var", seed_zoo=False, worker=False,
                        api_tokens=f"alice={ALICE}")
    app = create_app(settings)
    now = datetime.now(UTC)
    with app.state.zoo.registry.sessions.begin() as session:
        job = JobRow(owner="alice", type="finetune", status="failed", request={}, params={},
                     attempts=1, max_attempts=1, progress={}, metrics={},
                     error="boom", created_at=now, updated_at=now)
        session.add(job)
        session.flush()
        session.add_all([JobEventRow(job_id=job.id, type="log", data={"line": f"line {i}"},
                                     created_at=now) for i in range(1201)])
        job_id = job.id
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://testserver") as client:
        page = await client.get(f"/jobs/{job_id}", headers=signed_in(ALICE))
    log = page.text.split('id="job-log"')[1].split("</pre>")[0]
    assert "line 1200" in log and "line 1001" in log and "line 1000\n" not in log
    assert 'data-after="1201"' in page.text  # the live stream resumes after the last event


async def test_pager_shows_what_the_page_holds(web: httpx.AsyncClient) -> None:
    page = await web.get("/zoo", params={"offset": -5})
    assert "nothing here (0 in all)" in page.text and "Previous" not in page.text
