"""Repositories have owners, over real HTTP against `taskalign serve` with a worker:
who may add revisions where, one name under two owners, private repositories that answer
strangers exactly like unknown ones (REST and the Hub protocol through the real
huggingface_hub client), fine-tune results private to their owner by default with the
revision they used pinned, visibility changes, dataset path roots, and unknown tokens."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import Server
from tests.service.test_jobs import wait_for
from tests.utils import DATA_DIR, card, png_bytes, repo, upload_files, user_dataset, weights

ALICE, BOB = "alice-token-0123456789", "bob-token-0123456789"
ADMIN = "admin-token-0123456789"
UNKNOWN = "not-a-token-of-this-server-0123456789"
TOKENS = {"TASKALIGN_API_TOKENS": f"alice={ALICE},bob={BOB}",
          "TASKALIGN_ADMIN_TOKENS": ADMIN, "TASKALIGN_DATA_DIR": str(DATA_DIR)}
TINY = {"name": "resnet18", "args": {"widths": [8, 8, 16, 16]}}
SEED_NAME = "resnet18-2d.own-seed"
SEED = repo(SEED_NAME)  # the organisation's, as the seed zoo's encoders are
BREAST = DATA_DIR / "medmnist" / "breastmnist.npz"


def h(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def upload(url: str, token: str, name: str, seed: int = 0, owner: str | None = None,
           private: bool | None = None, modality: str = "ultrasound") -> httpx.Response:
    c = {**card(name, arch=TINY), "modality": modality}
    form = {}
    if owner is not None:
        form["owner"] = owner
    if private is not None:
        form["private"] = "true" if private else "false"
    return httpx.post(f"{url}/v1/encoders", files=upload_files(c, weights(c, seed=seed)),
                      data=form, headers=h(token), timeout=120)


def detail(url: str, repo_id: str, token: str | None = None) -> httpx.Response:
    return httpx.get(f"{url}/v1/encoders/{repo_id}", headers=h(token))


def blob_files(home: Path) -> set[str]:
    return {p.name for p in (home / "artifacts" / "blobs").glob("*/*")}


def names(url: str, token: str | None = None, **params: Any) -> tuple[list[str], int]:
    body = httpx.get(f"{url}/v1/encoders", params={"limit": 500, **params},
                     headers=h(token)).json()
    return [e["name"] for e in body["data"]], body["count"]


def job(url: str, job_id: int, token: str) -> dict[str, Any]:
    return httpx.get(f"{url}/v1/jobs/{job_id}", headers=h(token)).json()


def finished(url: str, job_id: int, token: str, timeout: float = 300) -> dict[str, Any]:
    return wait_for(lambda: (j := job(url, job_id, token))["status"] in
                    ("succeeded", "failed", "cancelled") and j, timeout)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A server with a local worker and one public encoder in taskalign/ (the admin's)."""
    home = tmp_path_factory.mktemp("ownership")
    server = Server(home, TASKALIGN_WORKER="true", **TOKENS)
    try:
        r = upload(server.url, ADMIN, SEED_NAME)
        assert r.status_code == 201, r.text
        assert r.json()["repo_id"] == SEED
        yield {"url": server.url, "home": home}
    finally:
        server.stop()


# (a) ---------------------------------------------------------------------------------------

def test_only_the_owner_or_an_admin_adds_revisions(zoo: dict[str, Any]) -> None:
    url, home = zoo["url"], zoo["home"]
    seed_before, blobs = detail(url, SEED).json(), blob_files(home)
    refused = upload(url, ALICE, SEED_NAME, seed=1, owner="taskalign")
    assert refused.status_code == 403, refused.text
    assert "'taskalign/' belongs to another user" in refused.json()["detail"]
    assert detail(url, SEED).json() == seed_before  # latest revision, commit: unchanged
    assert blob_files(home) == blobs  # refused before anything was stored

    own = "resnet18-2d.alice-own"
    mine = upload(url, ALICE, own, seed=2)  # no owner given: the caller's own namespace
    assert mine.status_code == 201, mine.text
    assert mine.json()["repo_id"] == f"alice/{own}" and mine.json()["revision"] == 1
    assert detail(url, SEED).json() == seed_before
    alice_before, blobs = detail(url, f"alice/{own}").json(), blob_files(home)
    for token, owner in ((BOB, "alice"), (BOB, "taskalign"), (ALICE, "bob")):
        r = upload(url, token, own, seed=3, owner=owner)
        assert r.status_code == 403, (token, owner, r.text)
    assert detail(url, f"alice/{own}").json() == alice_before
    assert detail(url, f"bob/{own}").status_code == 404  # no repository made on the way
    assert blob_files(home) == blobs

    by_admin = upload(url, ADMIN, SEED_NAME, seed=4)  # an admin's default: taskalign/
    assert by_admin.status_code == 201, by_admin.text
    assert by_admin.json()["repo_id"] == SEED
    assert by_admin.json()["revision"] == seed_before["latest_revision"] + 1
    into_alice = upload(url, ADMIN, own, seed=5, owner="alice")
    assert into_alice.status_code == 201, into_alice.text
    assert (into_alice.json()["repo_id"], into_alice.json()["revision"]) == (f"alice/{own}", 2)
    bad = upload(url, ADMIN, own, seed=6, owner="Not A Namespace")
    assert bad.status_code == 422 and "namespace" in bad.text


# (b) ---------------------------------------------------------------------------------------

def test_two_users_each_have_the_same_name(zoo: dict[str, Any]) -> None:
    url = zoo["url"]
    shared = "resnet18-2d.same-name"
    stored = {}
    for token, owner, seed in ((ALICE, "alice", 10), (BOB, "bob", 11)):
        r = upload(url, token, shared, seed=seed)
        assert r.status_code == 201, r.text
        assert (r.json()["repo_id"], r.json()["revision"]) == (f"{owner}/{shared}", 1)
        stored[owner] = r.json()
    assert stored["alice"]["commit"] != stored["bob"]["commit"]
    listed, count = names(url, q="same-name")
    assert sorted(listed) == [f"alice/{shared}", f"bob/{shared}"] and count == 2
    assert names(url, owner="bob", q="same-name")[0] == [f"bob/{shared}"]
    for owner, seed in (("alice", 10), ("bob", 11)):
        got = httpx.get(f"{url}/v1/encoders/{owner}/{shared}/files/model.safetensors")
        c = {**card(shared, arch=TINY), "modality": "ultrasound"}
        assert got.status_code == 200 and got.content == weights(c, seed=seed)
        assert detail(url, f"{owner}/{shared}").json()["card"]["repo_id"] == f"{owner}/{shared}"
    again = upload(url, ALICE, shared, seed=12)  # Alice's next revision leaves Bob's alone
    assert again.status_code == 201 and again.json()["revision"] == 2
    assert detail(url, f"bob/{shared}").json()["latest_revision"] == 1
    assert detail(url, f"bob/{shared}").json()["revisions"][-1]["commit"] == \
        stored["bob"]["commit"]


# (c) ---------------------------------------------------------------------------------------

PRIVATE = "alice/resnet18-2d.vault-study"
TYPO = "alice/resnet18-2d.vault-studz"  # unknown, one letter from the private one
STRANGERS = {"anonymous": None, "bob": BOB}


@pytest.fixture
def quiet_zoo(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A server of its own, so that no other test's repositories change the hints."""
    server = Server(tmp_path / "home", TASKALIGN_WORKER="false", **TOKENS)
    try:
        assert upload(server.url, ADMIN, SEED_NAME).status_code == 201
        yield {"url": server.url, "home": server.home}
    finally:
        server.stop()


def probes(url: str, repo_id: str) -> list[tuple[str, str, str, dict[str, Any]]]:
    """Every read of a repository, REST and Hub protocol."""
    image = png_bytes(np.zeros((28, 28), np.uint8))
    files = f"{url}/v1/encoders/{repo_id}/files"
    return [
        ("detail", "GET", f"{url}/v1/encoders/{repo_id}", {}),
        ("file", "GET", f"{files}/config.json", {}),
        ("file at revision 1", "GET", f"{files}/model.safetensors?revision=1", {}),
        ("file HEAD", "HEAD", f"{files}/model.safetensors", {}),
        ("embed", "POST", f"{url}/v1/encoders/{repo_id}/embed",
         {"files": [("images", ("a.png", image, "image/png"))]}),
        ("hf model_info", "GET", f"{url}/hf/api/models/{repo_id}", {}),
        ("hf model_info at main", "GET", f"{url}/hf/api/models/{repo_id}/revision/main", {}),
        ("hf tree", "GET", f"{url}/hf/api/models/{repo_id}/tree/main", {}),
        ("hf resolve", "GET", f"{url}/hf/{repo_id}/resolve/main/README.md", {}),
        ("hf resolve HEAD", "HEAD", f"{url}/hf/{repo_id}/resolve/main/config.json", {}),
    ]


def answers(url: str, repo_id: str, token: str | None) -> dict[str, tuple[Any, ...]]:
    """Each probe's status, body and Hub error headers, with the repository id replaced."""
    out = {}
    for label, method, target, extra in probes(url, repo_id):
        r = httpx.request(method, target, headers=h(token), timeout=60, **extra)
        out[label] = (r.status_code, r.text.replace(repo_id, "<repo>"),
                      r.headers.get("x-error-code"),
                      (r.headers.get("x-error-message") or "").replace(repo_id, "<repo>"))
    return out


def test_a_private_repository_answers_strangers_like_an_unknown_one(
        quiet_zoo: dict[str, Any], tmp_path: Path) -> None:
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import RepositoryNotFoundError

    url = quiet_zoo["url"]
    before = {who: answers(url, PRIVATE, token) for who, token in STRANGERS.items()}
    r = upload(url, ALICE, PRIVATE.split("/")[1], private=True)
    assert r.status_code == 201, r.text
    stored = r.json()
    assert stored["repo_id"] == PRIVATE

    for who, token in STRANGERS.items():
        after = answers(url, PRIVATE, token)
        # byte for byte what the same URL answered before the repository existed ...
        assert after == before[who], who
        # ... and what an unknown name answers, the name aside
        assert after == answers(url, TYPO, token), who
        for label, (status, body, code, _) in after.items():
            assert status == 404, (who, label)
            assert "vault-study" not in body.replace("<repo>", "")  # no hint leaks it
            if label.startswith("hf"):
                assert code == "RepoNotFound", (who, label)
        typo = detail(url, TYPO, token)
        assert typo.status_code == 404 and PRIVATE not in typo.text  # no did-you-mean
        bare = httpx.get(f"{url}/v1/encoders/resnet18-2d.vault-study", headers=h(token))
        assert bare.status_code == 404 and PRIVATE not in bare.text
        listed, count = names(url, token)
        assert PRIVATE not in listed and count == len(listed) == 1
        assert names(url, token, q="vault") == ([], 0)
        assert names(url, token, owner="alice") == ([], 0)

    # The owner and an admin see it, hints included.
    for token in (ALICE, ADMIN):
        assert detail(url, PRIVATE, token).json()["private"] is True
        assert all(status == 200 for status, *_ in answers(url, PRIVATE, token).values())
        assert names(url, token, q="vault") == ([PRIVATE], 1)
    assert f"did you mean '{PRIVATE}'" in detail(url, TYPO, ALICE).json()["detail"]
    assert names(url, ALICE)[1] == names(url)[1] + 1

    # The real huggingface_hub client: RepositoryNotFoundError for strangers (an unknown
    # token reads as anonymous there), the repository for its owner's token.
    endpoint = f"{url}/hf"
    for i, token in enumerate((False, BOB, UNKNOWN)):
        with pytest.raises(RepositoryNotFoundError):
            HfApi(endpoint=endpoint, token=token).model_info(PRIVATE)
        with pytest.raises(RepositoryNotFoundError):
            hf_hub_download(PRIVATE, "config.json", endpoint=endpoint, token=token,
                            cache_dir=tmp_path / f"stranger{i}")
    info = HfApi(endpoint=endpoint, token=ALICE).model_info(PRIVATE)
    assert (info.id, info.author, info.private, info.sha) == (
        PRIVATE, "alice", True, stored["commit"])
    path = hf_hub_download(PRIVATE, "model.safetensors", endpoint=endpoint, token=ALICE,
                           cache_dir=tmp_path / "alice")
    assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == \
        stored["files"]["model.safetensors"]["sha256"]


# (d) ---------------------------------------------------------------------------------------

def register_dataset(url: str, home: Path, user: str, token: str, name: str) -> int:
    path = user_dataset(home, user, BREAST)
    r = httpx.post(f"{url}/v1/datasets", headers=h(token), json={
        "name": name, "path": str(path), "modality": "ultrasound"})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_finetune_results_are_private_to_their_owner_and_pin_their_revision(
        zoo: dict[str, Any], tmp_path: Path) -> None:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    url, home = zoo["url"], zoo["home"]
    mine = register_dataset(url, home, "alice", ALICE, "breast")
    theirs = register_dataset(url, home, "bob", BOB, "bob-breast")
    # Bob's long job holds the worker, so Alice's jobs wait in the queue while the admin
    # adds a revision to the encoder they name.
    long = httpx.post(f"{url}/v1/jobs", headers=h(BOB), json={
        "type": "finetune", "encoder": SEED, "dataset_id": theirs, "epochs": 400,
        "mode": "full"}).json()
    wait_for(lambda: job(url, long["id"], BOB)["progress"].get("epoch", 0) >= 1, 180)
    resolved = detail(url, SEED).json()["revisions"][-1]
    body = {"type": "finetune", "encoder": SEED, "dataset_id": mine, "epochs": 1,
            "mode": "linear_probe", "label_fraction": 0.5}
    private = httpx.post(f"{url}/v1/jobs", headers=h(ALICE), json=body)
    public = httpx.post(f"{url}/v1/jobs", headers=h(ALICE), json={**body, "private": False})
    assert private.status_code == public.status_code == 202, private.text + public.text
    for submitted, visibility in ((private.json(), True), (public.json(), False)):
        params = submitted["params"]
        assert (params["encoder"], params["encoder_revision"], params["encoder_commit"]) == (
            SEED, str(resolved["revision"]), resolved["commit"])
        assert (params["namespace"], params["private"]) == ("alice", visibility)
    newer = upload(url, ADMIN, SEED_NAME, seed=21)
    assert newer.status_code == 201 and newer.json()["commit"] != resolved["commit"]
    assert httpx.post(f"{url}/v1/jobs/{long['id']}/cancel", headers=h(BOB)).status_code == 200

    done = finished(url, private.json()["id"], ALICE)
    assert done["status"] == "succeeded", done["error"]
    result = done["result"]
    made = result["encoder"]
    assert made.startswith("alice/resnet18-2d.ft-job") and result["private"] is True
    # The card, with its lineage, is the owner's (and an admin's) to read.
    card_json = httpx.get(f"{url}/v1/encoders/{made}/files/config.json", headers=h(ALICE))
    assert card_json.status_code == 200
    lineage = card_json.json()["lineage"]
    assert lineage["dataset"] == "breast" and lineage["job_id"] == done["id"]
    assert lineage["params"] == done["params"]  # the job's plan, as submitted
    assert (lineage["parent"], lineage["parent_revision"], lineage["parent_commit"]) == (
        SEED, resolved["revision"], resolved["commit"])  # the pinned one, not the newer
    assert detail(url, made, ADMIN).status_code == 200
    readme = httpx.get(f"{url}/v1/encoders/{made}/files/README.md", headers=h(ALICE))
    assert readme.status_code == 200 and "breast" in readme.text
    for token in (None, BOB):
        for path in ("", "/files/config.json", "/files/README.md"):
            assert httpx.get(f"{url}/v1/encoders/{made}{path}",
                             headers=h(token)).status_code == 404
        assert made not in names(url, token)[0]
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=f"{url}/hf", token=BOB).model_info(made)
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=f"{url}/hf", token=False).model_info(made)

    done = finished(url, public.json()["id"], ALICE)
    assert done["status"] == "succeeded", done["error"]
    made = done["result"]["encoder"]
    assert made.startswith("alice/") and done["result"]["private"] is False
    anyone = detail(url, made)
    assert anyone.status_code == 200 and anyone.json()["private"] is False
    assert anyone.json()["card"]["lineage"]["dataset"] == "breast"
    assert anyone.json()["card"]["lineage"]["parent_commit"] == resolved["commit"]
    assert made in names(url)[0]
    assert HfApi(endpoint=f"{url}/hf", token=False).model_info(made).private is False


# (e) ---------------------------------------------------------------------------------------

def test_the_owner_toggles_visibility(zoo: dict[str, Any]) -> None:
    url = zoo["url"]
    name = "resnet18-2d.toggle-me"
    repo_id = f"alice/{name}"

    def patch(token: str | None, private: bool) -> httpx.Response:
        return httpx.patch(f"{url}/v1/encoders/{repo_id}", json={"private": private},
                           headers=h(token))

    unknown = patch(BOB, False)  # before the repository exists
    assert unknown.status_code == 404
    r = upload(url, ALICE, name, modality="mri")  # the zoo's only MRI encoder
    assert r.status_code == 201 and detail(url, repo_id).json()["private"] is False
    profile = {"task": "classification", "modality": "mri", "dimensionality": "2d",
               "label_regime": "low"}

    def recommended() -> list[str]:
        answer = httpx.post(f"{url}/v1/recommendations", json=profile).json()
        return [e["name"] for e in answer["encoders"]]

    assert repo_id in recommended()
    assert patch(BOB, True).status_code == 403  # visible to Bob, but not his
    assert patch(None, True).status_code == 401
    hidden = patch(ALICE, True)
    assert hidden.status_code == 200 and hidden.json()["private"] is True
    assert detail(url, repo_id).status_code == 404
    assert detail(url, repo_id, BOB).status_code == 404
    assert detail(url, repo_id, ALICE).json()["private"] is True
    assert repo_id not in names(url)[0]
    assert repo_id not in recommended()  # nor in the recommendations anyone can ask for
    # A stranger's change to a private repository: the 404 it got before it existed.
    stranger = patch(BOB, False)
    assert (stranger.status_code, stranger.text) == (404, unknown.text)
    assert detail(url, repo_id, ALICE).json()["private"] is True  # Bob changed nothing
    shown = patch(ALICE, False)
    assert shown.status_code == 200 and shown.json()["private"] is False
    assert detail(url, repo_id).status_code == 200 and repo_id in names(url)[0]
    assert repo_id in recommended()
    assert patch(ADMIN, True).json()["private"] is True  # an admin may, too
    assert detail(url, repo_id).status_code == 404
    extra = httpx.patch(f"{url}/v1/encoders/{repo_id}", headers=h(ALICE),
                        json={"private": False, "owner": "bob"})
    assert extra.status_code == 422  # visibility is all a PATCH changes
    # A new revision keeps the repository's visibility unless the upload says otherwise.
    again = upload(url, ALICE, name, seed=1, modality="mri")
    assert again.status_code == 201 and detail(url, repo_id).status_code == 404
    public = upload(url, ALICE, name, seed=2, modality="mri", private=False)
    assert public.status_code == 201 and detail(url, repo_id).json()["latest_revision"] == 3


# (f) ---------------------------------------------------------------------------------------

def test_dataset_paths_only_under_the_callers_own_folder(zoo: dict[str, Any],
                                                         tmp_path: Path) -> None:
    url, home = zoo["url"], zoo["home"]

    def register(token: str, path: Path, name: str) -> httpx.Response:
        return httpx.post(f"{url}/v1/datasets", headers=h(token),
                          json={"name": name, "path": str(path)})

    outside = tmp_path / "breast.npz"
    outside.write_bytes(BREAST.read_bytes())
    link = home / "datasets" / "bob" / "link.npz"  # inside Bob's folder, pointing out
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(BREAST)
    user_dataset(home, "alice", BREAST)
    before = httpx.get(f"{url}/v1/datasets", headers=h(ADMIN)).json()["count"]
    for path in (BREAST, DATA_DIR / "medmnist", outside, home / "datasets" / "alice",
                 home / "datasets" / "alice" / BREAST.name, home / "datasets", link,
                 home / "datasets" / "bob" / ".." / "alice" / BREAST.name):
        r = register(BOB, path, "nope")
        assert r.status_code == 422, (path, r.text)
        assert r.json()["detail"][0]["loc"] == ["body", "path"]
        assert "must lie under" in r.text
    assert httpx.get(f"{url}/v1/datasets", headers=h(ADMIN)).json()["count"] == before
    ok = register(BOB, user_dataset(home, "bob", BREAST), "bob-own")
    assert ok.status_code == 201, ok.text
    assert ok.json()["kind"] == "path" and ok.json()["owner"] == "bob"
    by_admin = register(ADMIN, BREAST, "from-data-dir")
    assert by_admin.status_code == 201, by_admin.text
    assert register(ADMIN, outside, "outside").status_code == 422  # admins: roots too


# (g) ---------------------------------------------------------------------------------------

def test_an_unknown_token_is_401_on_rest_but_anonymous_on_the_hub(zoo: dict[str, Any],
                                                                  tmp_path: Path) -> None:
    from huggingface_hub import HfApi, hf_hub_download

    url = zoo["url"]
    image = png_bytes(np.zeros((28, 28), np.uint8))
    for method, path, extra in (
            ("GET", "/v1/encoders", {}),
            ("GET", f"/v1/encoders/{SEED}", {}),
            ("GET", f"/v1/encoders/{SEED}/files/config.json", {}),
            ("HEAD", f"/v1/encoders/{SEED}/files/config.json", {}),
            ("GET", f"/v1/encoders/{SEED_NAME}", {}),
            ("POST", f"/v1/encoders/{SEED}/embed",
             {"files": [("images", ("a.png", image, "image/png"))]})):
        bad = httpx.request(method, f"{url}{path}", headers=h(UNKNOWN), **extra)
        assert bad.status_code == 401, (method, path, bad.text)
        assert bad.headers["www-authenticate"] == "Bearer"
        without = httpx.request(method, f"{url}{path}", **extra)
        assert without.status_code in (200, 404), (method, path, without.text)
    hub = httpx.get(f"{url}/hf/api/models/{SEED}", headers=h(UNKNOWN))
    assert hub.status_code == 200 and hub.json()["id"] == SEED
    info = HfApi(endpoint=f"{url}/hf", token=UNKNOWN).model_info(SEED)
    assert info.id == SEED and info.private is False
    path = hf_hub_download(SEED, "config.json", endpoint=f"{url}/hf", token=UNKNOWN,
                           cache_dir=tmp_path)
    assert json.loads(Path(path).read_text())["repo_id"] == SEED
