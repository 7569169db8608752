"""`fedxrec certs init`: files, permissions, SANs, key formats, refusal to overwrite."""

from __future__ import annotations

import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key
from cryptography.x509.oid import ExtendedKeyUsageOID

from server.certs import CertsError, init_certs
from simulations.cli import main

SITES = ["action", "comedy", "drama"]


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    out = tmp_path_factory.mktemp("certs")
    hosts = "superlink,coordinator.example.org,10.0.0.5"
    assert main(["certs", "init", "--out", str(out), "--superlink-host", hosts,
                 "--sites", ",".join(SITES)]) == 0  # fmt: skip
    return out


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _cert(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_files_and_permissions(certs):
    private = [certs / "ca/ca.key", certs / "superlink/server.key"]
    private += [certs / f"sites/{s}/{name}" for s in SITES for name in ("node.key", "runtime.key")]
    public = [certs / "ca/ca.crt", certs / "superlink/ca.crt", certs / "superlink/server.pem"]
    public += [
        certs / f"sites/{s}/{n}" for s in SITES for n in ("ca.crt", "node.pub", "runtime.pem")
    ]
    assert all(_mode(p) == 0o600 for p in private)
    assert all(_mode(p) == 0o644 for p in public)
    written = {p for p in certs.rglob("*") if p.is_file()}
    assert written == set(private) | set(public)


def test_superlink_certificate_is_signed_by_the_ca_with_the_hosts_as_sans(certs):
    ca, server = _cert(certs / "ca/ca.crt"), _cert(certs / "superlink/server.pem")
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {
        "superlink",
        "coordinator.example.org",
        "localhost",
    }
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("10.0.0.5"),
        ipaddress.ip_address("127.0.0.1"),  # the coordinator's own ServerApp connects by IP
    }
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert (certs / "superlink/ca.crt").read_bytes() == (certs / "ca/ca.crt").read_bytes()


def test_node_keys_are_what_flower_node_authentication_reads(certs):
    for site in SITES:
        folder = certs / "sites" / site
        text = (folder / "node.key").read_text()
        assert text.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
        key = load_ssh_private_key(text.encode(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
        public = (folder / "node.pub").read_text()
        assert public.startswith("ecdsa-sha2-nistp384 ")
        assert load_ssh_public_key(public.encode()).public_numbers() == (
            key.public_key().public_numbers()
        )
        runtime = _cert(folder / "runtime.pem")
        runtime.verify_directly_issued_by(_cert(certs / "ca/ca.crt"))
        san = runtime.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert f"supernode-{site}" in san.get_values_for_type(x509.DNSName)
    keys = {(certs / f"sites/{s}/node.pub").read_text() for s in SITES}
    assert len(keys) == len(SITES)


def test_existing_keys_are_never_overwritten_without_force(certs, capsys):
    before = {p: p.read_bytes() for p in certs.rglob("*") if p.is_file()}
    code = main(["certs", "init", "--out", str(certs), "--superlink-host", "superlink"])
    assert code == 2 and "--force" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in certs.rglob("*") if p.is_file()} == before


def test_force_replaces_them(tmp_path):
    init_certs(tmp_path, ["superlink"], ["a"])
    old = (tmp_path / "sites/a/node.key").read_bytes()
    with pytest.raises(CertsError, match="never overwrites"):
        init_certs(tmp_path, ["superlink"], ["a"])
    init_certs(tmp_path, ["superlink"], ["a"], force=True)
    assert (tmp_path / "sites/a/node.key").read_bytes() != old
    assert _mode(tmp_path / "sites/a/node.key") == 0o600


@pytest.mark.parametrize(
    ("hosts", "sites", "message"),
    [([], [], "superlink-host"), (["h"], ["a b"], "site name"), (["h"], ["a", "a"], "unique")],
)
def test_bad_requests_say_why(tmp_path, hosts, sites, message):
    with pytest.raises(CertsError, match=message):
        init_certs(tmp_path, hosts, sites)


def test_add_site_signs_with_the_existing_ca_and_touches_no_other_site(tmp_path):
    from server.certs import add_site

    init_certs(tmp_path, ["coordinator.example.org"], ["a"])
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    written = add_site(tmp_path, "b")
    assert {p.name for p in written} == {
        "ca.crt",
        "node.key",
        "node.pub",
        "runtime.pem",
        "runtime.key",
    }
    assert all(p.read_bytes() == data for p, data in before.items())  # nothing else changed
    ca = x509.load_pem_x509_certificate((tmp_path / "ca" / "ca.crt").read_bytes())
    runtime = x509.load_pem_x509_certificate(
        (tmp_path / "sites" / "b" / "runtime.pem").read_bytes()
    )
    runtime.verify_directly_issued_by(ca)
    assert oct((tmp_path / "sites" / "b" / "node.key").stat().st_mode & 0o777) == "0o600"
    with pytest.raises(CertsError, match="already exists.*--force"):
        add_site(tmp_path, "b")
    with pytest.raises(CertsError, match="has no CA"):
        add_site(tmp_path / "elsewhere", "c")


@pytest.mark.parametrize(
    ("host", "message"),
    [
        ("https://coordinator.example.org", "without a scheme"),
        ("coordinator.example.org:9093", "without a port"),
        ("bad_host!.org", "not a valid DNS name"),
    ],
)
def test_superlink_hosts_are_checked_and_named_by_flag(tmp_path, host, message):
    with pytest.raises(CertsError, match=f"--superlink-host .*{message}"):
        init_certs(tmp_path, [host], [])
    assert not any(tmp_path.iterdir())


def test_non_ascii_hosts_become_idna_and_ips_become_ip_sans(tmp_path):
    from server.certs import check_host

    assert check_host("bücher.example") == "xn--bcher-kva.example"
    init_certs(tmp_path, ["bücher.example", "10.0.0.7", "[::1]"], [])
    cert = x509.load_pem_x509_certificate((tmp_path / "superlink" / "server.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "xn--bcher-kva.example" in san.get_values_for_type(x509.DNSName)
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} >= {"10.0.0.7", "::1"}


def test_a_failure_leaves_nothing_half_written(tmp_path, monkeypatch):
    from server import certs

    calls = []
    real = certs._server_cert

    def fail_on_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(certs, "_server_cert", fail_on_the_second)
    with pytest.raises(RuntimeError, match="disk full"):
        init_certs(tmp_path, ["coordinator.example.org"], ["a", "b"])
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
