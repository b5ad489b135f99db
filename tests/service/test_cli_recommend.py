"""The profile a user can give, through `taskalign recommend` and the API alike: every API
field has a CLI option of the same name, a CLI call gives exactly the API's JSON, and a
mistyped or misplaced property is refused the same way with what to write instead."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from typer.testing import CliRunner

from rules import TaskProfile, default_engine
from rules.profile import Properties
from service.cli import app
from service.config import get_settings

runner = CliRunner()

# One profile through several flags, old short names and API names mixed.
ARGS = ["--task", "segmentation", "--modality", "MR", "--anatomy", "brain", "--dims", "3d",
        "--labeled", "40", "--unlabeled", "2000", "--signal", "localized",
        "--lesion-scale", "small_focal", "--paired", "ct", "--paired-modalities", "pet",
        "--multi-sequence", "--atlas", "--multi-site", "--longitudinal", "--no-patient-ids",
        "--noise", "rician", "--gpu-memory-gb", "24", "--top-k", "5"]
PROFILE: dict[str, Any] = {
    "task": "segmentation", "modality": "MR", "anatomy": "brain", "dimensionality": "3d",
    "labeled": 40, "unlabeled": 2000, "top_k": 5,
    "properties": {"signal_organization": "localized", "lesion_scale": "small_focal",
                   "paired_modalities": ["ct", "pet"], "multi_sequence": True, "atlas": True,
                   "multi_site": True, "longitudinal": True, "patient_ids": False,
                   "noise": "rician", "gpu_memory_gb": 24}}


def recommend_options() -> dict[str, Any]:
    command = typer.main.get_command(app).commands["recommend"]  # type: ignore[attr-defined]
    return {opt: p for p in command.params for opt in (*p.opts, *p.secondary_opts)}


@pytest.fixture
def empty_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A TASKALIGN_HOME without a zoo, so the CLI lists no local encoders."""
    monkeypatch.setenv("TASKALIGN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TASKALIGN_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def cli_json(*args: str) -> dict[str, Any]:
    result = runner.invoke(app, ["recommend", *args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_every_api_field_has_an_option_named_like_it() -> None:
    options = recommend_options()
    fields = {**TaskProfile.model_fields, **Properties.model_fields}
    for name, field in fields.items():
        if name == "properties":
            continue
        flag = "--" + name.replace("_", "-")
        assert flag in options, f"`taskalign recommend` has no {flag} for the API's {name}"
        param = options[flag]
        assert param.name == name, f"{flag} feeds {param.name}, not {name}"
        if field.annotation == bool | None:
            assert getattr(param, "is_flag", False) and param.secondary_opts, flag
        if name == "paired_modalities":
            assert param.multiple
    # The short names stay for old scripts, on the same parameters.
    for short, name in (("--dims", "dimensionality"), ("--signal", "signal_organization"),
                        ("--paired", "paired_modalities")):
        assert options[short].name == name


def test_cli_json_is_the_api_json(empty_home: None) -> None:
    cli = cli_json(*ARGS)
    assert cli.pop("encoders") == [] and cli.pop("encoders_by_method") == {}
    api = json.loads(default_engine().evaluate(TaskProfile.model_validate(PROFILE)).json)
    assert cli == api
    props = cli["profile"]["properties"]
    assert props["paired_modalities"] == ["ct", "pet"]
    assert (props["atlas"], props["multi_site"], props["longitudinal"]) == (True, True, True)
    assert cli["profile"]["label_regime_rule"] == "regime.low.few_volumes"
    assert {a["field"] for a in cli["assumptions"]}.isdisjoint(
        {f"properties.{k}" for k in PROFILE["properties"]})


def test_api_names_and_short_names_give_the_same_answer(empty_home: None) -> None:
    short = cli_json("--task", "classification", "--modality", "ct", "--dims", "2d",
                     "--signal", "global", "--paired", "pet", "--label-regime", "low")
    long = cli_json("--task", "classification", "--modality", "ct", "--dimensionality", "2d",
                    "--signal-organization", "global", "--paired-modalities", "pet",
                    "--label-regime", "low")
    assert short == long
    assert short["profile"]["dimensionality"] == "2d"
    assert short["profile"]["properties"]["signal_organization"] == "global"


def test_whole_slide_flag_and_its_refusal(empty_home: None) -> None:
    wsi = cli_json("--task", "classification", "--modality", "wsi", "--whole-slide",
                   "--label-regime", "low")
    assert wsi["profile"]["properties"]["whole_slide"] is True
    refused = runner.invoke(app, ["recommend", "--task", "classification", "--modality", "ct",
                                  "--whole-slide", "--label-regime", "low"])
    assert refused.exit_code == 2
    said = " ".join(refused.output.split())
    assert "properties.whole_slide: whole_slide=true does not apply to ct" in said
    assert "it applies to histopathology" in said


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_the_http_api_agrees_with_the_cli(client: httpx.AsyncClient,
                                                empty_home: None) -> None:
    r = await client.post("/v1/recommendations", json=PROFILE)
    assert r.status_code == 200, r.text
    assert r.json() == {**cli_json(*ARGS), "encoders": []}


@pytest.mark.anyio
async def test_a_mistyped_property_gets_a_suggestion_in_the_422(
        client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/recommendations", json={
        "task": "classification", "modality": "histopathology", "label_regime": "low",
        "properties": {"wholeslide": True, "colour": True}})
    assert r.status_code == 422
    errors = {tuple(e["loc"]): e for e in r.json()["detail"]}
    assert set(errors) == {("body", "properties", "wholeslide"),
                           ("body", "properties", "colour")}
    for loc, suggestion in ((("body", "properties", "wholeslide"), "whole_slide"),
                            (("body", "properties", "colour"), "color")):
        assert errors[loc]["did_you_mean"] == suggestion
        assert errors[loc]["allowed"] == list(Properties.model_fields)
        assert f"did you mean '{suggestion}'" in errors[loc]["msg"]
    r = await client.post("/v1/recommendations", json={
        "task": "classification", "modality": "xray", "label_regime": "low",
        "properties": {"multi_sequence": True}})
    assert r.status_code == 422
    (item,) = r.json()["detail"]
    assert item["loc"] == ["body", "properties", "multi_sequence"]
    assert item["msg"].startswith("multi_sequence=true does not apply to xray: ")
    assert item["msg"].endswith("it applies to fmri, mri")
