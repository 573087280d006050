"""Every operator mistake is one line naming the thing and why: exit 2 bad input, 1 run time."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from dimsebus.schemas import events as ev
from dimsebus.schemas.envelope import CloudEvent
from dimsebus.schemas.examples import move_story, sequential_ids
from dimsebus.services.audit.app import AuditSettings
from dimsebus.services.cli import app
from dimsebus.services.node.config import NodeSettings
from dimsebus.services.retrier.app import RetrierSettings
from dimsebus.services.settings import load_settings
from dimsebus.services.tracker.api import routes
from dimsebus.services.tracker.app import TrackerSettings
from dimsebus.services.tracker.progress import MoveState, apply, move_key
from dimsebus.services.tracker.store import open_store
from dimsebus.services.tracker.views import as_text

EXAMPLES = Path(__file__).parents[2] / "examples"


def one_line(output: str) -> str:
    """The output's only line; it fails if there are more, or a traceback."""
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert "Traceback" not in output
    return lines[0]


# Row 1: values from the environment are parsed as the TOML ones are.


@pytest.mark.parametrize(
    ("variable", "value", "field", "expected"),
    [
        ("DIMSEBUS_PORT", "11113", "port", 11113),  # a strict DICOM Port
        ("DIMSEBUS_HTTP_PORT", "9100", "http_port", 9100),  # int | None
        ("DIMSEBUS_MAX_PDU", "65_536", "max_pdu", 65536),  # TOML's digit separators
        ("DIMSEBUS_DIMSE_TIMEOUT", "12.5", "dimse_timeout", 12.5),
        ("DIMSEBUS_OVERWRITE_INSTANCES", "true", "overwrite_instances", True),
        ("DIMSEBUS_AE_TITLE", "123", "ae_title", "123"),  # a text field keeps digits as text
        ("DIMSEBUS_NODE_ID", "42", "node_id", "42"),
    ],
)
def test_node_variables_are_read_as_toml_values(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, field: str, expected: object
) -> None:
    # given the example node file and one variable
    monkeypatch.setenv(variable, value)
    # when the settings are loaded
    settings = load_settings(NodeSettings, EXAMPLES / "node.toml")
    # then the variable's value is typed as the same key in the file would be
    assert getattr(settings, field) == expected


def test_nested_models_lists_and_tables_from_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    # given nested keys under __, a TOML array and a TOML inline table
    monkeypatch.setenv("DIMSEBUS_ACCESS__CHECK_CALLED_AE", "false")
    monkeypatch.setenv("DIMSEBUS_ACCESS__UNKNOWN_PEERS", "['echo', 'store']")
    monkeypatch.setenv("DIMSEBUS_DESTINATIONS", '{PACS = {host = "pacs", port = 104}}')
    monkeypatch.setenv("DIMSEBUS_LABELS", '{"site": "west"}')  # JSON still works
    settings = load_settings(NodeSettings, EXAMPLES / "node.toml")
    # then each is parsed as in the file
    assert settings.access.check_called_ae is False
    assert settings.access.unknown_peers == {"echo", "store"}
    assert settings.destinations["PACS"].port == 104
    assert settings.destinations["STORESCP"].port == 11113  # the file's table is kept
    assert settings.labels == {"site": "west"}


def test_every_service_reads_typed_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    # given one number, boolean or nested value per service
    monkeypatch.setenv("DIMSEBUS_STALL_AFTER", "10")
    monkeypatch.setenv("DIMSEBUS_RETRIES", "true")
    monkeypatch.setenv("DIMSEBUS_SYSLOG_PORT", "1514")
    monkeypatch.setenv("DIMSEBUS_SYSLOG_TLS", "false")
    monkeypatch.setenv("DIMSEBUS_POLICY__MAX_ATTEMPTS", "3")
    monkeypatch.setenv("DIMSEBUS_POLICY__RETRY_ON_WARNING", "true")
    monkeypatch.setenv("DIMSEBUS_PREFETCH", "7")
    # then every settings class has them typed
    tracker = load_settings(TrackerSettings)
    assert (tracker.stall_after, tracker.retries, tracker.prefetch) == (10.0, True, 7)
    audit = load_settings(AuditSettings, EXAMPLES / "audit.toml")
    assert (audit.syslog_port, audit.syslog_tls) == (1514, False)
    retrier = load_settings(RetrierSettings, EXAMPLES / "retrier.toml")
    assert (retrier.policy.max_attempts, retrier.policy.retry_on_warning) == (3, True)


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("DIMSEBUS_PORT", "eleven", "DIMSEBUS_PORT: port: 'eleven' is not a valid TCP port"),
        ("DIMSEBUS_PORT", "70000", "DIMSEBUS_PORT: port: 70000 is not a valid TCP port: it is not"),
        ("DIMSEBUS_ACCESS__CHECK_CALLED_AE", "maybe", "DIMSEBUS_ACCESS__CHECK_CALLED_AE: access"),
        ("DIMSEBUS_LABELS", "{site", "DIMSEBUS_LABELS: '{site' is neither JSON nor a TOML value"),
    ],
)
def test_a_bad_variable_is_one_line_naming_it(variable: str, value: str, named: str) -> None:
    node_toml = str(EXAMPLES / "node.toml")
    result = CliRunner().invoke(
        app, ["config", "show", "node", "--config", node_toml], env={variable: value}
    )
    assert result.exit_code == 2
    assert named in one_line(result.output)


def test_the_node_examples_own_variable_example_starts() -> None:
    # `DIMSEBUS_PORT=11113 dimsebus node --config examples/node.toml`, as that file says
    result = CliRunner().invoke(
        app,
        ["config", "show", "node", "--config", str(EXAMPLES / "node.toml"), "--json"],
        env={"DIMSEBUS_PORT": "11113"},
    )
    assert result.exit_code == 0, result.output
    assert '"port": 11113' in result.output


# Row 2: `dimsebus send --to` names what is wrong with the peer, before anything is sent.


@pytest.mark.parametrize(
    ("to", "code", "named"),
    [
        ("ABCDEFGHIJKLMNOPQ@127.0.0.1:11112", 2, "length 17 is not 1 to 16"),
        ("A\\B@127.0.0.1:11112", 2, "it contains a backslash"),
        ("STORESCP@127.0.0.1:\u00b2", 2, "port '\u00b2' of"),
        ("STORESCP@[nohost]:104", 2, "is not an IPv6 address in brackets"),
        ("STORESCP@no-such-host.invalid:104", 1, "host 'no-such-host.invalid' does not resolve"),
    ],
)
def test_send_names_a_bad_peer_in_one_line(tmp_path: Path, to: str, code: int, named: str) -> None:
    outbox = str(tmp_path / "outbox.sqlite")
    result = CliRunner().invoke(app, ["send", str(tmp_path), "--to", to, "--outbox", outbox])
    assert result.exit_code == code, result.output
    line = one_line(result.output)
    assert line.startswith("error: --to: ")
    assert named in line


def test_an_ipv6_peer_is_written_in_brackets() -> None:
    from dimsebus.services.node.target_option import parse_target

    target = parse_target("STORESCP@[::1]:11112", tls=False)
    assert (target.ae_title, target.host, target.port) == ("STORESCP", "::1", 11112)


# Row 3: one place turns what nothing else caught into one line; --debug shows the traceback.


def test_an_unexpected_failure_is_one_line_and_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from dimsebus.services.cli import main

    monkeypatch.delenv("DIMSEBUS_DEBUG", raising=False)
    with pytest.raises(SystemExit) as caught:
        main(["schemas", "export", "/proc/dimsebus/schemas"])  # /proc takes no new folder
    assert caught.value.code == 1
    line = one_line(capsys.readouterr().err)
    assert line.startswith("error: FileNotFoundError: ")
    assert "/proc/dimsebus" in line


@pytest.mark.parametrize("debug", [["--debug"], []])
def test_debug_shows_the_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], debug: list[str]
) -> None:
    from dimsebus.services.cli import main

    if not debug:
        monkeypatch.setenv("DIMSEBUS_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main([*debug, "schemas", "export", "/proc/dimsebus/schemas"])


def test_usage_errors_stay_clicks_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    from dimsebus.services.cli import main

    with pytest.raises(SystemExit) as caught:
        main(["node", "status", "--no-such-option"])
    assert caught.value.code == 2
    assert "No such option: --no-such-option" in capsys.readouterr().err


def test_a_config_error_that_escapes_is_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from dimsebus.schemas import export
    from dimsebus.services import cli
    from dimsebus.services.errors import ConfigError

    def broken(directory: Path) -> None:
        raise ConfigError("schemas: a bad value")

    monkeypatch.delenv("DIMSEBUS_DEBUG", raising=False)
    monkeypatch.setattr(export, "render", lambda: broken(Path()))  # the command imports it
    with pytest.raises(SystemExit) as caught:
        cli.main(["schemas", "export", "unused"])
    assert caught.value.code == 2
    assert one_line(capsys.readouterr().err) == "error: schemas: a bad value"


def test_logged_exceptions_are_one_line_unless_debugging(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import logging

    from dimsebus.services.logs import configure_logging, set_debug

    monkeypatch.delenv("DIMSEBUS_DEBUG", raising=False)
    configure_logging(json_logs=True)
    try:
        raise OSError(98, "Address already in use")
    except OSError:
        logging.getLogger("dimsebus.services.node.app").exception("the node did not start")
    line = one_line(capsys.readouterr().err)
    assert "the node did not start: OSError: [Errno 98] Address already in use" in line
    set_debug(True)
    try:
        try:
            raise OSError(98, "Address already in use")
        except OSError:
            logging.getLogger("dimsebus.services.node.app").exception("the node did not start")
        assert "Traceback" in capsys.readouterr().err
    finally:
        set_debug(False)
        logging.basicConfig(handlers=[], force=True)


# Row 4: --config is taken after the verb by every command that reads settings.

NO_SETTINGS = {("schemas", "export")}
"""Commands that read no settings, so take no --config."""


def _leaves(command: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every command that runs something, by its path: sub-commands, and groups that run."""
    subs: dict[str, Any] = getattr(command, "commands", {})
    found = [(path, command)] if path and (not subs or command.invoke_without_command) else []
    for name, sub in subs.items():
        found += _leaves(sub, (*path, name))
    return found


def test_every_command_that_reads_settings_takes_config() -> None:
    leaves = _leaves(typer.main.get_command(app))
    missing = [
        " ".join(path)
        for path, command in leaves
        if path not in NO_SETTINGS and not any("--config" in p.opts for p in command.params)
    ]
    assert len(leaves) > 25
    assert missing == []


@pytest.mark.parametrize(
    "argv",
    [
        ["node", "status"],
        ["node"],
        ["archive", "import", "x.dcm"],
        ["outbox", "relay", "--outbox", "x.sqlite"],
        ["send", "x.dcm", "--to", "A@h:104"],
        ["move", "--from", "A@h:104", "--to", "B", "--study", "1.2"],
        ["tracker"],
        ["moves", "list"],
        ["moves", "show", "abc"],
        ["moves", "wait", "abc"],
        ["moves", "retry", "abc"],
        ["moves", "rejected"],
        ["moves", "watch"],
        ["retrier"],
        ["retries", "list"],
        ["retries", "requeue", "--all"],
        ["retries", "purge"],
        ["audit"],
        ["audit", "verify"],
        ["audit", "query"],
        ["audit", "replay"],
        ["events", "tail"],
        ["topology", "declare"],
        ["config", "show", "node"],
        ["demo"],
    ],
)
def test_config_after_the_verb(argv: list[str]) -> None:
    result = CliRunner().invoke(app, [*argv, "--config", "/nonexistent.toml"])
    assert result.exit_code == 2, result.output
    assert one_line(result.output) == "error: --config: '/nonexistent.toml' is not a readable file"


def test_config_before_the_verb_still_works(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(f'node_id = "n1"\narchive_path = "{tmp_path / "archive"}"\n')
    for argv in (["node", "--config", str(config), "status"], ["node", "status", "--config"]):
        if argv[-1] == "--config":
            argv.append(str(config))
        result = CliRunner().invoke(app, [*argv, "--json"])
        assert result.exit_code == 0, result.output
        assert '"node_id": "n1"' in result.output


# Row 5: `dimsebus moves list|show` and the tracker's API agree on every value both show.

T0 = dt.datetime(2026, 11, 26, 12, tzinfo=dt.UTC)


def _fold(events: list[CloudEvent]) -> MoveState:
    state: MoveState | None = None
    for event in events:
        state = apply(state, event) if move_key(event) else state
    assert state is not None
    return state


@pytest.fixture
def moves_db(tmp_path: Path) -> str:
    """Three moves: 5 expected, 0 expected (it matched nothing), and not known yet."""

    def story(first_id: int) -> list[CloudEvent]:
        return move_story(node_id="n1", start=T0, ids=sequential_ids(first_id), instances=5)

    matched_nothing = _fold(story(500)).model_copy(
        update={"expected": 0, "instances": {}, "reported_failed": ()}
    )
    running = _fold([e for e in story(900) if isinstance(e, ev.MoveRequested)])
    store = open_store(str(tmp_path / "tracker.sqlite"))
    store.save([_fold(story(1)), matched_nothing, running], offset=9)
    store.close()
    return str(tmp_path / "tracker.sqlite")


async def _api_views(db: str) -> list[dict[str, Any]]:
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    application = web.Application()
    application.add_routes(routes(TrackerSettings(db=db)))
    async with TestClient(TestServer(application)) as client:
        listed = await (await client.get("/moves")).json()
        return [await (await client.get(f"/moves/{v['move_id']}")).json() for v in listed]


async def test_cli_and_api_show_the_same_values(moves_db: str) -> None:
    # given the API's view of every move
    views = await _api_views(moves_db)
    assert sorted(str(v["expected"]) for v in views) == ["0", "5", "None"]
    for view in views:
        # when the CLI shows the same move
        shown = CliRunner().invoke(app, ["moves", "show", view["move_id"], "--db", moves_db])
        listed = CliRunner().invoke(app, ["moves", "list", "--db", moves_db])
        assert shown.exit_code == listed.exit_code == 0, shown.output + listed.output
        # then the values both show are the same: null is ?, 0 is 0
        counts = view["counts"]
        assert (
            f"expected {as_text(view['expected'])}, completed {counts['completed']}, "
            f"warning {counts['warning']}, failed {counts['failed']}, "
            f"remaining {as_text(counts['remaining'])}"
        ) in shown.output
        lines = listed.output.splitlines()
        rows = [[cell.strip() for cell in line.split("\u2502")[1:-1]] for line in lines]
        row = next(r for r in rows if r and r[0] and view["move_id"].startswith(r[0]))
        assert row[6] == as_text(view["expected"])  # the expected column


@pytest.mark.parametrize("to", ["STORESCP@localhost", "STORESCP", "@h:104", "STORESCP@:104"])
def test_send_names_a_to_that_is_not_ae_at_host_port(tmp_path: Path, to: str) -> None:
    result = CliRunner().invoke(app, ["send", str(tmp_path), "--to", to])
    assert result.exit_code == 2
    assert one_line(result.output) == (
        f"error: --to: {to!r} is not AE@HOST:PORT (e.g. STORESCP@127.0.0.1:11112)"
    )


def test_send_of_an_empty_folder_is_exit_2(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    outbox = str(tmp_path / "outbox.sqlite")
    argv = ["send", "--to", "STORESCP@127.0.0.1:104", "--outbox", outbox, str(tmp_path / "empty")]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2
    assert one_line(result.output).endswith("empty: nothing to send")


# A state database that cannot be one: a folder, a file that is not SQLite, a place where
# nothing can be made. Every command that opens one names it and why, before any broker.


@pytest.mark.parametrize(
    "argv",
    [["moves", "list"], ["retries", "list"], ["audit", "query"], ["tracker"], ["retrier"]],
    ids=" ".join,
)
@pytest.mark.parametrize(
    ("where", "why"),
    [
        ("folder", "is a directory, not an SQLite file"),
        ("text", "is not an SQLite file"),
        ("/proc/dimsebus/state.sqlite", "cannot be created (No such file or directory)"),
    ],
)
def test_a_state_database_that_cannot_be_one_is_named(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    argv: list[str],
    where: str,
    why: str,
) -> None:
    from dimsebus.services.cli import main

    monkeypatch.delenv("DIMSEBUS_DEBUG", raising=False)
    (tmp_path / "folder").mkdir()
    (tmp_path / "text").write_text("not a database, but long enough to have a header\n" * 4)
    db = where if where.startswith("/") else str(tmp_path / where)
    with pytest.raises(SystemExit) as caught:
        main([*argv, "--db", db])
    assert caught.value.code == 2
    assert one_line(capsys.readouterr().err) == f"error: db {db!r}: {why}"
