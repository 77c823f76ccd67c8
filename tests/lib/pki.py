"""
Certificates and CMS for the tests: a throw-away CA, leaf certificates, the detached
`Mdm-Signature` a device sends (PROTOCOL 10.2), and a minimal DER tree editor used to forge
signatures that a correct server must reject (e.g. a real device certificate next to a
signature made with another key).

Uses python3-cryptography 38 (Debian 12) only.
"""
import base64
import datetime
import uuid

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

UTC = datetime.timezone.utc


def now():
    return datetime.datetime.now(UTC)


def new_key(bits=2048):
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def name(cn, org="Orchard tests"):
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org), x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn="Test CA", key=None, subject=None):
    key = key or new_key()
    subj = subject or name(cn)
    cert = (x509.CertificateBuilder()
            .subject_name(subj).issuer_name(subj)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now() - datetime.timedelta(days=1))
            .not_valid_after(now() + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def issue(ca_cert, ca_key, public_key, subject=None, serial=None, not_before=None, not_after=None, issuer=None):
    """A client-auth leaf signed by ca_key. issuer overrides the issuer name (to forge)."""
    nb = not_before or now() - datetime.timedelta(hours=1)
    na = not_after or now() + datetime.timedelta(days=30)
    b = (x509.CertificateBuilder()
         .subject_name(subject or name("device-" + str(uuid.uuid4())))
         .issuer_name(issuer or ca_cert.subject)
         .public_key(public_key)
         .serial_number(serial or x509.random_serial_number())
         .not_valid_before(nb).not_valid_after(na)
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                                      data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                      crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
         .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    return b.sign(ca_key, hashes.SHA256())


def load_cert(path):
    with open(path, "rb") as f:
        data = f.read()
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def load_certs(path):
    """All PEM certificates in a file, in order."""
    with open(path, "rb") as f:
        data = f.read()
    out = []
    for block in data.split(b"-----END CERTIFICATE-----")[:-1]:
        start = block.find(b"-----BEGIN CERTIFICATE-----")
        out.append(x509.load_pem_x509_certificate(block[start:] + b"-----END CERTIFICATE-----\n"))
    return out


def load_key(path, password=None):
    with open(path, "rb") as f:
        return serialization.load_pem_private_key(f.read(), password)


def write_pem(path, cert=None, key=None):
    with open(path, "wb") as f:
        if cert is not None:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        if key is not None:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                      serialization.NoEncryption()))


def cert_der(cert):
    return cert.public_bytes(serialization.Encoding.DER)


def uid_of(cert):
    """The UID attribute (0.9.2342.19200300.100.1.1) of the subject, e.g. an APNs topic."""
    attrs = cert.subject.get_attributes_for_oid(NameOID.USER_ID)
    return attrs[0].value if attrs else None


# ---------------------------------------------------------------------------------------------
# Mdm-Signature
# ---------------------------------------------------------------------------------------------

def cms_detached(body, cert, key, hash_alg=None):
    """DER CMS SignedData, detached, over the exact bytes of body (no MIME canonicalisation:
    Binary), signed attributes without S/MIME capabilities, the signer cert embedded."""
    hash_alg = hash_alg or hashes.SHA256()
    return (pkcs7.PKCS7SignatureBuilder().set_data(body).add_signer(cert, key, hash_alg)
            .sign(serialization.Encoding.DER,
                  [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.NoCapabilities,
                   pkcs7.PKCS7Options.Binary]))


def mdm_signature(body, cert, key, hash_alg=None):
    """The value of the Mdm-Signature header (standard base64, one line)."""
    return base64.b64encode(cms_detached(body, cert, key, hash_alg)).decode()


def forge_wrong_key_signature(body, real_cert, wrong_key, hash_alg=None):
    """A detached CMS whose signer identifier and embedded certificate are the real device
    certificate, but whose signature was made with wrong_key. A verifier that really checks the
    signature with the certificate's public key must reject it."""
    # A look-alike certificate: same issuer and serial (so the SignerInfo points at the real
    # certificate), wrong_key as its key. It is only used to produce the signature.
    dummy_ca, dummy_ca_key = make_ca("forger")
    lookalike = issue(dummy_ca, dummy_ca_key, wrong_key.public_key(), subject=real_cert.subject,
                      serial=real_cert.serial_number, issuer=real_cert.issuer)
    der = cms_detached(body, lookalike, wrong_key, hash_alg)
    tree = der_parse(der)
    certs = _signed_data_certificates(tree)
    certs[1][:] = [("raw", cert_der(real_cert))]
    out = der_encode(tree)
    assert cert_der(lookalike) not in out and cert_der(real_cert) in out
    return base64.b64encode(out).decode()


def replace_embedded_certs(sig_b64, certs):
    """Replaces the certificates embedded in a CMS (base64) with certs (list of x509)."""
    tree = der_parse(base64.b64decode(sig_b64))
    node = _signed_data_certificates(tree)
    node[1][:] = [("raw", cert_der(c)) for c in certs]
    return base64.b64encode(der_encode(tree)).decode()


def _signed_data_certificates(tree):
    # ContentInfo ::= SEQUENCE { contentType OID, content [0] EXPLICIT SignedData }
    content = tree[1][1]
    assert content[0] == 0xA0
    signed_data = content[1][0]
    for child in signed_data[1]:
        if child[0] == 0xA0:  # certificates [0] IMPLICIT
            return child
    raise ValueError("no certificates in SignedData")


# ---------------------------------------------------------------------------------------------
# Minimal DER tree (definite lengths only; cryptography emits DER)
# node = (tag, [children]) for constructed, (tag, bytes) for primitive, ("raw", bytes) verbatim
# ---------------------------------------------------------------------------------------------

def _read_tlv(data, off):
    tag = data[off]
    if tag & 0x1F == 0x1F:
        raise ValueError("multi-byte tags not supported")
    ln = data[off + 1]
    p = off + 2
    if ln & 0x80:
        n = ln & 0x7F
        if n == 0:
            raise ValueError("indefinite length not supported")
        ln = int.from_bytes(data[p:p + n], "big")
        p += n
    return tag, p, p + ln


def der_parse(data, off=0, end=None):
    tag, vstart, vend = _read_tlv(data, off)
    if tag & 0x20:
        children = []
        p = vstart
        while p < vend:
            child = der_parse(data, p)
            children.append(child)
            p = _read_tlv(data, p)[2]
        return [tag, children]
    return [tag, data[vstart:vend]]


def _enc_len(n):
    if n < 0x80:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(b)]) + b


def der_encode(node):
    if node[0] == "raw":
        return node[1]
    tag, v = node
    if isinstance(v, list):
        v = b"".join(der_encode(c) for c in v)
    return bytes([tag]) + _enc_len(len(v)) + v
