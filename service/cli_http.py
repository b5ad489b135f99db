"""The HTTP client of every `taskalign` command that talks to a server: where the server
is, which token to send, and how a refusal or an unreachable server is reported.

One place, so that `zoo`, `datasets` and `jobs` find the same server (TASKALIGN_URL, or
the host and port `taskalign serve` would use with the same environment) and print the
server's reasons the same way.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console

err = Console(stderr=True)

DEFAULT_URL = "http://127.0.0.1:8000"
# Bind-all addresses: where a server listens on them, a client connects to loopback.
ANY_ADDRESS = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}

Url = Annotated[str | None, typer.Option(
    "--url", envvar="TASKALIGN_URL", show_default=False,
    help="Server root, e.g. http://127.0.0.1:8000. Default: TASKALIGN_URL, else "
         "http://TASKALIGN_HOST:TASKALIGN_PORT (where `taskalign serve` listens).")]
Token = Annotated[str | None, typer.Option(
    "--token", envvar="TASKALIGN_TOKEN", show_default=False,
    help="Bearer token (TASKALIGN_TOKEN). A local server without configured tokens "
         "writes an admin token to $TASKALIGN_HOME/admin.token.")]


def server_url(url: str | None, zoo_alias: bool = False) -> str:
    """The server to talk to: the option (or TASKALIGN_URL), then the deprecated
    TASKALIGN_ZOO_URL for zoo commands, then host and port from the settings."""
    if url:
        return url.rstrip("/")
    if zoo_alias and os.environ.get("TASKALIGN_ZOO_URL"):
        err.print("[yellow]note[/yellow] TASKALIGN_ZOO_URL is deprecated; set TASKALIGN_URL")
        return os.environ["TASKALIGN_ZOO_URL"].rstrip("/")
    from pydantic import ValidationError

    from .config import Settings

    # A fresh Settings, not the cached one: the environment is what the user gave now.
    try:
        settings = Settings()
    except ValidationError as e:
        err.print(f"[red]error[/red] no --url or TASKALIGN_URL, and the TASKALIGN_* settings "
                  f"do not give one: {describe(e.errors())}")
        raise typer.Exit(2) from None
    host = ANY_ADDRESS.get(settings.host, settings.host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


def describe(body: Any) -> str:
    """A server's error body as one readable line per problem."""
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, list):
        lines = []
        for item in detail:
            if not isinstance(item, dict):
                lines.append(str(item))
                continue
            loc = [str(p) for p in item.get("loc", []) if p not in ("body", "query", "path")]
            where = f"{'.'.join(loc)}: " if loc else ""
            lines.append(f"{where}{item.get('msg', item)}")
        return "\n".join(lines)
    return str(detail)


class Client:
    """A short-lived client for one command; every failure ends the command (exit 1)
    after saying what went wrong."""

    def __init__(self, url: str | None, token: str | None = None, *, zoo_alias: bool = False,
                 timeout: float = 60):
        self.url = server_url(url, zoo_alias)
        self.token = token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.http.close()

    def unreachable(self, error: Exception) -> typer.Exit:
        err.print(f"[red]error[/red] cannot reach the server at {self.url} ({error}). Is "
                  "`taskalign serve` running there? Set --url or TASKALIGN_URL.")
        return typer.Exit(1)

    def refused(self, response: httpx.Response) -> typer.Exit:
        try:
            text = describe(response.json())
        except ValueError:
            text = response.text.strip() or response.reason_phrase
        err.print(f"[red]error[/red] {response.status_code} "
                  f"{response.request.method} {response.request.url.path}: {text}")
        if response.status_code == 401:
            err.print("  send a token: --token or TASKALIGN_TOKEN"
                      if not self.token else "  the server does not know this token")
        return typer.Exit(1)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise self.unreachable(e) from None
        if response.status_code >= 400:
            raise self.refused(response)
        return response

    def get(self, path: str, **kwargs: Any) -> Any:
        """GET a JSON body."""
        return self.request("GET", path, **kwargs).json()

    def post(self, path: str, **kwargs: Any) -> Any:
        """POST, and the JSON body of the answer."""
        return self.request("POST", path, **kwargs).json()

    def events(self, path: str, params: dict[str, Any] | None = None
               ) -> Iterator[tuple[str, str | None, dict[str, Any]]]:
        """A server-sent event stream as (event, id, data) until the server closes it.
        A dropped connection raises httpx.TransportError: the caller may resume."""
        timeout = httpx.Timeout(self.http.timeout.connect, read=None)
        with self.http.stream("GET", path, params=params, timeout=timeout,
                              headers={"Accept": "text/event-stream"}) as response:
            if response.status_code >= 400:
                response.read()
                raise self.refused(response)
            kind, event_id, data = "message", None, []
            for line in response.iter_lines():
                if not line:  # a blank line ends an event
                    if data:
                        yield kind, event_id, json.loads("\n".join(data))
                    kind, event_id, data = "message", None, []
                elif not line.startswith(":"):  # ":" starts a comment
                    field, _, value = line.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    if field == "event":
                        kind = value
                    elif field == "id":
                        event_id = value
                    elif field == "data":
                        data.append(value)
