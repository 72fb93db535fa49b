# -*- coding: utf-8 -*-
# Copyright (c) celeryops maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""broker_tls_info against real TLS servers on 127.0.0.1, with a CA, server
and client certificates made for each test session."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import contextlib
import datetime
import json
import socket
import ssl
import struct
import threading

import pytest

# tests/unit/requirements.txt: ansible-test units installs it.
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ansible_collections.celeryops.celery.plugins.modules import broker_tls_info as module


PASSWORD = 'p4ss-never-shown'


def _pem(obj):
    if hasattr(obj, 'private_bytes'):
        return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode()
    return obj.public_bytes(serialization.Encoding.PEM).decode()


def _certificate(name, key, issuer_name, issuer_key, ca=False, dns=()):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
                          key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False),
            critical=True)
    if dns:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in dns]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope='session')
def pki(tmp_path_factory):
    """PEM texts and paths: ca, wrong_ca, server (localhost), client, stranger (signed by wrong_ca)."""
    directory = tmp_path_factory.mktemp('pki')
    out = {}
    keys = {}
    for ca in ('ca', 'wrong_ca'):
        keys[ca] = ec.generate_private_key(ec.SECP256R1())
        out[ca] = _pem(_certificate(ca, keys[ca], ca, keys[ca], ca=True))
    for name, issuer, dns in (('server', 'ca', ('localhost',)), ('client', 'ca', ()), ('stranger', 'wrong_ca', ())):
        key = ec.generate_private_key(ec.SECP256R1())
        out[name] = _pem(_certificate(name, key, issuer, keys[issuer], dns=dns))
        out[name + '_key'] = _pem(key)
    for name, text in list(out.items()):
        path = directory / (name + '.pem')
        path.write_text(text)
        out[name + '_path'] = str(path)
    return out


@contextlib.contextmanager
def tls_server(pki, answer=b'+PONG\r\n', require_client_cert=False):
    """A TLS server on 127.0.0.1 that answers every connection's first bytes
    with `answer` (None: closes without a word; 'reset': resets the
    connection right after the handshake); yields its port."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki['server_path'], pki['server_key_path'])
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=pki['ca'])
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen(5)
    stop = threading.Event()

    def serve():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                raw, _address = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                raw.settimeout(5)
                with context.wrap_socket(raw, server_side=True) as conn:
                    if answer == 'reset':
                        # A reset right after the handshake, as a broker that drops a client it refuses.
                        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
                        continue
                    conn.recv(16)
                    if answer is not None:
                        conn.sendall(answer)
            except (OSError, ssl.SSLError):
                pass
            finally:
                raw.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        listener.close()
        thread.join(5)


def params(port, scheme='rediss', **overrides):
    base = dict(url='%s://:%s@localhost:%d/0' % (scheme, PASSWORD, port), ca_content=None, cert_content=None,
                key_content=None, check_hostname=True, verify=True, timeout=5.0, fail_on_unreachable=False)
    base.update(overrides)
    return base


def test_a_broker_the_ca_verifies_is_reported(pki):
    with tls_server(pki) as port:
        failed, result = module.run(params(port, ca_content=pki['ca']), warn=pytest.fail)
    assert not failed, result
    broker, = result['brokers']
    assert broker['ok'] and broker['endpoint'] == 'localhost:%d' % port
    assert broker['subject'] == 'server' and broker['issuer'] == 'ca' and broker['not_after']
    assert broker['tls_version'].startswith('TLSv1.')


def test_a_wrong_ca_is_a_verify_failure(pki):
    with tls_server(pki) as port:
        failed, result = module.run(params(port, ca_content=pki['wrong_ca']), warn=pytest.fail)
    assert failed and result['reason'] == 'verify', result
    assert 'certificate verify failed' in result['msg'] and 'localhost:%d' % port in result['msg']


def test_the_system_cas_do_not_verify_a_private_ca(pki):
    with tls_server(pki) as port:
        failed, result = module.run(params(port), warn=pytest.fail)
    assert failed and result['reason'] == 'verify', result


def test_without_verification_any_certificate_is_accepted_but_a_client_certificate_still_counts(pki):
    with tls_server(pki, require_client_cert=True) as port:
        failed, result = module.run(params(port, url='rediss://127.0.0.1:%d/0' % port, ca_content=pki['wrong_ca'],
                                           verify=False, cert_content=pki['client'], key_content=pki['client_key']),
                                    warn=pytest.fail)
        assert not failed, result
        failed, result = module.run(params(port, verify=False), warn=pytest.fail)
        assert failed and result['reason'] == 'client_certificate', result


def test_a_certificate_for_another_name_is_a_hostname_failure(pki):
    with tls_server(pki) as port:
        failed, result = module.run(params(port, url='rediss://127.0.0.1:%d/0' % port, ca_content=pki['ca']), warn=pytest.fail)
        assert failed and result['reason'] == 'hostname', result
        failed, result = module.run(params(port, url='rediss://127.0.0.1:%d/0' % port, ca_content=pki['ca'],
                                           check_hostname=False), warn=pytest.fail)
        assert not failed, result


@pytest.mark.parametrize('client, key', [(None, None), ('stranger', 'stranger_key')])
def test_a_broker_that_refuses_the_client_certificate(pki, client, key):
    with tls_server(pki, require_client_cert=True) as port:
        failed, result = module.run(params(port, ca_content=pki['ca'], cert_content=pki[client] if client else None,
                                           key_content=pki[key] if key else None), warn=pytest.fail)
        assert failed and result['reason'] == 'client_certificate', result
        failed, result = module.run(params(port, ca_content=pki['ca'], cert_content=pki['client'],
                                           key_content=pki['client_key']), warn=pytest.fail)
        assert not failed, result


def test_a_key_that_does_not_match_the_certificate(pki):
    failed, result = module.run(params(1, ca_content=pki['ca'], cert_content=pki['client'], key_content=pki['stranger_key']),
                                warn=pytest.fail)
    assert failed and result['reason'] == 'client_files' and result['brokers'] == [], result


def test_a_ca_bundle_that_does_not_load(pki):
    failed, result = module.run(params(1, ca_content='not a certificate'), warn=pytest.fail)
    assert failed and result['reason'] == 'ca', result


def test_an_unreachable_broker_is_a_warning_unless_asked_to_fail(pki):
    probe = socket.socket()
    probe.bind(('127.0.0.1', 0))
    port = probe.getsockname()[1]
    probe.close()
    warnings = []
    failed, result = module.run(params(port, ca_content=pki['ca']), warn=warnings.append)
    assert not failed and result['brokers'][0]['reason'] == 'unreachable', result
    assert len(warnings) == 1 and 'localhost:%d' % port in warnings[0]
    failed, result = module.run(params(port, ca_content=pki['ca'], fail_on_unreachable=True), warn=pytest.fail)
    assert failed and result['reason'] == 'unreachable', result


@pytest.mark.parametrize('answer, reason', [(None, 'client_certificate'), ('reset', 'client_certificate'),
                                            (b'HTTP/1.1 400\r\n', 'tls')])
def test_a_broker_that_does_not_answer_its_protocol(pki, answer, reason):
    with tls_server(pki, answer=answer) as port:
        failed, result = module.run(params(port, scheme='amqps', ca_content=pki['ca']), warn=pytest.fail)
    assert failed and result['reason'] == reason, result


def test_an_amqp_broker_answers_with_a_method_frame(pki):
    with tls_server(pki, answer=b'\x01\x00\x00\x00\x00\x01\xf4') as port:
        failed, result = module.run(params(port, scheme='amqps', ca_content=pki['ca']), warn=pytest.fail)
    assert not failed, result


def test_every_broker_of_a_failover_list_is_checked(pki):
    with tls_server(pki) as first, tls_server(pki) as second:
        url = 'rediss://localhost:%d/0;rediss://:%s@localhost:%d/0' % (first, PASSWORD, second)
        failed, result = module.run(params(first, url=url, ca_content=pki['ca']), warn=pytest.fail)
    assert not failed and [b['endpoint'] for b in result['brokers']] == ['localhost:%d' % first, 'localhost:%d' % second]


@pytest.mark.parametrize('url, words', [
    ('redis://localhost/0', 'scheme must be one of amqps, rediss; got redis://'),
    ('localhost:6379', 'a URL without a scheme'),
    ('rediss://:pw@:6379/0', 'names no host'),
    ('amqps://localhost:port/', 'port that is not a number'),
])
def test_urls_it_cannot_check(url, words):
    with pytest.raises(ValueError, match=words):
        module.parse_endpoints(url)


def test_the_module_fails_with_the_endpoint_and_never_the_url(pki, run_main):
    with tls_server(pki) as port:
        out = run_main(module, {'url': 'rediss://:%s@localhost:%d/0' % (PASSWORD, port), 'ca_content': pki['wrong_ca']})
    assert out['failed'] and out['reason'] == 'verify' and 'localhost:%d' % port in out['msg'], out
    assert PASSWORD not in json.dumps(out)


def test_the_module_reports_and_changes_nothing(pki, run_main):
    with tls_server(pki, require_client_cert=True) as port:
        out = run_main(module, {'url': 'rediss://:%s@localhost:%d/0' % (PASSWORD, port), 'ca_content': pki['ca'],
                                'cert_content': pki['client'], 'key_content': pki['client_key'],
                                '_ansible_check_mode': True})
    assert not out['failed'] and out['changed'] is False and out['brokers'][0]['ok'], out
    assert PASSWORD not in json.dumps(out) and pki['client_key'] not in json.dumps(out)
