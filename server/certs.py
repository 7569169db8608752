"""`fedxrec certs init` / `fedxrec certs add-site`: the keys and certificates a multi-organisation
deployment needs.

    OUT/ca/ca.crt, ca.key             the federation's certificate authority (keep ca.key offline)
    OUT/superlink/ca.crt, server.pem, server.key
                                      the coordinator's TLS certificate, SANs = the given hosts
                                      plus 127.0.0.1 and localhost (its own ServerApp connects
                                      over loopback)
    OUT/sites/NAME/ca.crt             per site: the CA, to verify the SuperLink
    OUT/sites/NAME/node.key, node.pub the SuperNode's authentication key pair (EC P-384, OpenSSH
                                      format, as `flower-supernode --auth-supernode-private-key`
                                      and `flwr supernode register` read them)
    OUT/sites/NAME/runtime.pem, runtime.key
                                      TLS for the SuperNode's own runtime API, for a ClientApp
                                      executor in another container (SANs: supernode-NAME, NAME,
                                      localhost, 127.0.0.1)

Each folder is what one party receives. Private keys are written 0600 and never overwritten
unless --force is given. Everything is made in memory and written to a staging folder first, then
moved into place: a failure leaves nothing half-written. `add-site NAME` signs a new site's files
with the existing CA, so the sites already deployed keep working. A site may instead make its own key pair
(`ssh-keygen -t ecdsa -b 384 -N "" -f node.key` writes the same OpenSSH format) and send
only node.pub to the coordinator.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import ipaddress
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOOPBACK = ("127.0.0.1", "localhost")
VALID_DAYS = 825  # the longest validity common TLS clients accept for a server certificate
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
HOST_NAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)


class CertsError(ValueError):
    """The request cannot be fulfilled without losing or exposing a key."""


@dataclass(frozen=True)
class Authority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def register(sub: argparse._SubParsersAction) -> None:
    certs = sub.add_parser(
        "certs",
        help="create the CA, the SuperLink's TLS certificate and the sites' node keys",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = certs.add_subparsers(dest="certs_command", metavar="ACTION", required=True)
    init = actions.add_parser(
        "init",
        help="create a CA, a SuperLink certificate and one node key pair per site",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    init.add_argument("--out", required=True, type=Path, help="folder to write into")
    init.add_argument(
        "--superlink-host",
        action="append",
        required=True,
        metavar="HOST",
        help="DNS name or IP the sites use to reach the SuperLink (repeatable or comma-separated)",
    )
    init.add_argument(
        "--sites", default="", help="comma-separated site names, one node key pair each"
    )
    init.add_argument("--force", action="store_true", help="replace existing keys and certificates")
    init.set_defaults(run=run)
    add = actions.add_parser(
        "add-site",
        help="create one more site's node key pair and files, signed by the existing CA",
        description="Add a site to a deployment made by `fedxrec certs init`: its node key pair, "
        "the CA certificate and its runtime TLS certificate, signed with OUT/ca/ca.key. The "
        "other sites and the SuperLink keep their files.",
    )
    add.add_argument("name", help="the new site's name")
    add.add_argument("--out", required=True, type=Path, help="the folder `certs init` wrote")
    add.add_argument("--force", action="store_true", help="replace that site's existing files")
    add.set_defaults(run=run_add_site)


def run_add_site(args: argparse.Namespace) -> int:
    written = add_site(args.out, args.name, force=args.force)
    print(f"fedxrec certs: wrote {len(written)} files for site {args.name}")
    print(
        f"  site {args.name}: {args.out / 'sites' / args.name} (register node.pub on the SuperLink)"
    )
    return 0


def run(args: argparse.Namespace) -> int:
    hosts = [h.strip() for arg in args.superlink_host for h in arg.split(",") if h.strip()]
    sites = [s.strip() for s in args.sites.split(",") if s.strip()]
    written = init_certs(args.out, hosts, sites, force=args.force)
    print(f"fedxrec certs: wrote {len(written)} files under {args.out}")
    print(f"  coordinator: {args.out / 'superlink'} (flower-superlink --ssl-* files)")
    for site in sites:
        print(f"  site {site}: {args.out / 'sites' / site} (register node.pub on the SuperLink)")
    print(f"  keep {args.out / 'ca' / 'ca.key'} offline: it can sign certificates")
    return 0


def init_certs(out: Path, hosts: list[str], sites: list[str], *, force: bool = False) -> list[Path]:
    """Write everything ``fedxrec certs init`` promises; returns the files written."""
    out = Path(out)
    if not hosts:
        raise CertsError("name at least one --superlink-host")
    hosts = [check_host(h) for h in hosts]
    _check_sites(sites)
    planned = [out / "ca" / "ca.key", out / "superlink" / "server.key"]
    planned += [out / "sites" / s / name for s in sites for name in ("node.key", "runtime.key")]
    existing = [p for p in planned if p.exists()]
    if existing and not force:
        raise CertsError(
            f"{existing[0]} already exists: fedxrec never overwrites a private key. Pass --force "
            "to replace them (every site then needs its new files, and old keys stop working), "
            "or `fedxrec certs add-site NAME` to add a site with the existing CA"
        )
    with _staged(out) as stage:
        ca = _make_ca()
        _write_pair(stage / "ca" / "ca.crt", ca.cert, stage / "ca" / "ca.key", ca.key)
        sans = list(dict.fromkeys([*hosts, *LOOPBACK]))
        server = _server_cert(ca, sans, common_name=hosts[0])
        _write_pair(
            stage / "superlink" / "server.pem",
            server.cert,
            stage / "superlink" / "server.key",
            server.key,
        )
        _copy(stage / "ca" / "ca.crt", stage / "superlink" / "ca.crt")
        for site in sites:
            _write_site(stage / "sites" / site, site, ca)
        return _move_into(stage, out)


def add_site(out: Path, name: str, *, force: bool = False) -> list[Path]:
    """One more site's files, signed by the CA under ``out``; the others are not touched."""
    out = Path(out)
    _check_sites([name])
    ca = _read_ca(out)
    folder = out / "sites" / name
    if folder.exists() and not force:
        raise CertsError(
            f"{folder} already exists: site {name} has its keys. Pass --force to replace them "
            "(its old node key then stops working: register the new node.pub)"
        )
    with _staged(out) as stage:
        _write_site(stage / "sites" / name, name, ca)
        return _move_into(stage, out)


def check_host(host: str) -> str:
    """A --superlink-host as a certificate names it: a DNS name (IDNA for non-ASCII) or an IP."""
    if "://" in host:
        raise CertsError(
            f"--superlink-host {host}: give the host only, without a scheme (e.g. "
            f"{host.split('://', 1)[1].split('/')[0]})"
        )
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        pass
    if "/" in host or (":" in host and host.count(":") == 1):
        raise CertsError(
            f"--superlink-host {host}: give the host only, without a port or path (the port is "
            "flower-superlink's, e.g. --superlink-host coordinator.example.org)"
        )
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError as err:
        raise CertsError(f"--superlink-host {host}: not a valid host name ({err})") from None
    if not HOST_NAME.match(ascii_host):
        raise CertsError(
            f"--superlink-host {host}: not a valid DNS name (letters, digits, '-' and '.' only)"
        )
    return ascii_host.lower()


def _check_sites(sites: list[str]) -> None:
    for site in sites:
        if not SITE_NAME.match(site):
            raise CertsError(f"site name '{site}' may use letters, digits, '.', '_' and '-' only")
    if len(set(sites)) != len(sites):
        raise CertsError("site names must be unique")


def _read_ca(out: Path) -> Authority:
    cert_path, key_path = out / "ca" / "ca.crt", out / "ca" / "ca.key"
    if not cert_path.is_file() or not key_path.is_file():
        raise CertsError(
            f"{out} has no CA ({cert_path}, {key_path}): run `fedxrec certs init` first, or point "
            "--out at the folder it wrote (where ca.key is kept)"
        )
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError) as err:
        raise CertsError(f"the CA under {out / 'ca'} is unreadable ({err})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or cert.public_key() != key.public_key():
        raise CertsError(f"{key_path} is not the key of {cert_path}")
    return Authority(cert, key)


def _write_site(folder: Path, site: str, ca: Authority) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    _write_public(folder / "ca.crt", ca.cert.public_bytes(serialization.Encoding.PEM))
    _write_node_keys(folder)
    runtime = _server_cert(ca, [f"supernode-{site}", site, *LOOPBACK], f"supernode-{site}")
    _write_pair(folder / "runtime.pem", runtime.cert, folder / "runtime.key", runtime.key)


@contextlib.contextmanager
def _staged(out: Path) -> Iterator[Path]:
    """A staging folder beside ``out``'s files, removed whatever happens."""
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".certs-staging-", dir=out))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _move_into(stage: Path, out: Path) -> list[Path]:
    """Every staged file to its place under ``out`` (each an atomic rename on one disk)."""
    moved = []
    for staged in sorted(p for p in stage.rglob("*") if p.is_file()):
        target = out / staged.relative_to(stage)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, target)
        moved.append(target)
    return moved


# ---- certificates ------------------------------------------------------------------------------


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _make_ca() -> Authority:
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedxrec federation CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    return Authority(cert, key)


def _server_cert(ca: Authority, sans: list[str], common_name: str) -> Authority:
    key = ec.generate_private_key(ec.SECP384R1())
    names: list[x509.GeneralName] = []
    for host in sans:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
        .sign(ca.key, hashes.SHA384())
    )
    return Authority(cert, key)


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not cert_sign,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


# ---- files -------------------------------------------------------------------------------------


def _write_pair(
    cert_path: Path, cert: x509.Certificate, key_path: Path, key: ec.EllipticCurvePrivateKey
) -> list[Path]:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_private(key_path, pem)
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return [key_path, cert_path]


def _write_node_keys(folder: Path) -> list[Path]:
    """EC P-384 in OpenSSH format: Flower's SuperNode authentication reads nothing else."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    _write_private(folder / "node.key", private)
    _write_public(folder / "node.pub", public + b"\n")
    return [folder / "node.key", folder / "node.pub"]


def _write_private(path: Path, data: bytes) -> None:
    """0600 from the first byte on: the key is never readable by others, not even briefly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, 0o600)  # whatever the umask
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, 0o644)


def _copy(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    os.chmod(target, 0o644)
    return target
