"""TLS for migration and NBD streams between hosts (``kvm_migration_tls``): a per-run CA and
certificates, and the credentials object each guest's QEMU holds."""

from __future__ import annotations

import logging
import os

from ...guest import Guest

log = logging.getLogger("pytest_kvm.migration")


class MigrationTls:
    """A per-run CA and certificates for QEMU's ``tls-creds-x509``: the destination's server
    certificate names its migration address, both sides verify the peer. Migration streams and
    the NBD storage mirror then go encrypted and authenticated. Keys stay 0600 in a private
    temp dir on the controller and in each guest's run dir on the hosts."""

    CREDS = "tls0"

    def __init__(self, addresses: list[str]):
        import datetime
        import ipaddress
        import tempfile

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        self.dir = tempfile.mkdtemp(prefix="pytest-kvm-tls-")
        self._held: dict[str, str] = {}  # a guest's run dir -> the endpoint its QEMU holds
        now = datetime.datetime.now(datetime.UTC)
        day = datetime.timedelta(days=1)

        def name(cn: str) -> x509.Name:
            return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

        def write(filename: str, data: bytes) -> None:
            fd = os.open(os.path.join(self.dir, filename), os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                         0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)

        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = (x509.CertificateBuilder().subject_name(name("pytest-kvm run CA"))
              .issuer_name(name("pytest-kvm run CA")).public_key(ca_key.public_key())
              .serial_number(x509.random_serial_number())
              .not_valid_before(now - day).not_valid_after(now + day)
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                           False), critical=True)
              .sign(ca_key, hashes.SHA256()))
        write("ca-cert.pem", ca.public_bytes(serialization.Encoding.PEM))
        sans: list[x509.GeneralName] = []
        for address in addresses:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(address)))
            except ValueError:
                sans.append(x509.DNSName(address))
        for endpoint, usage in (("server", ExtendedKeyUsageOID.SERVER_AUTH),
                                ("client", ExtendedKeyUsageOID.CLIENT_AUTH)):
            key = ec.generate_private_key(ec.SECP256R1())
            builder = (x509.CertificateBuilder().subject_name(name(f"pytest-kvm {endpoint}"))
                       .issuer_name(ca.subject).public_key(key.public_key())
                       .serial_number(x509.random_serial_number())
                       .not_valid_before(now - day).not_valid_after(now + day)
                       .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                      critical=True)
                       .add_extension(x509.KeyUsage(True, False, True, False, False, False,
                                                    False, False, False), critical=True)
                       .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
            if endpoint == "server":
                builder = builder.add_extension(x509.SubjectAlternativeName(sans),
                                                critical=False)
            cert = builder.sign(ca_key, hashes.SHA256())
            write(f"{endpoint}-cert.pem", cert.public_bytes(serialization.Encoding.PEM))
            write(f"{endpoint}-key.pem", key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()))
        log.info("migration TLS: a run CA and certificates for %s", ", ".join(addresses))

    def install(self, guest: Guest, endpoint: str) -> str:
        """Give the guest's QEMU the credentials of one endpoint (server: the destination);
        returns the credentials' object id."""
        folder = f"{guest.rundir}/tls"
        guest.host.run(["mkdir", "-p", "-m", "0700", folder], timeout=30)
        for filename in ("ca-cert.pem", f"{endpoint}-cert.pem", f"{endpoint}-key.pem"):
            guest.host.transport.put(os.path.join(self.dir, filename), f"{folder}/{filename}",
                                     mode=0o600)
        guest.qmp.execute("object-add", qom_type="tls-creds-x509", id=self.CREDS, dir=folder,
                          endpoint=endpoint, verify_peer=True)
        return self.CREDS

    def creds(self, guest: Guest, endpoint: str) -> str:
        """The guest's credentials object for ``endpoint``, added once (a destination that
        becomes a source, as in ping-pong, trades its server credentials for client ones)."""
        held = self._held.get(guest.rundir)
        if held != endpoint:
            if held is not None:
                guest.qmp.execute("object-del", id=self.CREDS)
            self.install(guest, endpoint)
            self._held[guest.rundir] = endpoint
        return self.CREDS

    def close(self) -> None:
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)

