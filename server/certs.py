"""`fedxrec certs init`: the keys and certificates a multi-organisation deployment needs.

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
unless --force is given. A site may instead make its own key pair
(`ssh-keygen -t ecdsa -b 384 -N "" -f node.key` writes the same OpenSSH format) and send
only node.pub to the coordinator.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOOPBACK = ("127.0.0.1", "localhost")
VALID_DAYS = 825  # the longest validity common TLS clients accept for a server certificate
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


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
    for site in sites:
        if not SITE_NAME.match(site):
            raise CertsError(f"site name '{site}' may use letters, digits, '.', '_' and '-' only")
    if len(set(sites)) != len(sites):
        raise CertsError("site names must be unique")
    planned = [out / "ca" / "ca.key", out / "superlink" / "server.key"]
    planned += [out / "sites" / s / name for s in sites for name in ("node.key", "runtime.key")]
    existing = [p for p in planned if p.exists()]
    if existing and not force:
        raise CertsError(
            f"{existing[0]} already exists: fedxrec never overwrites a private key. Pass --force "
            "to replace them (every site then needs its new files, and old keys stop working)"
        )

    written: list[Path] = []
    ca = _make_ca()
    written += _write_pair(out / "ca" / "ca.crt", ca.cert, out / "ca" / "ca.key", ca.key)
    sans = list(dict.fromkeys([*hosts, *LOOPBACK]))
    server = _server_cert(ca, sans, common_name=hosts[0])
    written += _write_pair(
        out / "superlink" / "server.pem", server.cert, out / "superlink" / "server.key", server.key
    )
    written.append(_copy(out / "ca" / "ca.crt", out / "superlink" / "ca.crt"))
    for site in sites:
        folder = out / "sites" / site
        written.append(_copy(out / "ca" / "ca.crt", folder / "ca.crt"))
        written += _write_node_keys(folder)
        runtime_sans = [f"supernode-{site}", site, *LOOPBACK]
        runtime = _server_cert(ca, runtime_sans, common_name=f"supernode-{site}")
        written += _write_pair(
            folder / "runtime.pem", runtime.cert, folder / "runtime.key", runtime.key
        )
    return written


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
