"""HTTPS as companies run it: private CAs, client certificates, proxies, and certificate errors that
stop the job at once. The simulator serves HTTPS with certificates made here by trustme; the proxy
is a real tinyproxy started by the test."""

from __future__ import annotations

import collections.abc
import datetime
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from helpers import JobWriter, questions

from batchrun.cli import main
from batchrun.dispatch.tls import ProxyRefused, TLSFailure, refused_by_page
from batchrun.errors import SpecError
from batchrun.simulator import ServerTLS, Simulator, create_app, serve_in_thread
from batchrun.spec import load_job

ROWS = 12
CONCURRENCY = 3


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def client_ca() -> trustme.CA:
    return trustme.CA()


def pems(folder: Path, cert: trustme.LeafCert, name: str = "server") -> tuple[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    cert.cert_chain_pems[0].write_to_path(str(folder / f"{name}.pem"))
    cert.private_key_pem.write_to_path(str(folder / f"{name}-key.pem"))
    return str(folder / f"{name}.pem"), str(folder / f"{name}-key.pem")


def https_simulator(
    tmp_path: Path, cert: trustme.LeafCert, client_ca: trustme.CA | None = None
) -> collections.abc.Iterator[tuple[Simulator, str]]:
    certfile, keyfile = pems(tmp_path / "server", cert)
    client_ca_file = None
    if client_ca is not None:
        client_ca_file = str(tmp_path / "server" / "client-ca.pem")
        client_ca.cert_pem.write_to_path(client_ca_file)
    sim = create_app()
    with serve_in_thread(sim, tls=ServerTLS(certfile, keyfile, client_ca_file)) as url:
        yield sim, url


def write_ca(ca: trustme.CA, path: Path) -> Path:
    ca.cert_pem.write_to_path(str(path))
    return path


def https_job(write_job: JobWriter, url: str, extra: str = "", rows: int = ROWS) -> Path:
    return write_job(
        rows=questions(rows),
        endpoint=f'base_url = "{url}"\nmodel = "m"\n{extra}',
        limits=f"concurrency = {CONCURRENCY}\nmax_attempts = 6",
    )


def manifest(tmp_path: Path) -> pl.DataFrame:
    return pl.read_parquet(tmp_path / "out" / "manifest")


@pytest.mark.parametrize("how", ["ca_bundle", "ca_folder", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"])
def test_a_private_ca_named_in_the_job_or_the_environment_is_trusted(
    tmp_path: Path, write_job: JobWriter, ca: trustme.CA, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    ca_file = write_ca(ca, tmp_path / "ca.pem")
    extra = ""
    if how == "ca_bundle":
        extra = 'ca_bundle = "ca.pem"'  # relative to the job file
    elif how == "ca_folder":
        folder = tmp_path / "cas"
        folder.mkdir()
        subject_hash = subprocess.run(
            ["openssl", "x509", "-hash", "-noout", "-in", str(ca_file)], capture_output=True, text=True, check=True
        ).stdout.strip()
        shutil.copy(ca_file, folder / f"{subject_hash}.0")
        extra = 'ca_bundle = "cas"'
    else:
        monkeypatch.setenv(how, str(ca_file))
    for sim, url in https_simulator(tmp_path, ca.issue_cert("localhost", "127.0.0.1")):
        assert main(["run", str(https_job(write_job, url, extra)), "-q"]) == 0
        assert sim.stats.total == ROWS
    assert manifest(tmp_path)["status"].to_list() == ["ok"] * ROWS


def test_the_ca_variables_take_their_usual_precedence(
    tmp_path: Path, write_job: JobWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        (tmp_path / f"{name}.pem").write_text("x")
    job = write_job(endpoint='base_url = "https://x.test"\nmodel = "m"')
    monkeypatch.setenv("CURL_CA_BUNDLE", str(tmp_path / "CURL_CA_BUNDLE.pem"))
    assert load_job(job).endpoint.network.ca_source == "CURL_CA_BUNDLE"
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "REQUESTS_CA_BUNDLE.pem"))
    assert load_job(job).endpoint.network.ca_source == "REQUESTS_CA_BUNDLE"
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path))
    assert load_job(job).endpoint.network.ca_dir == str(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "SSL_CERT_FILE.pem"))
    network = load_job(job).endpoint.network
    assert (network.ca_source, network.ca_file) == ("SSL_CERT_FILE", str(tmp_path / "SSL_CERT_FILE.pem"))
    (tmp_path / "mine.pem").write_text("x")
    job = write_job(endpoint='base_url = "https://x.test"\nmodel = "m"\nca_bundle = "mine.pem"')
    assert load_job(job).endpoint.network.ca_file == str(tmp_path / "mine.pem")


def test_a_missing_ca_bundle_is_a_bad_job(
    tmp_path: Path, write_job: JobWriter, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_job(rows=questions(2), endpoint='base_url = "https://x.test"\nmodel = "m"\nca_bundle = "nope.pem"')
    with pytest.raises(SpecError, match=r"endpoint.ca_bundle: no such file or folder: nope.pem"):
        load_job(job)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/nowhere/ca.pem")
    job = write_job(rows=questions(2), endpoint='base_url = "https://x.test"\nmodel = "m"')
    assert main(["run", str(job)]) == 2
    assert "REQUESTS_CA_BUNDLE: no such file or folder: /nowhere/ca.pem" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def assert_stopped_at_once(
    tmp_path: Path, sim: Simulator, job: Path, capsys: pytest.CaptureFixture[str], *expected: str
) -> None:
    """Exit 4 with one line naming the host, the check and what to set, after at most
    ``concurrency`` requests (none of which reached the app), whatever the number of rows."""
    assert main(["run", str(job), "-q"]) == 4
    said = capsys.readouterr()
    lines = [line for line in (said.out + said.err).splitlines() if "TLS check failed" in line]
    assert len(lines) == 1, said
    for text in expected:
        assert text in lines[0], lines[0]
    assert sim.stats.total == 0
    sent = re.search(r"(\d+) HTTP requests? sent", lines[0])
    assert sent is not None and 1 <= int(sent.group(1)) <= CONCURRENCY, lines[0]


def test_an_untrusted_certificate_stops_the_job_at_once(
    tmp_path: Path, write_job: JobWriter, ca: trustme.CA, capsys: pytest.CaptureFixture[str]
) -> None:
    for sim, url in https_simulator(tmp_path, ca.issue_cert("127.0.0.1")):
        job = https_job(write_job, url, rows=200)
        assert_stopped_at_once(tmp_path, sim, job, capsys, "127.0.0.1", "not signed by a trusted CA", "ca_bundle")


def test_a_certificate_for_another_host_stops_the_job_at_once(
    tmp_path: Path, write_job: JobWriter, ca: trustme.CA, capsys: pytest.CaptureFixture[str]
) -> None:
    write_ca(ca, tmp_path / "ca.pem")
    for sim, url in https_simulator(tmp_path, ca.issue_cert("other.example")):
        job = https_job(write_job, url, 'ca_bundle = "ca.pem"', rows=200)
        assert_stopped_at_once(tmp_path, sim, job, capsys, "127.0.0.1", "not for this host name")


def test_an_expired_certificate_stops_the_job_at_once(
    tmp_path: Path, write_job: JobWriter, ca: trustme.CA, capsys: pytest.CaptureFixture[str]
) -> None:
    write_ca(ca, tmp_path / "ca.pem")
    now = datetime.datetime.now(datetime.UTC)
    old = ca.issue_cert(
        "127.0.0.1", not_before=now - datetime.timedelta(days=30), not_after=now - datetime.timedelta(days=1)
    )
    for sim, url in https_simulator(tmp_path, old):
        job = https_job(write_job, url, 'ca_bundle = "ca.pem"', rows=200)
        assert_stopped_at_once(tmp_path, sim, job, capsys, "127.0.0.1", "out of date")


def test_https_to_a_plain_http_port_stops_the_job_at_once(
    tmp_path: Path, write_job: JobWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    sim = create_app()
    with serve_in_thread(sim) as url:
        job = https_job(write_job, url.replace("http://", "https://"), rows=200)
        assert_stopped_at_once(tmp_path, sim, job, capsys, "127.0.0.1", "no TLS version both sides accept")


def test_verify_false_works_and_warns_on_every_run(
    tmp_path: Path, write_job: JobWriter, ca: trustme.CA, capsys: pytest.CaptureFixture[str]
) -> None:
    for sim, url in https_simulator(tmp_path, ca.issue_cert("other.example")):
        job = https_job(write_job, url, "verify = false", rows=3)
        assert main(["run", str(job), "-q"]) == 0
        assert "verify = false: the certificate of 127.0.0.1 is not checked" in capsys.readouterr().err
        assert main(["run", str(job), "-q"]) == 0  # nothing left to send, and still said
        assert "verify = false" in capsys.readouterr().err
        assert sim.stats.total == 3


def encrypted_key(cert: trustme.LeafCert, path: Path, password: bytes) -> Path:
    key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), password=None)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(password),
        )
    )
    return path


def test_client_certificates_reach_a_server_that_requires_them(
    tmp_path: Path,
    write_job: JobWriter,
    ca: trustme.CA,
    client_ca: trustme.CA,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    write_ca(ca, tmp_path / "ca.pem")
    client = client_ca.issue_cert("batchrun-client@example.com")
    pems(tmp_path, client, "client")
    encrypted_key(client, tmp_path / "client-key-encrypted.pem", b"key-password-7f3a")
    monkeypatch.setenv("CLIENT_KEY_PASSWORD", "key-password-7f3a")
    tls = (
        'ca_bundle = "ca.pem"\nclient_cert = "client.pem"\nclient_key = "client-key-encrypted.pem"\n'
        'client_key_password_env = "CLIENT_KEY_PASSWORD"'
    )
    for sim, url in https_simulator(tmp_path, ca.issue_cert("127.0.0.1"), client_ca):
        assert main(["run", str(https_job(write_job, url, tls)), "-q"]) == 0
        assert sim.stats.total == ROWS
    out = capsys.readouterr()
    written = b"".join(p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert b"key-password-7f3a" not in written and "key-password-7f3a" not in out.out + out.err
    assert "key-password-7f3a" not in repr(load_job(tmp_path / "job.toml"))


def test_a_wrong_key_password_is_a_bad_job(
    tmp_path: Path,
    write_job: JobWriter,
    client_ca: trustme.CA,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = client_ca.issue_cert("batchrun-client@example.com")
    pems(tmp_path, client, "client")
    encrypted_key(client, tmp_path / "client-key-encrypted.pem", b"right-password")
    monkeypatch.setenv("CLIENT_KEY_PASSWORD", "wrong-password")
    tls = (
        'client_cert = "client.pem"\nclient_key = "client-key-encrypted.pem"\n'
        'client_key_password_env = "CLIENT_KEY_PASSWORD"'
    )
    job = https_job(write_job, "https://127.0.0.1:9", tls)
    assert main(["run", str(job), "-q"]) == 2
    err = capsys.readouterr().err
    assert "cannot load the client certificate" in err and "wrong-password" not in err


@pytest.fixture
def nginx_mtls(
    tmp_path: Path, ca: trustme.CA, client_ca: trustme.CA
) -> collections.abc.Iterator[tuple[Simulator, str]]:
    """nginx with ``ssl_verify_client on`` (client certificates from ``client_ca``) in front of a
    plain-HTTP simulator; yields the simulator and nginx's https:// root."""
    binary = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)
    if binary is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light; .ci/run installs it)")
    folder = tmp_path / "nginx"
    certfile, keyfile = pems(folder, ca.issue_cert("127.0.0.1"))
    client_ca.cert_pem.write_to_path(str(folder / "client-ca.pem"))
    port = free_port()
    sim = create_app()
    with serve_in_thread(sim) as upstream:
        temp = " ".join(
            f"{kind}_temp_path {folder}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        (folder / "nginx.conf").write_text(
            f"master_process off; pid {folder}/nginx.pid; error_log {folder}/error.log;\n"
            f"events {{}}\nhttp {{ access_log off; {temp}\n"
            f"  server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {certfile}; ssl_certificate_key {keyfile};\n"
            f"    ssl_client_certificate {folder}/client-ca.pem; ssl_verify_client on;\n"
            f"    location / {{ proxy_pass {upstream}; }} }} }}\n"
        )
        proc = subprocess.Popen(
            [binary, "-p", str(folder), "-c", str(folder / "nginx.conf"), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port(port, proc, folder / "error.log")
            yield sim, f"https://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    for _ in range(250):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        if proc.poll() is not None:
            pytest.fail(f"exited with {proc.returncode}: {log.read_text() if log.exists() else ''}")
        time.sleep(0.02)
    pytest.fail(f"nothing listens on port {port}")


@pytest.mark.parametrize("given", ["none", "another CA's"])
def test_a_client_certificate_missing_or_refused_stops_the_job_at_once(
    tmp_path: Path,
    write_job: JobWriter,
    ca: trustme.CA,
    nginx_mtls: tuple[Simulator, str],
    capsys: pytest.CaptureFixture[str],
    given: str,
) -> None:
    write_ca(ca, tmp_path / "ca.pem")
    tls = 'ca_bundle = "ca.pem"'
    if given != "none":
        pems(tmp_path, trustme.CA().issue_cert("stranger@example.com"), "client")
        tls += '\nclient_cert = "client.pem"\nclient_key = "client-key.pem"'
    sim, url = nginx_mtls
    job = https_job(write_job, url, tls, rows=200)
    expected = "wants a client certificate" if given == "none" else "refused the client certificate"
    assert_stopped_at_once(tmp_path, sim, job, capsys, "127.0.0.1", expected, "client_cert")


def test_client_certificates_reach_nginx_with_ssl_verify_client_on(
    tmp_path: Path,
    write_job: JobWriter,
    ca: trustme.CA,
    client_ca: trustme.CA,
    nginx_mtls: tuple[Simulator, str],
) -> None:
    write_ca(ca, tmp_path / "ca.pem")
    pems(tmp_path, client_ca.issue_cert("batchrun-client@example.com"), "client")
    sim, url = nginx_mtls
    tls = 'ca_bundle = "ca.pem"\nclient_cert = "client.pem"\nclient_key = "client-key.pem"'
    assert main(["run", str(https_job(write_job, url, tls)), "-q"]) == 0
    assert sim.stats.total == ROWS
    assert manifest(tmp_path)["status"].to_list() == ["ok"] * ROWS


# proxies: which one, from where


@pytest.mark.parametrize(
    ("url", "env", "given", "expected"),
    [
        ("https://api.test/v1", {"HTTPS_PROXY": "http://p:1"}, None, "http://p:1"),
        ("https://api.test/v1", {"https_proxy": "http://low:1", "HTTPS_PROXY": "http://up:1"}, None, "http://low:1"),
        ("https://api.test/v1", {"HTTP_PROXY": "http://p:1"}, None, None),
        ("http://api.test/v1", {"HTTP_PROXY": "http://p:1"}, None, "http://p:1"),
        ("https://api.test/v1", {"ALL_PROXY": "http://p:1"}, None, "http://p:1"),
        ("https://api.test/v1", {"HTTPS_PROXY": "p:3128"}, None, "http://p:3128"),
        ("https://api.test/v1", {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "localhost,.test"}, None, None),
        ("https://api.test/v1", {"HTTPS_PROXY": "http://p:1", "no_proxy": "api.test"}, None, None),
        ("https://api.test/v1", {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "*"}, None, None),
        ("https://api.test/v1", {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "other.test"}, None, "http://p:1"),
        ("https://api.test/v1", {"HTTPS_PROXY": "http://p:1"}, "http://mine:8", "http://mine:8"),
        ("https://api.test/v1", {}, "http://u:pw@mine:8", "http://u:pw@mine:8"),
    ],
)
def test_the_proxy_comes_from_the_job_or_the_usual_variables(
    write_job: JobWriter,
    monkeypatch: pytest.MonkeyPatch,
    url: str,
    env: dict[str, str],
    given: str | None,
    expected: str | None,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    extra = f'\nproxy = "{given}"' if given else ""
    network = load_job(write_job(endpoint=f'base_url = "{url}"\nmodel = "m"{extra}')).endpoint.network
    assert (network.proxy.get_secret_value() if network.proxy else None) == expected
    assert "pw" not in repr(network)


def test_a_socks_proxy_is_a_bad_job(write_job: JobWriter, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "socks5://p:1080")
    with pytest.raises(SpecError, match="HTTPS_PROXY: a socks5 proxy is not supported"):
        load_job(write_job(endpoint='base_url = "https://api.test"\nmodel = "m"'))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


PROXY_USER, PROXY_PASSWORD = "batchrun", "proxy-secret-91c2"


@pytest.fixture
def tinyproxy(tmp_path: Path) -> collections.abc.Iterator[tuple[str, Path]]:
    """A real tinyproxy on 127.0.0.1 that wants a user and password; yields its port and log file."""
    binary = shutil.which("tinyproxy") or next(
        (p for p in ("/usr/bin/tinyproxy", "/usr/sbin/tinyproxy") if os.path.exists(p)), None
    )
    if binary is None:
        pytest.skip("tinyproxy is not installed (apt-get install tinyproxy; .ci/run installs it)")
    port = free_port()
    log = tmp_path / "tinyproxy.log"
    conf = tmp_path / "tinyproxy.conf"
    user = "User nobody\nGroup nogroup\n" if os.geteuid() == 0 else ""
    conf.write_text(
        f"{user}Port {port}\nListen 127.0.0.1\nTimeout 60\nLogLevel Connect\n"
        f"MaxClients 50\nAllow 127.0.0.1\nBasicAuth {PROXY_USER} {PROXY_PASSWORD}\nDisableViaHeader Yes\n"
    )
    with log.open("wb") as said:  # in the foreground (-d) it logs to stderr
        proc = subprocess.Popen([binary, "-d", "-c", str(conf)], stdout=said, stderr=subprocess.STDOUT)
    try:
        for _ in range(200):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None:
                pytest.fail(f"tinyproxy exited with {proc.returncode}: {log.read_text()}")
            time.sleep(0.02)
        yield f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{port}", log
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def assert_no_proxy_password(tmp_path: Path, out: pytest.CaptureResult[str]) -> None:
    assert PROXY_PASSWORD not in out.out + out.err
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert PROXY_PASSWORD.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_requests_go_through_a_real_proxy_that_wants_a_password(
    tmp_path: Path,
    write_job: JobWriter,
    ca: trustme.CA,
    tinyproxy: tuple[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    scheme: str,
) -> None:
    proxy, log = tinyproxy
    monkeypatch.setenv(f"{scheme.upper()}_PROXY", proxy)
    if scheme == "https":
        write_ca(ca, tmp_path / "ca.pem")
        servers = https_simulator(tmp_path, ca.issue_cert("127.0.0.1"))
        extra = 'ca_bundle = "ca.pem"'
    else:
        servers = iter([(sim := create_app(), None)])
        extra = ""
    for sim, url in servers:
        if url is None:
            with serve_in_thread(sim) as url:
                assert main(["run", str(https_job(write_job, url, extra)), "-q"]) == 0
        else:
            assert main(["run", str(https_job(write_job, url, extra)), "-q"]) == 0
        assert sim.stats.total == ROWS
    assert manifest(tmp_path)["status"].to_list() == ["ok"] * ROWS
    port = url.rsplit(":", 1)[1]
    said = log.read_text()
    assert (f"CONNECT 127.0.0.1:{port}" if scheme == "https" else f"127.0.0.1:{port}") in said, said
    assert_no_proxy_password(tmp_path, capsys.readouterr())


def test_a_wrong_proxy_password_stops_the_job_at_once_and_is_not_written_anywhere(
    tmp_path: Path,
    write_job: JobWriter,
    ca: trustme.CA,
    tinyproxy: tuple[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    proxy, _log = tinyproxy
    write_ca(ca, tmp_path / "ca.pem")
    wrong = proxy.replace(PROXY_PASSWORD, PROXY_PASSWORD + "-x")
    for sim, url in https_simulator(tmp_path, ca.issue_cert("127.0.0.1")):
        job = https_job(write_job, url, f'ca_bundle = "ca.pem"\nproxy = "{wrong}"', rows=200)
        assert main(["run", str(job), "-q"]) == 4
        assert sim.stats.total == 0
    said = capsys.readouterr()
    assert "the proxy refused the request (401" in said.out + said.err
    sent = re.search(r"(\d+) HTTP requests? sent", said.out + said.err)
    assert sent is not None and int(sent.group(1)) <= CONCURRENCY
    assert_no_proxy_password(tmp_path, said)
    assert PROXY_PASSWORD + "-x" not in said.out + said.err


def test_batchrun_simulate_serves_https_with_a_certificate_it_generates(
    tmp_path: Path, write_job: JobWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    command = [sys.executable, "-m", "batchrun", "simulate", "--port", "0", "--tls-generate", str(tmp_path / "tls")]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        url = first.split()[-1]
        assert url.startswith("https://127.0.0.1:"), first
        said = [proc.stdout.readline() for _ in range(2)]
        assert f'ca_bundle = "{tmp_path / "tls" / "ca.pem"}"' in said[1], said
        job = https_job(write_job, url, f'ca_bundle = "{tmp_path / "tls" / "ca.pem"}"', rows=5)
        assert main(["run", str(job), "-q"]) == 0
        assert manifest(tmp_path)["status"].to_list() == ["ok"] * 5
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
    assert "stopped; 5 requests served" in out


def test_the_pages_that_mean_a_refused_client_certificate_or_proxy_are_known() -> None:
    nginx = b"<html><head><title>400 No required SSL certificate was sent</title></head></html>"
    assert isinstance(refused_by_page(400, nginx), TLSFailure)
    assert "client_cert" in str(refused_by_page(400, nginx))
    assert isinstance(refused_by_page(407, b""), ProxyRefused)
    assert refused_by_page(400, b'{"error": "bad request"}') is None
    assert refused_by_page(401, nginx) is None
