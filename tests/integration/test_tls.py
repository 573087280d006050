"""DICOM TLS (PS3.15 B.1, BCP 195) at the node, against dcmtk's TLS peers (issue 17, item 2).

The node as TLS SCP for ``storescu +tls`` and for ``movescu``; its C-MOVE
sub-association and ``dimsebus send --tls`` as TLS SCU to ``storescp +tls``;
plain and certificate-less peers refused. The certificates are made by
``tests.pki`` with the openssl command line.

Debian's dcmtk 3.6.7 builds movescu without TLS (``+tls`` is an unknown option
there; storescu, storescp, echoscu and findscu have it), so movescu reaches the
node through ``tls_tunnel``: its DICOM, over a TLS connection that presents the
peer's certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydicom import dcmread

from dimsebus.schemas import events as ev
from dimsebus.services.node.app import Node
from dimsebus.services.node.archive import Archive
from dimsebus.services.node.config import Destination, NodeSettings, Peer, Tls
from dimsebus.services.node.synthetic import write_study
from tests.integration.conftest import RunningNode, of_type, read_events
from tests.integration.peers import ENV, dcmtk, free_port, storescp, wait_for_port
from tests.pki import Identity, Pki, make_pki

pytestmark = pytest.mark.integration

PEERS = {
    "STORESCU": Peer(allow=frozenset({"echo", "store"})),
    "MOVESCU": Peer(allow=frozenset({"echo", "move"})),
}
TLS_LINE = "Transport connection: TLS over TCP/IP"
"""What dcmtk's debug log (-d) prints once a TLS connection is up."""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A test CA, the node's and the dcmtk peers' certificates, and a stranger's."""
    return make_pki(tmp_path_factory.mktemp("pki"))


def node_tls(pki: Pki, **changes: object) -> Tls:
    """The node's [tls]: its certificate, trusting the test CA."""
    base = Tls(certificate=pki.node.certificate, key=pki.node.key, ca=pki.ca)
    return base.model_copy(update=changes)


def tls_options(pki: Pki, identity: Identity | None = None) -> list[str]:
    """dcmtk's flags for TLS with ``identity`` (default: the peer's), trusting the test CA."""
    who = identity or pki.peer
    return ["+tls", str(who.key), str(who.certificate), "+cf", str(pki.ca)]


@contextlib.asynccontextmanager
async def tls_node(
    root: Path, amqp_url: str, tls: Tls, destinations: dict[str, Destination] | None = None
) -> AsyncIterator[RunningNode]:
    """A node with ``tls`` and three instances in its archive, serving until the block ends."""
    node_id = f"tls-{uuid.uuid4().hex[:8]}"
    settings = NodeSettings(
        node_id=node_id,
        amqp_url=amqp_url,
        host="127.0.0.1",
        port=free_port(),
        archive_path=root / node_id / "archive",
        outbox_path=root / node_id / "outbox.sqlite",
        destinations=destinations or {},
        peers=PEERS,
        tls=tls,
    )
    archive = Archive(settings.archive_path)
    paths = write_study(root / node_id / "study", 3, patient_id=node_id[-8:], seed=node_id)
    stored = [archive.import_file(path) for path in paths]
    archive.close()
    study_uid = str(stored[0].read().StudyInstanceUID)
    node, stop, ready = Node.open(settings), asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(node.serve(stop, ready))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        await asyncio.to_thread(wait_for_port, settings.port)
        yield RunningNode(
            settings, node, study_uid, [s.sop_instance_uid for s in stored], stop, task
        )
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


@contextlib.asynccontextmanager
async def tls_tunnel(port: int, pki: Pki) -> AsyncIterator[int]:
    """A plain TCP port on loopback whose connections go on to ``port`` over TLS, as the peer."""
    context = ssl.create_default_context(cafile=pki.ca)
    context.check_hostname = False
    context.load_cert_chain(pki.peer.certificate, pki.peer.key)

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def carry(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        remote_reader, remote_writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        await asyncio.gather(pipe(reader, remote_writer), pipe(remote_reader, writer))

    server = await asyncio.start_server(carry, "127.0.0.1", 0)
    async with server:
        yield int(server.sockets[0].getsockname()[1])


async def run(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run a command to completion; its exit code and its output (stdout and stderr)."""
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env or ENV
    )
    output, _ = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


async def storescu(node: RunningNode, files: list[Path], *options: str) -> tuple[int, str]:
    """dcmtk's storescu, as STORESCU, stores ``files`` into ``node``."""
    return await run(
        dcmtk("storescu"), "-d", "-aet", "STORESCU", "-aec", node.settings.ae_title,
        *options, "127.0.0.1", str(node.settings.port), *map(str, files),
    )  # fmt: skip


def held(node: RunningNode, files: list[Path]) -> int:
    """How many of ``files`` the node's archive holds."""
    uids = [str(dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in files]
    return len(list(node.node.archive.by_uids(uids)))


async def test_storescu_over_tls_stores_into_the_node(
    tmp_path: Path, amqp_url: str, pki: Pki
) -> None:
    # given a node whose port speaks TLS, and three files a modality has
    files = write_study(tmp_path / "incoming", 3, seed="tls-storescu")
    async with tls_node(tmp_path, amqp_url, node_tls(pki)) as node:
        # when dcmtk's storescu stores them over TLS (its default profile, BCP 195)
        code, output = await storescu(node, files, *tls_options(pki))
        # then the association was TLS and the node holds all three
        assert code == 0, output
        assert TLS_LINE in output
        assert held(node, files) == 3


async def test_a_plain_peer_is_refused_by_a_tls_node(
    tmp_path: Path, amqp_url: str, pki: Pki
) -> None:
    # given a node whose port speaks TLS
    files = write_study(tmp_path / "incoming", 3, seed="tls-plain")
    async with tls_node(tmp_path, amqp_url, node_tls(pki)) as node:
        # when peers try it without TLS
        echo, echo_output = await run(
            dcmtk("echoscu"), "-aet", "STORESCU", "-aec", "DIMSEBUS",
            "127.0.0.1", str(node.settings.port),
        )  # fmt: skip
        store, store_output = await storescu(node, files)
        # then neither gets an association, and nothing is stored
        assert echo != 0, echo_output
        assert store != 0, store_output
        assert held(node, files) == 0
        # while a TLS peer still gets its echo right after
        echo, echo_output = await run(
            dcmtk("echoscu"), "-aet", "STORESCU", "-aec", "DIMSEBUS", *tls_options(pki),
            "127.0.0.1", str(node.settings.port),
        )  # fmt: skip
        assert echo == 0, echo_output


async def test_dcmtk_profiles_connect_while_a_silent_socket_waits(
    tmp_path: Path, amqp_url: str, pki: Pki
) -> None:
    # given a TLS node, and a connection to it that never starts its handshake
    async with tls_node(tmp_path, amqp_url, node_tls(pki)) as node:
        address = ("127.0.0.1", node.settings.port)
        with socket.create_connection(address):
            # when echoscu connects with each of dcmtk's BCP 195 profiles
            for profile in ("+py", "+px", "+pz"):  # non-downgrading, BCP 195, extended (1.2)
                started = time.monotonic()
                code, output = await run(
                    dcmtk("echoscu"), "-aet", "STORESCU", "-aec", "DIMSEBUS", profile,
                    *tls_options(pki), *map(str, address),
                )  # fmt: skip
                # then each gets its echo at once: the silent socket holds no one up
                assert code == 0, (profile, output)
                assert time.monotonic() - started < 5


async def test_a_required_client_certificate_is_checked(
    tmp_path: Path, amqp_url: str, pki: Pki
) -> None:
    # given a node that requires client certificates signed by its CA
    files = write_study(tmp_path / "incoming", 2, seed="tls-client-cert")
    tls = node_tls(pki, require_client_certificate=True)
    async with tls_node(tmp_path, amqp_url, tls) as node:
        # when a TLS peer without a certificate, and one with another CA's, store
        anonymous, anonymous_output = await storescu(node, files, "+tla", "+cf", str(pki.ca))
        stranger, stranger_output = await storescu(node, files, *tls_options(pki, pki.stranger))
        # then both are refused and nothing is stored
        assert anonymous != 0, anonymous_output
        assert stranger != 0, stranger_output
        assert held(node, files) == 0
        # and a peer with a certificate of the node's CA stores
        code, output = await storescu(node, files, *tls_options(pki))
        assert code == 0, output
        assert held(node, files) == 2


async def test_movescu_over_tls_moves_to_storescp_over_tls(
    tmp_path: Path, amqp_url: str, pki: Pki
) -> None:
    # given storescp listening with TLS (it requires the node's client certificate),
    # and a node that knows it as a TLS destination
    with storescp(tmp_path / "received", *tls_options(pki)) as peer:
        destination = Destination(host="127.0.0.1", port=peer.port, tls=True)
        async with tls_node(tmp_path, amqp_url, node_tls(pki), {"STORESCP": destination}) as node:
            # when movescu asks the node, over TLS (tunnelled), to move the study to storescp
            async with tls_tunnel(node.settings.port, pki) as port:
                code, output = await run(
                    dcmtk("movescu"), "-v", "-S", "-aet", "MOVESCU", "-aec", "DIMSEBUS",
                    "-aem", "STORESCP", "-k", "QueryRetrieveLevel=STUDY",
                    "-k", f"StudyInstanceUID={node.study_uid}", "127.0.0.1", str(port),
                )  # fmt: skip
            # then the move succeeded, and storescp got the study over TLS from the node
            assert code == 0, output
            assert "Received Final Move Response (Success)" in output
            assert len(peer.files()) == 3, output
            assert TLS_LINE in peer.log.read_text(errors="replace")
        events = await read_events(
            amqp_url, node.source, lambda found: bool(of_type(found, "dicom.move.completed"))
        )
    # and the capture saw every response, as on plain TCP
    (completed,) = of_type(events, "dicom.move.completed")
    assert isinstance(completed.data, ev.MoveCompletedData)
    assert completed.data.counts.completed == 3
    assert len(of_type(events, "dicom.cstore.response.received")) == 3


async def test_dimsebus_send_tls_to_storescp(tmp_path: Path, amqp_url: str, pki: Pki) -> None:
    # given storescp with TLS, three files, and a config with the node's [tls]
    files = write_study(tmp_path / "study", 3, seed="tls-send")
    config = tmp_path / "node.toml"
    config.write_text(
        f'archive_path = "{tmp_path / "archive"}"\n'
        "[tls]\n"
        f'certificate = "{pki.node.certificate}"\n'
        f'key = "{pki.node.key}"\n'
        f'ca = "{pki.ca}"\n'
    )
    with storescp(tmp_path / "received", *tls_options(pki)) as peer:
        to = f"STORESCP@127.0.0.1:{peer.port}"
        # when `dimsebus send --tls` stores them
        code, output = await dimsebus_send(tmp_path, config, amqp_url, to, "--tls")
        # then storescp holds them, received over TLS
        assert code == 0, output
        assert len(peer.files()) == len(files)
        assert TLS_LINE in peer.log.read_text(errors="replace")
        # and without --tls the same peer gives no association
        code, output = await dimsebus_send(tmp_path, config, amqp_url, to)
        assert code != 0, output
        assert len(peer.files()) == len(files)


async def test_a_bad_key_is_one_line_and_no_traceback(
    tmp_path: Path, amqp_url: str, pki: Pki
) -> None:
    # given a config whose key is not the certificate's
    config = tmp_path / "node.toml"
    config.write_text(
        f'outbox_path = "{tmp_path / "node-outbox.sqlite"}"\n'
        f'[tls]\ncertificate = "{pki.node.certificate}"\nkey = "{pki.peer.key}"\nca = "{pki.ca}"\n'
    )
    write_study(tmp_path / "study", 1, seed="tls-bad-key")
    env = {**ENV, "DIMSEBUS_AMQP_URL": amqp_url, "COLUMNS": "200"}
    # when `dimsebus send --tls` and `dimsebus node` start with it
    sent = await dimsebus_send(tmp_path, config, amqp_url, "STORESCP@127.0.0.1:1", "--tls")
    node = await run(
        sys.executable, "-m", "dimsebus.services", "node", "--config", str(config), env=env
    )
    # then each exits 2 with one line naming the setting and the file, before it starts a relay
    for code, output in (sent, node):
        assert code == 2, output
        assert f"error: tls.key: {pki.peer.key} is not the key of" in " ".join(output.split())
        assert "Traceback" not in output
    assert not (tmp_path / "node-outbox.sqlite").exists()


async def dimsebus_send(
    tmp_path: Path, config: Path, amqp_url: str, to: str, *flags: str
) -> tuple[int, str]:
    """``dimsebus send`` of ``tmp_path/study`` to ``to`` with ``config``."""
    env = {
        **ENV,
        "DIMSEBUS_AMQP_URL": amqp_url,
        "DIMSEBUS_NODE_ID": f"tls-send-{os.getpid()}",
        "COLUMNS": "200",
    }
    return await run(
        sys.executable, "-m", "dimsebus.services", "send", "--config", str(config), "--to", to,
        "--outbox", str(tmp_path / "outbox.sqlite"), *flags, str(tmp_path / "study"),
        env=env,
    )  # fmt: skip


async def test_a_destination_that_never_handshakes_is_given_up_on(
    tmp_path: Path, amqp_url: str, pki: Pki
) -> None:
    # given a "TLS peer" that accepts TCP connections and never answers the handshake
    write_study(tmp_path / "study", 1, seed="tls-silent")
    config = tmp_path / "node.toml"
    config.write_text(
        f'archive_path = "{tmp_path / "archive"}"\nacse_timeout = 2.0\n'
        f'[tls]\ncertificate = "{pki.node.certificate}"\nkey = "{pki.node.key}"\n'
        f'ca = "{pki.ca}"\n'
    )
    with socket.create_server(("127.0.0.1", 0)) as silent:
        to = f"SILENT@127.0.0.1:{silent.getsockname()[1]}"
        # when `dimsebus send --tls` sends to it
        started = time.monotonic()
        code, output = await dimsebus_send(tmp_path, config, amqp_url, to, "--tls")
        # then it gives up after the connection timeout (acse_timeout), not never
        assert code != 0, output
        assert time.monotonic() - started < 30, output
